"""The light lane of one process: where light tasks run with the local executor.

Annotation jobs run in the worker processes of the :class:`QueueManager`; light tasks
(:mod:`callannotate.jobs.light`) run here instead, in up to ``jobs.light_concurrency``
threads of the API (or ``callannotate worker``) process, so a backlog of long calls never
delays an enrollment: no annotation job ever holds one of these slots. Callback deliveries
are asyncio tasks of the :class:`CallbackDispatcher` on this process's loop (they wait on the
network, not on a core).

With ``jobs.executor: celery`` nothing runs here (``local=False``): light tasks go to the
``<prefix>.light`` queue through ``handoff``. In both cases the lane's maintenance, every
``queue.lease_seconds``, picks up what a dead process left (callbacks through
:meth:`CallbackDispatcher.recover`; with Celery, enrollments and exports whose message may be
lost are sent again, a duplicate being a no-op) and deletes finished tasks after
``queue.retention_hours``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta

from callannotate.config import Settings
from callannotate.jobs.callbacks import CallbackDispatcher
from callannotate.jobs.light import RUN_KINDS, LightState, light_store
from callannotate.jobs.light_run import run_claimed
from callannotate.jobs.models import utcnow

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the lane looks for tasks queued by other processes or due retries
RESEND_AFTER_S = 60.0  # Celery: a light task queued this long is sent again (no-op if dup)
STOP_GRACE_S = 10.0


class LightLane:
    """Runs light tasks in threads of this process (``local``) and recovers lost ones."""

    def __init__(
        self,
        settings: Settings,
        callbacks: CallbackDispatcher,
        *,
        local: bool,
        handoff: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.callbacks = callbacks
        self.local = local
        self.handoff = handoff
        self.store = light_store(settings.data_dir)
        self.concurrency = settings.jobs.light_concurrency
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:light"
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._active: dict[str, asyncio.Task[None]] = {}
        self._last_maintenance = 0.0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._main = asyncio.create_task(self._run(), name="light-lane")

    async def stop(self) -> None:
        """Stop taking tasks; running ones get ``STOP_GRACE_S`` (an unfinished one keeps its
        record and is taken over after a restart)."""
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        if self._active:
            await asyncio.wait(set(self._active.values()), timeout=STOP_GRACE_S)
        self._loop = None

    def wake(self) -> None:
        """A task was queued: look now (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(event.set)

    def running(self) -> list[str]:
        return sorted(self._active)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                if self.local:
                    await self._poll()
                now = time.monotonic()
                if now - self._last_maintenance >= max(1.0, self.settings.queue.lease_seconds):
                    self._last_maintenance = now
                    await self._maintenance()
            except Exception:
                log.exception("light lane pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            self._wake.clear()

    async def _poll(self) -> None:
        if len(self._active) >= self.concurrency:
            return
        pending = await asyncio.to_thread(self.store.pending, RUN_KINDS)
        now = utcnow()
        for task in pending:
            if len(self._active) >= self.concurrency:
                return
            if task.id in self._active or not task.due(now):
                continue
            self._active[task.id] = asyncio.create_task(
                self._run_one(task.id), name=f"light-{task.id}"
            )

    async def _run_one(self, task_id: str) -> None:
        try:
            claim = await asyncio.to_thread(self.store.claim, task_id, self.worker_id)
            if claim is not None:
                await asyncio.to_thread(run_claimed, self.settings, claim)
        except Exception:
            log.exception("light task failed around its run", extra={"task_id": task_id})
        finally:
            self._active.pop(task_id, None)
            if self._wake is not None:
                self._wake.set()  # a slot is free: look for more

    async def _maintenance(self) -> None:
        await asyncio.to_thread(self.callbacks.recover)  # reads the folder: off the loop
        if not self.local and self.handoff is not None:
            stale = utcnow() - timedelta(seconds=RESEND_AFTER_S)
            pending = await asyncio.to_thread(self.store.pending, RUN_KINDS)
            for task in pending:
                if task.state == LightState.QUEUED and (task.not_before or task.created_at) > stale:
                    continue
                log.info("sending a light task again", extra={"task_id": task.id})
                await asyncio.to_thread(self.handoff, task.id)
        retention = self.settings.queue.retention_hours * 3600.0
        await asyncio.to_thread(self.store.purge, retention)
