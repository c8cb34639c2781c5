"""The built-in alert loop: evaluate the conditions, decide what to announce, deliver it.

One :class:`AlertWatcher` runs as a background task of the process that owns the queue
manager (the API's lifespan with embedded workers, ``callannotate worker``). Every
``alerts.interval_s`` it evaluates :class:`~.conditions.Conditions` in a thread, then per
alert:

* not firing -> firing: one ``firing`` notice (de-duplication: nothing more while it fires);
* still firing ``alerts.repeat_interval_s`` after the last notice: a repeat (``sequence`` 2, 3...);
* firing -> clear: one ``resolved`` notice.

Each notice goes to every channel in its own task (retried there, see :mod:`.channels`), so
a slow or dead receiver delays neither the next check nor anything else in the process, and
job processing (worker processes, the queue manager's thread) never waits for it. At most
``alerts.max_pending`` deliveries are in flight; more are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callannotate.config import Settings
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability.alerts.channels import Channel, build_channels, deliver
from callannotate.observability.alerts.conditions import BreakerReader, Condition, Conditions
from callannotate.observability.alerts.notice import Notice
from callannotate.observability.metrics import ALERT_NOTIFICATIONS, ALERTS_FIRING
from callannotate.resilience.breakers import breakers

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


@dataclass
class _Firing:
    started_at: float
    last_sent: float  # monotonic
    sequence: int


class AlertWatcher:
    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        executor: Executor | None,
        *,
        breakers: BreakerReader | None = None,
        channels: list[Channel] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cfg = settings.alerts
        self.conditions = Conditions(settings, queue, executor, breakers=breakers, clock=clock)
        self.channels = channels if channels is not None else build_channels(settings)
        self._clock = clock
        self._firing: dict[str, _Firing] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def firing(self) -> list[str]:
        return sorted(self._firing)

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
        notices = self.decide(conditions)
        for notice in notices:
            for channel in self.channels:
                self._spawn(channel, notice)
        return notices

    def decide(self, conditions: list[Condition]) -> list[Notice]:
        """The notices due now (firing, repeat, resolved), updating the firing state."""
        now, wall = self._clock(), time.time()
        notices = []
        for c in conditions:
            state = self._firing.get(c.alert)
            if c.firing and state is None:
                self._firing[c.alert] = _Firing(wall, now, 1)
                notices.append(Notice(c.alert, "firing", c.severity, c.summary, c.details, wall))
            elif c.firing and state is not None:
                if now - state.last_sent >= self.cfg.repeat_interval_s:
                    state.sequence += 1
                    state.last_sent = now
                    notices.append(
                        Notice(
                            c.alert,
                            "firing",
                            c.severity,
                            c.summary,
                            c.details,
                            state.started_at,
                            sequence=state.sequence,
                        )
                    )
            elif state is not None:
                del self._firing[c.alert]
                notices.append(
                    Notice(
                        c.alert,
                        "resolved",
                        c.severity,
                        c.summary,
                        c.details,
                        state.started_at,
                        ended_at=wall,
                        sequence=state.sequence,
                    )
                )
            ALERTS_FIRING.labels(c.alert).set(1 if c.alert in self._firing else 0)
        for n in notices:
            log.warning(
                "alert %s: %s",
                n.status,
                n.alert,
                extra={"alert": n.alert, "status": n.status, "summary": n.summary},
            )
        return notices

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
