"""The job service: queue, event bus, executor and callbacks of one process, wired once.

``callannotate serve`` (:func:`callannotate.api.app.create_app`) and ``callannotate worker``
(:func:`run_standalone_worker`) both build their jobs side with :func:`build_job_service`, so
a standalone worker publishes ``job.started`` / ``job.progress`` / ``job.completed`` on the
same bus as the API (with ``events.backend=redis`` the API's WebSocket clients see them) and
delivers the callbacks of the jobs it finishes.

Job events of this process go to :meth:`JobService.publish`, which hands them to the bus and
to the callback dispatcher (which queues each callback as light work, see
:mod:`callannotate.jobs.light_lane`). The dispatcher listens here rather than on the bus
because with Redis every process receives every event: only the process that finalised a job
announces it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from callannotate.config import Settings
from callannotate.events.bus import EventBus, create_bus
from callannotate.jobs.callbacks import CallbackDispatcher
from callannotate.jobs.events import EventCallback, JobEvent
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.executors.external import ExternalExecutor
from callannotate.jobs.executors.local import LocalExecutor
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light_lane import LightLane
from callannotate.jobs.manager import QueueManager
from callannotate.jobs.runner import JobRunner, PipelineRunner
from callannotate.observability.export import MetricsExport
from callannotate.security.atrest import vault_for

log = logging.getLogger(__name__)

ExecutorFactory = Callable[[FileQueue, EventCallback], Executor]


class JobService:
    """Everything one process needs to queue, run and announce jobs."""

    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        bus: EventBus,
        make_executor: ExecutorFactory,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.bus = bus
        self.executor: Executor = make_executor(queue, self.publish)
        # light work (callbacks, asynchronous enrollment and exports): Celery's light queue, or this
        # process's light lane (docs/scale-out.md "Queues and priority")
        send_light = getattr(self.executor, "send_light", None)
        self.handoff: Callable[[str], None] | None = send_light if callable(send_light) else None
        self.callbacks = CallbackDispatcher(settings, queue, handoff=self.handoff)
        self.light = LightLane(
            settings, self.callbacks, local=self.handoff is None, handoff=self.handoff
        )
        self._owns_bus = False

    def submit_light(self, task_id: str) -> None:
        """``task_id`` was stored durably: run it on the light queue or lane (blocking; a
        broker that cannot be reached leaves it for the lane's maintenance to send)."""
        if self.handoff is not None:
            self.handoff(task_id)
        else:
            self.light.wake()

    def publish(self, event: JobEvent) -> None:
        """Announce a job event of this process: event bus and callbacks (any thread)."""
        self.bus.on_job_event(event)
        self.callbacks.on_job_event(event)

    async def start(self) -> None:
        """Start the bus (unless the API's event service already did), callbacks, executor."""
        if not self.bus.running:
            await self.bus.start()
            self._owns_bus = True
        await self.callbacks.start()
        await self.executor.start()
        await self.light.start()

    async def stop(self, graceful: bool = True) -> None:
        await self.light.stop()
        await self.executor.stop(graceful=graceful)
        await self.callbacks.stop()
        if self._owns_bus:
            await self.bus.stop()
            self._owns_bus = False


def build_job_service(
    settings: Settings,
    *,
    embedded: bool,
    runner: JobRunner | None = None,
) -> JobService:
    """Queue, bus and executor for ``settings``; ``embedded``: run jobs in worker processes
    of this process with ``runner`` (the pipeline by default), else leave them to others."""
    vault = vault_for(settings)
    if vault.enabled:
        vault.ring  # noqa: B018 - load (or create) the master keys now: a bad key fails start-up
    queue = FileQueue(settings.queue_dir, settings.queue, vault)
    bus = create_bus(settings.events, public_url=settings.api.public_url)
    job_runner = runner or PipelineRunner()

    def make_executor(queue: FileQueue, publish: EventCallback) -> Executor:
        if settings.jobs.executor == "celery":
            from callannotate.jobs.executors.celery import CeleryExecutor

            return CeleryExecutor(settings, queue, on_event=publish)
        if not embedded:
            return ExternalExecutor(queue, on_event=publish)
        manager = QueueManager(
            queue, settings, job_runner, on_event=publish, grace_s=settings.workers.stop_grace_s
        )
        return LocalExecutor(manager)

    return JobService(settings, queue, bus, make_executor)


def run_standalone_worker(settings: Settings, runner: JobRunner | None = None) -> None:
    """``callannotate worker``: a worker pool on the queue folder, no HTTP.

    Exits on SIGTERM/SIGINT: stops taking work, lets running jobs finish within
    ``workers.stop_grace_s`` and returns the others to incoming. A second signal stops at
    once (running jobs go back to incoming).
    """

    async def main() -> None:
        service = build_job_service(settings, embedded=True, runner=runner)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("stopping: no new jobs; running jobs finish or go back to the queue")
                stop.set()
            else:
                log.info("stopping now: running jobs go back to the queue")
                service.executor.request_hard_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await service.start()
        # queue/worker gauges + the metrics.port listener (a worker has no HTTP API)
        metrics = MetricsExport(settings, service.queue, service.executor)
        metrics.start()
        from callannotate.observability.alerts.watcher import build_watcher

        alerts = build_watcher(settings, service.queue, service.executor)  # built-in alerts
        if alerts is not None:
            await alerts.start()
        log.info(
            "worker pool started",
            extra={
                "queue": str(settings.queue_dir),
                "workers": settings.workers.concurrency,
                "events": settings.events.backend,
            },
        )
        try:
            await stop.wait()
        finally:
            if alerts is not None:
                await alerts.stop()
            metrics.stop()
            await service.stop(graceful=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
