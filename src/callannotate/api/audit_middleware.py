"""Audit records for HTTP calls, derived from the matched route template.

:class:`AuditMiddleware` (pure ASGI, inside :class:`~callannotate.api.errors.RequestIdMiddleware`
so the request id is known) records, after the response has started:

* every mutating call (POST, PUT, PATCH, DELETE), on any route, matched or not;
* every read of a recording, a result, a report or an export: a GET whose route template ends
  in one of :data:`AUDITED_READ_SEGMENTS` (``/jobs/{job_id}/audio``, ``/result``, ``/report``,
  ``/export``, ``/exports/{export_id}/file``; a route added later with such a name is covered
  too), and reads of the audit log itself (``/audit...``);
* every call refused for its credential (401, 403) on any route;
* every WebSocket session, when it ends (``/stream`` is ``stream.create``: it uploads a
  recording; ``/ws/{client_id}`` is ``events.subscribe``), with its close code; a session
  refused before or with close code 1008 is ``denied``.

The action comes from the template (:func:`describe_route`): the last fixed segment before the
last path parameter names the resource type (singular), all path parameters joined by ``/``
its id, and the method (plus any fixed segments after the parameter) the verb, so
``DELETE /jobs/{job_id}`` is ``job.delete`` and ``GET /jobs/{job_id}/audio`` is
``job.read_audio``. :data:`ROUTE_ACTIONS` overrides a few names. When a service already
recorded its own, more specific events for the request (a login, an API key), the middleware
does not add a second record.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callannotate.observability.logging import REDACTED, is_secret_param, request_id_var
from callannotate.security.audit import (
    AuditEntry,
    AuditLog,
    Outcome,
    RequestAudit,
    audit_request_var,
    outcome_for_status,
)

logger = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})
AUDITED_READ_SEGMENTS = frozenset({"audio", "result", "report", "export", "file"})
AUDITED_READ_PREFIXES = ("/audit",)
# Refusals recorded on any route, reads included. Not 429: a flood of rate-limited reads
# would turn into a flood of rows (rate-limited *mutating* calls are still recorded).
DENIED_STATUSES = frozenset({401, 403})

_METHOD_VERBS = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
    "GET": "read",
    "HEAD": "read",
    "WEBSOCKET": "connect",
}

# (method, template) -> (verb, resource type) where the derived name reads badly.
ROUTE_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/voices/{voice_id}/samples"): ("add_sample", "voice"),
    ("POST", "/auth/token"): ("token", "auth"),
    ("POST", "/auth/refresh"): ("refresh", "auth"),
    ("POST", "/auth/logout"): ("logout", "auth"),
    ("POST", "/auth/apikeys"): ("create", "apikey"),
    ("DELETE", "/auth/apikeys/{key_id}"): ("revoke", "apikey"),
    ("WEBSOCKET", "/ws/{client_id}"): ("subscribe", "events"),
    ("WEBSOCKET", "/stream"): ("create", "stream"),
}


def _singular(segment: str) -> str:
    name = segment.replace("-", "_")
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def describe_route(
    method: str, template: str | None, path_params: dict[str, Any]
) -> tuple[str, str, str | None]:
    """``(verb, resource_type, resource_id)`` of a call to ``template``."""
    method_verb = _METHOD_VERBS.get(method, method.lower())
    if template is None:
        return method_verb, "unknown", None
    override = ROUTE_ACTIONS.get((method, template))
    segments = [s for s in template.strip("/").split("/") if s]
    params = [s[1:-1].split(":", 1)[0] for s in segments if s.startswith("{")]
    ids = [str(path_params[p]) for p in params if p in path_params]
    resource_id = "/".join(ids) or None
    if override is not None:
        return override[0], override[1], resource_id
    last_param = max((i for i, s in enumerate(segments) if s.startswith("{")), default=None)
    if last_param is None:
        resource = _singular(segments[0]) if segments else "root"
        tail = segments[1:]
    else:
        statics = [s for s in segments[:last_param] if not s.startswith("{")]
        resource = _singular(statics[-1]) if statics else "root"
        tail = segments[last_param + 1 :]
    if not tail:
        verb = method_verb
    elif method == "POST":
        verb = "_".join(tail)
    else:
        verb = "_".join([method_verb, *tail])
    return verb.replace("-", "_"), resource, resource_id


@lru_cache(maxsize=1024)  # a route template: a bounded set
def audited_read(template: str) -> bool:
    if template.startswith(AUDITED_READ_PREFIXES):
        return True
    last = template.rstrip("/").rsplit("/", 1)[-1]
    return last in AUDITED_READ_SEGMENTS


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _query_detail(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    raw = scope.get("query_string", b"").decode("latin-1")
    if not raw:
        return {}
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True)[:20]:
        out[key[:64]] = REDACTED if is_secret_param(key) else value[:200]
    return out


def http_entry(scope: Scope, status: int | None, ctx: RequestAudit) -> AuditEntry | None:
    """The record for a finished call, or ``None`` when the call is not audited.

    The actor is the principal the route authenticated (``conn.state.principal``; for a read
    through a signed report link, the job's owner: reports/links.py); a call refused before
    that has none (``null``: anonymous or a bad credential).
    """
    method = str(scope.get("method", "GET")).upper()
    route = scope.get("route")
    template = getattr(route, "path", None)
    template = template if isinstance(template, str) else None
    mutating = method in MUTATING_METHODS
    read = method in READ_METHODS and template is not None and audited_read(template)
    denied = status in DENIED_STATUSES
    if not (mutating or read or denied):
        return None
    if ctx.recorded and (status is None or status < 500):
        return None  # the service wrote its own records for this request
    verb, resource, resource_id = describe_route(method, template, scope.get("path_params", {}))
    detail: dict[str, Any] = {"method": method, "path": str(scope.get("path", ""))[:512]}
    if template is not None:
        detail["route"] = template
    query = _query_detail(scope)
    if query:
        detail["query"] = query
    byte_range = _header(scope, b"range")
    if byte_range and read:
        detail["range"] = byte_range[:100]
    return AuditEntry(
        verb=verb,
        resource_type=resource,
        resource_id=resource_id,
        outcome=outcome_for_status(status),
        status=status,
        principal_id=ctx.actor(),
        client_ip=ctx.client_ip,
        user_agent=ctx.user_agent,
        request_id=ctx.request_id,
        detail=detail,
    )


def audit_log_for(state: Any) -> AuditLog:
    """``state.audit`` (an app's state): built on first use on the configured database.

    Cheap: no connection is opened here; the writer thread migrates the schema before its
    first write.
    """
    audit = getattr(state, "audit", None)
    if isinstance(audit, AuditLog):
        return audit
    from callannotate.db.engine import Database

    settings = state.settings
    with _build_lock:
        audit = getattr(state, "audit", None)
        if not isinstance(audit, AuditLog):
            audit = AuditLog(Database.from_settings(settings), settings.audit, migrate=True)
            state.audit = audit
    return audit


async def close_audit_log(app: Any) -> None:
    """Store every queued record and stop the writer (the app's lifespan calls this)."""
    audit = getattr(app.state, "audit", None)
    if isinstance(audit, AuditLog):
        await audit.aclose()
        audit.db.dispose()
        app.state.audit = None


_build_lock = threading.Lock()  # the auth service may build the log from a thread


def websocket_entry(
    scope: Scope, accepted: bool, close_code: int | None, ctx: RequestAudit
) -> AuditEntry:
    """The record of a finished WebSocket session (``/stream`` uploads a recording)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    template = template if isinstance(template, str) else None
    verb, resource, resource_id = describe_route(
        "WEBSOCKET", template, scope.get("path_params", {})
    )
    if not accepted or close_code == 1008:
        outcome: Outcome = "denied"
    elif close_code in (None, 1000, 1001, 1005):
        outcome = "ok"
    else:
        outcome = "failed"
    detail: dict[str, Any] = {
        "method": "WEBSOCKET",
        "path": str(scope.get("path", ""))[:512],
        "accepted": accepted,
        "close_code": close_code,
    }
    if template is not None:
        detail["route"] = template
    return AuditEntry(
        verb=verb,
        resource_type=resource,
        resource_id=resource_id,
        outcome=outcome,
        principal_id=ctx.actor(),
        client_ip=ctx.client_ip,
        user_agent=ctx.user_agent,
        request_id=ctx.request_id,
        detail=detail,
    )


class AuditMiddleware:
    """Records audited HTTP calls and every WebSocket session (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ctx = RequestAudit(
            client_ip=client[0] if client else None,
            user_agent=_header(scope, b"user-agent"),
            request_id=request_id_var.get(),
            state=scope.setdefault("state", {}),
        )
        app = scope.get("app")
        token = audit_request_var.set(ctx)
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = status or 500
            raise
        finally:
            audit_request_var.reset(token)
            entry = http_entry(scope, status, ctx)
            if entry is not None and app is not None:
                await audit_log_for(app.state).arecord(entry)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        ctx = RequestAudit(
            client_ip=client[0] if client else None,
            user_agent=_header(scope, b"user-agent"),
            request_id=request_id_var.get(),
            state=scope.setdefault("state", {}),
        )
        token = audit_request_var.set(ctx)
        accepted = False
        close_code: int | None = None

        async def watch_send(message: Message) -> None:
            nonlocal accepted, close_code
            if message["type"] == "websocket.accept":
                accepted = True
            elif message["type"] == "websocket.close" and close_code is None:
                close_code = int(message.get("code", 1000))
            await send(message)

        async def watch_receive() -> Message:
            nonlocal close_code
            message = await receive()
            if message["type"] == "websocket.disconnect" and close_code is None:
                close_code = int(message.get("code", 1005))
            return message

        try:
            await self.app(scope, watch_receive, watch_send)
        except Exception:
            close_code = close_code or 1011
            raise
        finally:
            audit_request_var.reset(token)
            app = scope.get("app")
            if app is not None:
                entry = websocket_entry(scope, accepted, close_code, ctx)
                await audit_log_for(app.state).arecord(entry)
