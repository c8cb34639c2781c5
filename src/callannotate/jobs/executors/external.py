"""No embedded workers: jobs run in ``callannotate worker`` processes on the same queue."""

from __future__ import annotations

import asyncio

from callannotate.jobs.events import EventCallback, JobEvent
from callannotate.jobs.executors.base import WorkerInfo
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import Job, JobState

NO_EMBEDDED = "ok (no embedded workers: jobs run in external workers)"


class ExternalExecutor:
    """``serve --no-workers``: queue only; external workers poll the queue folder.

    Cancelling a running job flags it in ``job.json``; the process running it stops it.
    """

    name = "external"
    embedded = False

    def __init__(self, queue: FileQueue, *, on_event: EventCallback | None = None) -> None:
        self.queue = queue
        self.on_event = on_event

    async def start(self) -> None:
        return None

    async def stop(self, graceful: bool = True) -> None:
        return None

    def request_hard_stop(self) -> None:
        return None

    def submit(self, job_id: str) -> None:
        return None  # the workers find it at their next poll

    async def cancel(self, job_id: str) -> Job:
        job = await asyncio.to_thread(self.queue.cancel, job_id)
        if job.state == JobState.CANCELLED and self.on_event is not None:
            self.on_event(
                JobEvent(
                    type="job.failed",
                    job_id=job.id,
                    owner=job.owner,
                    data={"state": job.state.value, "error": job.error},
                )
            )
        return job

    def workers(self) -> list[WorkerInfo]:
        return []

    def alive(self) -> bool:
        return True

    def readiness(self) -> tuple[bool, str]:
        return True, NO_EMBEDDED
