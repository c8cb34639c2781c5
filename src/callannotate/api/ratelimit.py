"""Rate limits on every route: one app-wide dependency plus one small ASGI middleware.

:func:`install_rate_limits` (called by ``create_app`` before any route is added) puts
:func:`enforce_rate_limits` in the app router's dependencies, so FastAPI runs it first for
every HTTP and WebSocket route, including routes added later. It finds the caller through
:func:`callannotate.api.deps.get_optional_principal` (the same resolution the route's own
``CurrentPrincipal`` then reuses from ``conn.state.principal``), picks the budget from the
matched route and takes a token:

* ``POST /auth/token|refresh|logout``: the ``login`` bucket of the client address;
* :data:`UPLOAD_ROUTES`: ``uploads``; ``WS /stream``: ``ws_connect`` and ``uploads``;
  ``WS /ws/{client_id}``: ``ws_connect``; every other route: ``reads``;
* an authenticated caller is keyed by principal id with its role's budgets; an anonymous
  one (or one whose credential was refused) by client address with the ``anonymous`` role.

Over a budget an HTTP request gets 429 with ``Retry-After`` and ``RateLimit-*`` headers and
the usual error body; a WebSocket handshake is accepted, gets an error frame and is closed
with 1008. The ``RateLimit-*`` headers of allowed responses are added from the decision left
in ``scope["state"]`` by :class:`callannotate.api.headers.SecurityHeadersMiddleware` (it
rewrites every response's headers anyway). :class:`RateLimitMiddleware` meters WebSocket
messages: a message over the ``ws_messages`` budget is dropped with an error frame; the next
one while still over closes the socket with 1008.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, WebSocket, WebSocketException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callannotate.api.deps import get_optional_principal, ws_subprotocol
from callannotate.api.headers import STATE_RATELIMIT_DECISION
from callannotate.api.origin import origin_allowed
from callannotate.config import Settings
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.principal import Principal
from callannotate.security.ratelimit import (
    ANONYMOUS_ROLE,
    Budget,
    Decision,
    RateLimited,
    RateLimiter,
    client_key,
    principal_key,
    role_of,
)

log = logging.getLogger(__name__)

#: Routes that take a recording (method, path template): the ``uploads`` budget.
UPLOAD_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/jobs"),
        ("POST", "/voices"),
        ("POST", "/voices/{voice_id}/samples"),
        ("WEBSOCKET", "/stream"),
    }
)
#: Unauthenticated token routes: the ``login`` budget of the client address.
LOGIN_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/auth/token"), ("POST", "/auth/refresh"), ("POST", "/auth/logout")}
)
WS_POLICY_VIOLATION = 1008
#: ``scope["state"]`` keys shared by the dependency and the middlewares.
STATE_DECISION = STATE_RATELIMIT_DECISION
STATE_SUBJECT = "ratelimit_subject"


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose buckets a connection draws from."""

    role: str
    key: str


def limiter_of(conn: HTTPConnection) -> RateLimiter | None:
    limiter: RateLimiter | None = getattr(conn.app.state, "rate_limiter", None)
    return limiter


def _method(conn: HTTPConnection) -> str:
    return "WEBSOCKET" if conn.scope["type"] == "websocket" else str(conn.scope["method"])


def _route_path(conn: HTTPConnection) -> str:
    route = conn.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else conn.url.path


def budgets_for(method: str, path: str) -> tuple[Budget, ...]:
    """The buckets one call of ``method path`` (a route template) draws from."""
    if (method, path) in LOGIN_ROUTES:
        return (Budget.LOGIN,)
    if method == "WEBSOCKET":
        if (method, path) in UPLOAD_ROUTES:
            return (Budget.WS_CONNECT, Budget.UPLOADS)
        return (Budget.WS_CONNECT,)
    if (method, path) in UPLOAD_ROUTES:
        return (Budget.UPLOADS,)
    return (Budget.READS,)


def _client_key(conn: HTTPConnection) -> str:
    return client_key(conn.client.host if conn.client else None)


async def _refuse_websocket(conn: WebSocket, decision: Decision) -> None:
    """Accept (so the client can read why), send the error frame, close with 1008."""
    wait = max(1, math.ceil(decision.retry_after))
    detail = f"rate limited ({decision.budget}); retry after {wait} s"
    if origin_allowed(conn, conn.app.state.settings.api):
        await conn.accept(subprotocol=ws_subprotocol(conn))
        await conn.send_text(error_frame(detail, wait))
    raise WebSocketException(WS_POLICY_VIOLATION, detail[:120])


def error_frame(detail: str, retry_after: int) -> str:
    """The error message both WebSocket protocols understand (``code`` for ``/ws``,
    ``error`` for ``/stream``)."""
    return json.dumps(
        {
            "type": "error",
            "code": "rate_limited",
            "error": "rate_limited",
            "detail": detail,
            "retry_after": retry_after,
        },
        separators=(",", ":"),
    )


