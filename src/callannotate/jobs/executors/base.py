"""The executor interface the API and the CLI use to run, cancel and inspect jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from callannotate.jobs.models import Job


class WorkerInfo(BaseModel):
    """What ``GET /info`` and ``GET /ready`` show about one worker process."""

    name: str
    pid: int | None
    alive: bool
    ready: bool
    job_id: str | None
    started_at: datetime
    job_started_at: datetime | None = None
    jobs_done: int = 0
    restarts: int = 0
    recycled: int = 0
    preload_error: str | None = None


class Executor(Protocol):
    """Runs the jobs of the file queue. The queue's run lock decides who runs a job.

    ``embedded`` is true when the jobs run in worker processes of this process.
    """

    name: str
    embedded: bool

    async def start(self) -> None: ...

    async def stop(self, graceful: bool = True) -> None:
        """Stop taking work; running jobs finish within a grace period or go back."""
        ...

    def request_hard_stop(self) -> None:
        """Cut a graceful stop short (second SIGTERM/SIGINT)."""
        ...

    def submit(self, job_id: str) -> None:
        """``job_id`` was just queued durably: start it as soon as a worker is free."""
        ...

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (``Conflict`` when it is already finished)."""
        ...

    def workers(self) -> list[WorkerInfo]: ...

    def alive(self) -> bool:
        """The executor runs and every worker process it started is alive."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Would a job submitted now start? ``(ready, what /ready says about workers)``."""
        ...
