"""The built-in alert loop: evaluate the conditions, decide what to announce, deliver it.

One :class:`AlertWatcher` runs as a background task of the process that owns the queue
manager (the API's lifespan with embedded workers, ``callannotate worker``). Every
``alerts.interval_s`` it evaluates :class:`~.conditions.Conditions` in a thread, then per
alert:

* not firing -> firing: one ``firing`` notice (de-duplication: nothing more while it fires);
* still firing ``alerts.repeat_interval_s`` after the last notice: a repeat (``sequence`` 2, 3...);
* firing -> clear: one ``resolved`` notice.

Which alerts are open is kept in the database (:mod:`.state`), so a restarted watcher carries
on where the previous one stopped: no new ``firing`` notice for an alert still open, repeats
on the same schedule, and the ``resolved`` notice when it cleared. Several watching
processes share that state: an alert is open while any of them sees it firing; one that
sees it clear resolves it at once when it was the last to see it firing, otherwise only
after ``RESOLVE_AFTER_INTERVALS`` of its check intervals without anyone seeing it firing (a
watcher that stopped, or another process whose own counts still fire). While the database
cannot be reached the state is kept in memory (a warning is logged).

Each notice goes to every channel in its own task (retried there, see :mod:`.channels`), so
a slow or dead receiver delays neither the next check nor anything else in the process, and
job processing (worker processes, the queue manager's thread) never waits for it. At most
``alerts.max_pending`` deliveries are in flight; more are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from callannotate.config import Settings
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability.alerts.channels import Channel, build_channels, deliver
from callannotate.observability.alerts.conditions import BreakerReader, Condition, Conditions
from callannotate.observability.alerts.notice import Notice
from callannotate.observability.alerts.state import (
    AlertStore,
    DatabaseAlertStore,
    MemoryAlertStore,
    OpenAlert,
)
from callannotate.observability.metrics import ALERT_NOTIFICATIONS, ALERTS_FIRING
from callannotate.resilience.breakers import breakers

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
RESOLVE_AFTER_INTERVALS = 3.0


def watcher_id() -> str:
    """This watcher in the shared state: host, pid and a random part (a new one per start)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AlertWatcher:
    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        executor: Executor | None,
        *,
        breakers: BreakerReader | None = None,
        channels: list[Channel] | None = None,
        clock: Callable[[], float] | None = None,
        store: AlertStore | None = None,
    ) -> None:
        """``clock``: Unix seconds of the stored state (and the conditions' window); tests pass
        a manual one. ``store``: where open alerts are kept (the configured database)."""
        self.settings = settings
        self.cfg = settings.alerts
        self.conditions = Conditions(
            settings, queue, executor, breakers=breakers, clock=clock or time.monotonic
        )
        self.channels = channels if channels is not None else build_channels(settings)
        self._clock = clock or time.time
        self.id = watcher_id()
        self.store: AlertStore = store if store is not None else DatabaseAlertStore(settings)
        self._memory = MemoryAlertStore()  # the last known state; the fallback
        self._store_failing = False
        self._tasks: set[asyncio.Task[bool]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def firing(self) -> list[str]:
        """The open alerts as last read or written by this watcher."""
        return sorted(self._memory.load())

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="alerts")
        log.info(
            "built-in alerts started",
            extra={
                "channels": [c.name for c in self.channels],
                "interval_s": self.cfg.interval_s,
            },
        )

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("alert deliveries dropped at shutdown", extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=1.0)
        for channel in self.channels:
            await channel.close()
        await asyncio.to_thread(self.store.dispose)

    async def drain(self) -> None:
        """Wait until every delivery started so far has ended (tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad check must not end the watching
                log.exception("alert check failed")
            await asyncio.sleep(self.cfg.interval_s)

    async def check(self) -> list[Notice]:
        """One round: evaluate, update the state, start the deliveries; returns the notices."""
        conditions = await asyncio.to_thread(self.conditions.evaluate)
        notices = await asyncio.to_thread(self.decide, conditions)
        for notice in notices:
            for channel in self.channels:
                self._spawn(channel, notice)
        return notices

    def decide(self, conditions: list[Condition]) -> list[Notice]:
        """The notices due now (firing, repeat, resolved), updating the stored state.

        Blocking (database): call it from a thread."""
        now = self._clock()
        store: AlertStore = self.store
        try:
            current = store.load()
        except Exception as exc:
            store, current = self._fall_back(exc), self._memory.load()
        after = dict(current)
        notices = []
        for c in conditions:
            try:
                notice = self._step(store, current.get(c.alert), c, now, after)
            except Exception as exc:  # the database went away during the round
                if store is self._memory:
                    raise
                store = self._fall_back(exc, after)
                notice = self._step(store, after.get(c.alert), c, now, after)
            if notice is not None:
                notices.append(notice)
            ALERTS_FIRING.labels(c.alert).set(1 if c.alert in after else 0)
        evaluated = {c.alert for c in conditions}
        for name in sorted(set(current) - evaluated):
            try:
                notice = self._unwatched(store, current[name], now, after)
            except Exception as exc:
                if store is self._memory:
                    raise
                store = self._fall_back(exc, after)
                continue
            if notice is not None:
                notices.append(notice)
        if store is not self._memory:
            self._memory.replace(after)
            if self._store_failing:
                self._store_failing = False
                log.info("alert state stored in the database again")
        for n in notices:
            log.warning(
                "alert %s: %s",
                n.status,
                n.alert,
                extra={"alert": n.alert, "status": n.status, "summary": n.summary},
            )
        return notices

    def _fall_back(self, exc: Exception, known: dict[str, OpenAlert] | None = None) -> AlertStore:
        """Switch to the memory store (``known``: the state as read and changed so far)."""
        if known is not None:
            self._memory.replace(known)
        if not self._store_failing:
            self._store_failing = True
            log.warning(
                "alert state cannot be stored; keeping it in memory",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        return self._memory

    def _unwatched(
        self, store: AlertStore, state: OpenAlert, now: float, after: dict[str, OpenAlert]
    ) -> Notice | None:
        """An open alert this process does not evaluate (e.g. ``circuit_open.events_redis``
        opened by a process that used Redis): left to the others while one of them saw it
        firing recently, resolved when none did for the grace period."""
        if now - state.seen_at < self._grace() or not store.close(state):
            return None
        after.pop(state.alert, None)
        return Notice(
            state.alert,
            "resolved",
            state.severity if state.severity in ("warning", "critical") else "warning",
            f"{state.alert}: no watching process reports it any more",
            {},
            state.started_at,
            ended_at=now,
            sequence=state.sequence,
        )

    def _grace(self) -> float:
        return RESOLVE_AFTER_INTERVALS * self.cfg.interval_s

    def _step(
        self,
        store: AlertStore,
        state: OpenAlert | None,
        c: Condition,
        now: float,
        after: dict[str, OpenAlert],
    ) -> Notice | None:
        """Apply one condition to its stored state; the notice this watcher must send."""
        if c.firing and state is None:
            opened = OpenAlert(c.alert, c.severity, now, now, 1, now, self.id)
            if not store.open(opened):  # another watcher opened it and announces it
                return None
            after[c.alert] = opened
            return Notice(c.alert, "firing", c.severity, c.summary, c.details, now)
        if c.firing and state is not None:
            due = now - state.last_notified_at >= self.cfg.repeat_interval_s
            seen = replace(state, seen_at=now, seen_by=self.id, version=state.version + 1)
            if due:
                seen = replace(seen, last_notified_at=now, sequence=state.sequence + 1)
            if not store.update(state, seen):  # changed meanwhile: read again next round
                return None
            after[c.alert] = seen
            if not due:
                return None
            return Notice(
                c.alert,
                "firing",
                c.severity,
                c.summary,
                c.details,
                state.started_at,
                sequence=seen.sequence,
            )
        if state is None:
            return None
        if state.seen_by != self.id and now - state.seen_at < self._grace():
            return None  # another watcher saw it firing a moment ago
        if not store.close(state):
            return None
        after.pop(c.alert, None)
        return Notice(
            c.alert,
            "resolved",
            c.severity,
            c.summary,
            c.details,
            state.started_at,
            ended_at=now,
            sequence=state.sequence,
        )

    def _spawn(self, channel: Channel, notice: Notice) -> None:
        if len(self._tasks) >= self.cfg.max_pending:
            ALERT_NOTIFICATIONS.labels(channel.name, "dropped").inc()
            log.warning(
                "alert delivery dropped: too many in flight",
                extra={"alert": notice.alert, "channel": channel.name},
            )
            return
        task = asyncio.create_task(
            deliver(channel, notice, self.cfg), name=f"alert-{notice.alert}-{channel.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def build_watcher(
    settings: Settings,
    queue: FileQueue,
    executor: Executor | None,
    *,
    breakers: BreakerReader | None = None,
) -> AlertWatcher | None:
    """The watcher for this process, or None: alerts disabled or no receiver configured."""
    cfg = settings.alerts
    if not cfg.enabled or not (cfg.webhook_urls or cfg.email_to):
        return None
    return AlertWatcher(settings, queue, executor, breakers=breakers)


WATCHED_BREAKERS = ("contacts", "events_redis")


def open_breakers(state: Any = None) -> dict[str, list[str]]:
    """Open circuits of every breaker this process built so far
    (:mod:`callannotate.resilience.breakers`); a service not used yet (contacts never asked
    for) has no breaker to read, and is not built here. Only the service's own dependencies
    alert: the alert receivers' breakers are left out (a notice about them could not be
    delivered), and so are job callbacks (a client's receiver being down is the client's)."""
    return {b.name: b.open_keys() for b in breakers() if b.name in WATCHED_BREAKERS}
