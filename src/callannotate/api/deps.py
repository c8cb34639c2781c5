"""Dependency aliases every route uses (import these in your own routers).

``SettingsDep``, ``QueueDep``, ``ExecutorDep`` (what runs jobs: submit, cancel, workers and
readiness, whichever executor the app was built with) and ``CurrentPrincipal``, the single
place where the caller's identity comes from.

Who may call what is declared by the alias a route takes, never by ``if``s in its body:

* ``ReadPrincipal`` (scope ``read``): every ``GET`` and the job-events WebSocket;
* ``WritePrincipal`` (scope ``write``): every route that changes something, and ``/stream``;
* ``AdminPrincipal`` (role ``admin`` and scope ``admin``): user, key, audit, settings admin;
* ``CurrentPrincipal``: authenticated, any scope; ``OptionalPrincipal``: the public routes
  (``/health``, ``/ready``, ``/info``), ``None`` for an anonymous caller.

With ``auth.enabled`` (the default) the caller must present ``Authorization: Bearer <access
JWT | API key>`` or ``X-API-Key`` (WebSockets: ``Sec-WebSocket-Protocol: bearer, <token>`` or
``?access_token=``): 401 with ``WWW-Authenticate`` otherwise, 403 ``insufficient_scope``
when the scope is missing. On a WebSocket a refusal is sent as a close frame 1008 with the
reason (the handshake is accepted first so the client can read it). With ``auth.enabled``
false every caller is the local admin. Resources of another owner answer 404
(:func:`visible_job`, :func:`callannotate.voices.routes.visible_voice`).

The providers are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its
thread pool, which costs more than the work they do (this is the hot polling path). They
take an ``HTTPConnection`` so WebSocket routes can use them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, WebSocket, WebSocketException
from starlette.requests import HTTPConnection

from callannotate.api.origin import origin_allowed
from callannotate.api.routes.auth import get_auth_service
from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import FileQueue, valid_job_id
from callannotate.jobs.models import Job
from callannotate.observability.metrics import observe_auth_failure
from callannotate.security.authenticate import (
    WS_PROTOCOL_MARKERS,
    authenticate,
    principal_from_token,
)
from callannotate.security.errors import (
    AuthenticationFailed,
    AuthenticationRequired,
    InsufficientScope,
    PermissionDenied,
)
from callannotate.security.principal import Principal, local_principal
from callannotate.security.scopes import ADMIN, READ, WRITE

#: WebSocket close code for a refused credential (missing, invalid, expired, lacking scope).
WS_POLICY_VIOLATION = 1008


async def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_queue(conn: HTTPConnection) -> FileQueue:
    queue: FileQueue = conn.app.state.queue
    return queue


async def get_executor(conn: HTTPConnection) -> Executor:
    executor: Executor = conn.app.state.executor
    return executor


def ws_subprotocol(websocket: WebSocket) -> str | None:
    """The subprotocol to echo when accepting: the token marker (``bearer``) the client
    offered in ``Sec-WebSocket-Protocol``, if any (browsers drop a connection whose offered
    subprotocols get no answer)."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    return next((p for p in offered if p.lower() in WS_PROTOCOL_MARKERS), None)


async def _refuse(conn: HTTPConnection, exc: AuthenticationFailed | PermissionDenied) -> None:
    """Raise ``exc`` for HTTP; on a WebSocket accept and close 1008 with the reason.

    A handshake refused before accept reaches the client as a bare HTTP 403 with no reason,
    so the socket is accepted (unless the page's origin is foreign: then the handshake is
    refused) and closed with 1008 and the detail, which the client can read.
    """
    if not isinstance(conn, WebSocket):
        raise exc
    if origin_allowed(conn, conn.app.state.settings.api):
        await conn.accept(subprotocol=ws_subprotocol(conn))
    raise WebSocketException(WS_POLICY_VIOLATION, exc.detail[:120])


async def _authenticate(conn: HTTPConnection) -> Principal | None:
    settings: Settings = conn.app.state.settings
    if not settings.auth.enabled:
        return local_principal()
    try:
        service = await get_auth_service(conn)
        return await authenticate(conn, settings, service)
    except AuthenticationFailed as exc:
        await _refuse(conn, exc)
        raise  # not reached: _refuse raises


async def get_current_principal(conn: HTTPConnection) -> Principal:
    """The authenticated caller (any scope); 401, or close 1008 on a WebSocket, otherwise.

    Kept on ``conn.state.principal`` for middleware and logs of the same request (and reused
    from there: the rate-limit dependency resolves it first, see api/ratelimit.py).
    """
    principal: Principal | None = getattr(conn.state, "principal", None)
    if principal is None:
        principal = await _authenticate(conn)
    if principal is None:
        observe_auth_failure("missing")
        await _refuse(conn, AuthenticationRequired())
        raise AssertionError("unreachable")
    conn.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]


async def renewed_principal(
    conn: HTTPConnection, principal: Principal, token: str, scope: str
) -> Principal:
    """The principal of ``token`` sent during a long WebSocket session to replace the
    connection's expiring one: it must be valid, the same user with the same role, and hold
    ``scope``. Raises :class:`AuthenticationFailed` otherwise."""
    service = await get_auth_service(conn)
    fresh = await principal_from_token(token, service)
    if fresh.id != principal.id or fresh.roles != principal.roles:
        raise AuthenticationFailed("the token belongs to another principal")
    if not fresh.has_scope(scope):
        raise AuthenticationFailed(f"the token lacks the '{scope}' scope")
    return fresh


async def get_optional_principal(conn: HTTPConnection) -> Principal | None:
    """The caller when it sent a credential, ``None`` when anonymous (public routes); a bad
    credential is still refused."""
    principal = await _authenticate(conn)
    if principal is not None:
        conn.state.principal = principal
    return principal


def require_scope(scope: str) -> Callable[[HTTPConnection, Principal], Awaitable[Principal]]:
    """A dependency: the authenticated caller, holding ``scope`` (403 otherwise)."""

    async def scoped(conn: HTTPConnection, principal: CurrentPrincipal) -> Principal:
        if not principal.has_scope(scope):
            await _refuse(conn, InsufficientScope(scope))
        return principal

    scoped.__name__ = f"require_{scope}_scope"
    return scoped


async def require_admin(conn: HTTPConnection, principal: CurrentPrincipal) -> Principal:
    """The authenticated caller, an admin whose credential holds ``admin`` (403 otherwise)."""
    if not principal.is_admin:
        await _refuse(conn, PermissionDenied("only an admin may do this"))
    if not principal.has_scope(ADMIN):
        await _refuse(conn, InsufficientScope(ADMIN))
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[FileQueue, Depends(get_queue)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]
ReadPrincipal = Annotated[Principal, Depends(require_scope(READ))]
WritePrincipal = Annotated[Principal, Depends(require_scope(WRITE))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]


def visible_job(queue: FileQueue, job_id: str, principal: Principal) -> Job:
    """The job when it exists and ``principal`` may see it; 404 otherwise (no existence leak)."""
    if not valid_job_id(job_id):
        raise NotFound(f"job {job_id} not found")
    job = queue.get(job_id)
    if not principal.can_access(job.owner):
        raise NotFound(f"job {job_id} not found")
    return job
