"""A queue manager on a tmp queue with a fake runner, recording the events it emits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from queue_testing import new_job

from callannotate.config import Settings
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.manager import QueueManager
from callannotate.jobs.models import Job, JobState
from callannotate.jobs.runner import JobRunner
from callannotate.pipeline.types import AnnotateOptions


def make_settings(tmp_path: Path, **workers: float) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text("{}\n")
    settings = Settings(data_dir=tmp_path / "data", models_config=models)
    settings.queue.poll_interval = 0.05
    for key, value in workers.items():
        setattr(settings.workers, key, value)
    return settings


class Harness:
    def __init__(self, settings: Settings, runner: JobRunner, grace_s: float = 30.0) -> None:
        self.settings = settings
        self.queue = FileQueue(settings.queue_dir, settings.queue)
        self.events: list[JobEvent] = []
        self.manager = QueueManager(
            self.queue, settings, runner, on_event=self.events.append, grace_s=grace_s
        )

    def submit(self) -> Job:
        return new_job(self.queue, options=AnnotateOptions())

    def types(self, job_id: str) -> list[str]:
        return [e.type for e in self.events if e.job_id == job_id]

    async def wait(self, pred: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; events: {[e.type for e in self.events]}")
            await asyncio.sleep(0.02)

    async def wait_state(self, job_id: str, *states: JobState, timeout: float = 60.0) -> Job:
        await self.wait(lambda: self.queue.get(job_id).state in states, timeout)
        return self.queue.get(job_id)

    async def wait_event(self, job_id: str, type_: str) -> None:
        """Events are emitted right after the queue write: a reader may see the state first."""
        await self.wait(lambda: type_ in self.types(job_id))

    async def wait_ready(self) -> None:
        await self.wait(lambda: all(w.ready and w.alive for w in self.manager.workers()))

    async def run_one(self) -> Job:
        """Start the manager, submit one job once its workers are ready, wait until the job is
        completed or failed, stop the manager; returns the job as it ended."""
        await self.manager.start()
        try:
            await self.wait_ready()
            job = self.submit()
            return await self.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        finally:
            await self.manager.stop()

    async def wait_running(self, job_id: str) -> int:
        """Wait until a worker reports progress on the job; returns that worker's pid."""
        await self.wait(lambda: "job.progress" in self.types(job_id))
        pid = next(w.pid for w in self.manager.workers() if w.job_id == job_id)
        assert pid is not None
        return pid
