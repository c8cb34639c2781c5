"""``GET /ws/{client_id}``: live job events over a WebSocket.

The protocol (subscribe, resume with ``last_event_id``, heartbeat, close codes) is served by
:class:`callannotate.events.session.Session` and documented in ``docs/api-specification.md``.
:class:`EventService` bundles the bus and the fan-out hub for the app's lifespan.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from fastapi import APIRouter, FastAPI, WebSocket

from callannotate.api.deps import ReadPrincipal, renewed_principal, ws_subprotocol
from callannotate.api.origin import origin_allowed
from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.events.bus import EventBus, create_bus
from callannotate.events.hub import Hub
from callannotate.events.session import AuthRefused, CloseCode, OwnerLookup, Renew, Session
from callannotate.jobs.events import JobEvent
from callannotate.jobs.models import Job
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.principal import Principal
from callannotate.security.scopes import READ

if TYPE_CHECKING:
    from callannotate.jobs.filequeue import FileQueue

log = logging.getLogger(__name__)

PUBLISH_WAIT_S = 5.0  # how long an upload waits for the bus to take its job.queued

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

router = APIRouter(tags=["events"])


class EventService:
    """The event bus plus this process's WebSocket fan-out; ``app.state.events``."""

    def __init__(self, settings: Settings, queue: FileQueue) -> None:
        self.settings = settings
        self.bus: EventBus = create_bus(settings.events, public_url=settings.api.public_url)
        self._queue = queue
        self._hub: Hub | None = None

    @property
    def started(self) -> bool:
        return self._hub is not None

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("the event service is not started")
        return self._hub

    async def start(self) -> None:
        await self.bus.start()
        self._hub = Hub(self.bus)
        log.info("event bus started (%s)", self.settings.events.backend)

    async def stop(self) -> None:
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        await self.bus.stop()

    def on_job_event(self, event: JobEvent) -> None:
        """Publish a manager/API :class:`JobEvent`; safe from any thread."""
        self.bus.on_job_event(event)

    async def owner_of(self, job_id: str) -> str | None:
        try:
            job = await anyio.to_thread.run_sync(self._queue.get, job_id)
        except CallAnnotateError:
            return None
        return job.owner


def publish_job_event(app: FastAPI, event: JobEvent) -> None:
    """Publish ``event`` on the app's bus (a no-op when the app has no event service)."""
    service: EventService | None = getattr(app.state, "events", None)
    if service is not None:
        service.on_job_event(event)


def announce_queued_before_visible(app: FastAPI) -> Callable[[Job], None]:
    """The ``before_visible`` hook of ``FileQueue.submit``/``retry`` for the API: publish
    ``job.queued`` and wait until the bus has it, before any worker (of this process or
    another) can claim the job and publish ``job.started``. Call the hook from a worker
    thread (``anyio.to_thread``), never from the event loop."""

    def announce(job: Job) -> None:
        service: EventService | None = getattr(app.state, "events", None)
        if service is None:
            return
        event = JobEvent(
            type="job.queued",
            job_id=job.id,
            owner=job.owner,
            data={"state": job.state.value, "attempts": job.attempts},
        )
        service.bus.on_job_event_and_wait(event, PUBLISH_WAIT_S)

    return announce


def token_renewer(websocket: WebSocket, principal: Principal, scope: str) -> Renew | None:
    """What checks a ``{"type": "auth", "token"}`` message of a long session: the new token
    must be valid, hold ``scope`` and belong to the same principal (``None`` with auth off)."""
    if not websocket.app.state.settings.auth.enabled:
        return None

    async def renew(token: str) -> float | None:
        try:
            fresh = await renewed_principal(websocket, principal, token, scope)
        except AuthenticationFailed as exc:
            raise AuthRefused(exc.detail) from exc
        return fresh.expires_at

    return renew


@router.websocket("/ws/{client_id}")
async def job_events(websocket: WebSocket, client_id: str, principal: ReadPrincipal) -> None:
    """Subscribe to job events; see docs/api-specification.md for the protocol.

    Only events of jobs ``principal`` may see are delivered (``all``: the user's own jobs,
    every job for an admin). An access token is checked for expiry during the session."""
    settings: Settings = websocket.app.state.settings
    if not origin_allowed(websocket, settings.api):
        # Before accept: the handshake is refused with HTTP 403 (no socket for that page).
        log.info("ws %s: origin %.200r refused", client_id[:128], websocket.headers.get("origin"))
        await websocket.close(CloseCode.POLICY_VIOLATION, "origin not allowed")
        return
    await websocket.accept(subprotocol=ws_subprotocol(websocket))
    if not CLIENT_ID_RE.fullmatch(client_id):
        await websocket.close(
            CloseCode.POLICY_VIOLATION, "client_id must be 1-128 of A-Z a-z 0-9 . _ : -"
        )
        return
    service: EventService | None = getattr(websocket.app.state, "events", None)
    if service is None or not service.started:
        await websocket.close(1011, "event service unavailable")
        return
    lookup: OwnerLookup = service.owner_of
    session = Session(
        hub=service.hub,
        transport=websocket,
        client_id=client_id,
        principal_id=principal.id,
        is_admin=principal.is_admin,
        owner_lookup=lookup,
        settings=service.settings.events,
        max_message_bytes=settings.api.ws_max_message_bytes,
        max_json_depth=settings.api.ws_max_json_depth,
        expires_at=principal.expires_at,
        renew=token_renewer(websocket, principal, READ),
    )
    await session.run()