async def _take(
    conn: HTTPConnection, limiter: RateLimiter, budgets: tuple[Budget, ...], subject: Subject
) -> Decision | None:
    """Take one token from each budget; refuse (429 / close 1008) at the first empty one."""
    shown: Decision | None = None
    for budget in budgets:
        decision = await limiter.hit(budget, subject.role, subject.key)
        if decision is None:
            continue
        if not decision.allowed:
            if isinstance(conn, WebSocket):
                await _refuse_websocket(conn, decision)
            raise RateLimited(decision)
        if shown is None or decision.remaining < shown.remaining:
            shown = decision
    return shown


async def _subject(
    conn: HTTPConnection, limiter: RateLimiter, budgets: tuple[Budget, ...]
) -> Subject:
    """The caller through ``get_optional_principal``; a refused credential still costs its
    address a token of the anonymous budget (429 instead of 401 once that is empty)."""
    try:
        principal: Principal | None = await get_optional_principal(conn)
    except (AuthenticationFailed, WebSocketException):
        anonymous = Subject(ANONYMOUS_ROLE, _client_key(conn))
        for budget in budgets:
            decision = await limiter.hit(budget, anonymous.role, anonymous.key)
            if decision is not None and not decision.allowed and not isinstance(conn, WebSocket):
                raise RateLimited(decision) from None
        raise
    if principal is None:
        return Subject(ANONYMOUS_ROLE, _client_key(conn))
    return Subject(role_of(principal), principal_key(principal))


def _plan(limiter: RateLimiter, method: str, path: str) -> tuple[Budget, ...] | None:
    """:func:`budgets_for` of a call, ``None`` for an exempt path; worked out once per route
    and kept on the limiter (``route_plans``: bounded by the app's routes)."""
    key = (method, path)
    plans = limiter.route_plans
    if key in plans:
        return plans[key]
    plan = None if path in limiter.settings.exempt_paths else budgets_for(method, path)
    if len(plans) < 4096:
        plans[key] = plan
    return plan


async def enforce_rate_limits(conn: HTTPConnection) -> None:
    """App-wide dependency: take this call's tokens or refuse it (see the module docstring)."""
    limiter = limiter_of(conn)
    if limiter is None:
        return
    budgets = _plan(limiter, _method(conn), _route_path(conn))
    if budgets is None:
        return
    if budgets == (Budget.LOGIN,):
        subject = Subject(ANONYMOUS_ROLE, _client_key(conn))
    else:
        subject = await _subject(conn, limiter, budgets)
    state = conn.scope.setdefault("state", {})
    state[STATE_SUBJECT] = subject
    decision = await _take(conn, limiter, budgets, subject)
    if decision is not None:
        state[STATE_DECISION] = decision


class RateLimitMiddleware:
    """The ``ws_messages`` budget (pure ASGI: it reads the subject :func:`enforce_rate_limits`
    left in ``scope["state"]``). HTTP passes straight through: the ``RateLimit-*`` headers are
    added by the security-headers middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope.get("app")
        limiter: RateLimiter | None = getattr(getattr(app, "state", None), "rate_limiter", None)
        if limiter is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        closed = False
        strikes = 0

        async def guarded_send(message: Message) -> None:
            if closed:  # we closed the socket for the app: drop what it still sends
                return
            await send(message)

        async def metered_receive() -> Message:
            nonlocal closed, strikes
            while True:
                message = await receive()
                subject: Subject | None = state.get(STATE_SUBJECT)
                if message["type"] != "websocket.receive" or subject is None or closed:
                    return message
                decision = await limiter.hit(Budget.WS_MESSAGES, subject.role, subject.key)
                if decision is None or decision.allowed:
                    strikes = 0
                    return message
                strikes += 1
                wait = max(1, math.ceil(decision.retry_after))
                detail = f"rate limited (ws_messages); message dropped, retry after {wait} s"
                if strikes == 1:
                    await send({"type": "websocket.send", "text": error_frame(detail, wait)})
                    continue
                log.info("ws %s: closed, over the ws_messages budget", scope.get("path"))
                closed = True
                reason = "rate limited: too many messages"
                await send({"type": "websocket.send", "text": error_frame(reason, wait)})
                await send(
                    {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": reason}
                )
                return {"type": "websocket.disconnect", "code": WS_POLICY_VIOLATION}

        await self.app(scope, metered_receive, guarded_send)


def install_rate_limits(app: FastAPI, settings: Settings) -> None:
    """Limit every route of ``app`` (call before adding routes); no-op when disabled."""
    if not settings.rate_limits.enabled:
        return
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    app.router.dependencies.append(Depends(enforce_rate_limits))
    app.add_middleware(RateLimitMiddleware)


async def close_rate_limits(app: Any) -> None:
    """Release the limiter's connections (Redis) at shutdown."""
    limiter: RateLimiter | None = getattr(app.state, "rate_limiter", None)
    if limiter is not None:
        await limiter.close()
