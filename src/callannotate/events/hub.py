"""Fan-out of bus events to this process's WebSocket sessions.

The hub listens on the bus and indexes sessions by the jobs they subscribed to, by the
owner whose jobs they watch (``{"all": true}``), and (admins watching everything) in one
set, so an event costs one dictionary look-up plus one queue append per interested session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from callannotate.events.bus import EventBus
from callannotate.events.models import BusEvent

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    principal_id: str
    client_id: str

    @property
    def tick_period(self) -> float: ...

    def tick(self, now: float) -> None: ...

    def deliver(self, event: BusEvent) -> None: ...

    def resync(self) -> None: ...

    def replaced(self) -> None: ...


class Hub:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._by_job: dict[str, set[Subscriber]] = {}
        self._by_owner: dict[str, set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        self._by_client: dict[tuple[str, str], Subscriber] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._period = 1.0
        self._detach: list[Callable[[], None]] = [
            bus.add_listener(self.dispatch),
            bus.add_resync_listener(self.resync),
        ]

    def close(self) -> None:
        for detach in self._detach:
            detach()
        self._detach.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick_forever(self) -> None:
        """One timer for every session (heartbeats, stuck sends) instead of one per event."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._period)
            now = loop.time()
            for session in tuple(self._by_client.values()):
                try:
                    session.tick(now)
                except Exception:
                    log.exception("session tick failed")

    # -- sessions ---------------------------------------------------------------------------------
    def register(self, session: Subscriber) -> None:
        """Add a session; an older one with the same principal and client id is replaced."""
        key = (session.principal_id, session.client_id)
        previous = self._by_client.get(key)
        self._by_client[key] = session
        self._period = min(self._period, session.tick_period)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(), name="ws-hub-ticker")
        if previous is not None and previous is not session:
            log.info("client %s reconnected; closing its older connection", session.client_id)
            previous.replaced()

    def unregister(self, session: Subscriber, jobs: set[str], *, all_of: str | None) -> None:
        key = (session.principal_id, session.client_id)
        if self._by_client.get(key) is session:
            del self._by_client[key]
        for job_id in jobs:
            self.remove_job(session, job_id)
        self.remove_all(session, all_of)

    @property
    def session_count(self) -> int:
        return len(self._by_client)

    # -- subscriptions ------------------------------------------------------------------------
    def add_job(self, session: Subscriber, job_id: str) -> None:
        self._by_job.setdefault(job_id, set()).add(session)

    def remove_job(self, session: Subscriber, job_id: str) -> None:
        subs = self._by_job.get(job_id)
        if subs is not None:
            subs.discard(session)
            if not subs:
                del self._by_job[job_id]

    def add_all(self, session: Subscriber, owner: str | None) -> None:
        """Watch every job of ``owner`` (``None``: every job, for admins)."""
        if owner is None:
            self._everything.add(session)
        else:
            self._by_owner.setdefault(owner, set()).add(session)

    def remove_all(self, session: Subscriber, owner: str | None) -> None:
        self._everything.discard(session)
        if owner is not None:
            subs = self._by_owner.get(owner)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self._by_owner[owner]

    # -- bus callbacks ------------------------------------------------------------------------
    def dispatch(self, event: BusEvent) -> None:
        groups = [
            group
            for group in (
                self._by_job.get(event.job_id),
                self._by_owner.get(event.owner),
                self._everything,
            )
            if group
        ]
        if not groups:
            return
        targets: set[Subscriber] = groups[0] if len(groups) == 1 else set().union(*groups)
        for session in tuple(targets):
            session.deliver(event)

    def resync(self) -> None:
        for session in tuple(self._by_client.values()):
            session.resync()
