"""The embedded executor: the :class:`QueueManager`'s pool of worker processes."""

from __future__ import annotations

from callannotate.jobs.executors.base import WorkerInfo
from callannotate.jobs.manager import QueueManager
from callannotate.jobs.models import Job


class LocalExecutor:
    """Jobs run in worker processes of this process (``serve`` and ``callannotate worker``)."""

    name = "local"
    embedded = True

    def __init__(self, manager: QueueManager) -> None:
        self.manager = manager

    async def start(self) -> None:
        await self.manager.start()

    async def stop(self, graceful: bool = True) -> None:
        await self.manager.stop(graceful=graceful)

    def request_hard_stop(self) -> None:
        self.manager.request_hard_stop()

    def submit(self, job_id: str) -> None:
        self.manager.wake()

    async def cancel(self, job_id: str) -> Job:
        return await self.manager.cancel(job_id)

    def workers(self) -> list[WorkerInfo]:
        return self.manager.workers()

    def alive(self) -> bool:
        return self.manager.alive()

    def readiness(self) -> tuple[bool, str]:
        if not self.manager.running():
            return False, "the embedded worker pool is not running"
        infos = self.manager.workers()
        ready = sum(1 for w in infos if w.alive and w.ready)
        if ready == 0:
            return False, f"no worker has loaded its models yet (0 of {len(infos)} ready)"
        return True, f"ok ({ready} of {len(infos)} workers ready)"
