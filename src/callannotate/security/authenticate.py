"""Who is calling a request or a WebSocket: the credential it carries, checked.

``authenticate(conn, settings, service)`` is what ``api.deps.get_current_principal`` calls
(``auth.enabled``, the default). It returns ``None`` when the request carries no credential
(anonymous: the caller decides whether that is allowed) and raises
:class:`~callannotate.security.errors.AuthenticationFailed` when it carries a bad one.

Credentials, first found wins:

* ``Authorization: Bearer <access JWT | API key>``
* ``X-API-Key: <API key>``
* WebSocket only: ``Sec-WebSocket-Protocol: bearer, <token>`` (browsers cannot set headers
  on a WebSocket) or the ``access_token`` query parameter.

A JWT is checked in the event loop (HMAC, microseconds); the user's disabled state and API
keys come from a per-process cache, and only a cache miss goes to the database in a thread
(one lookup per credential however many requests missed at once: ``service.lookups``).
An entry in use is refreshed ahead of its expiry by a background lookup (:func:`refresh_soon`),
so a busy credential's requests do not all wait for the database when it expires; they are
still answered from an entry only until its expiry, and a refresh that finds the key revoked
or the user disabled drops the entry, so the revocation bound stays
``auth.principal_cache_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from callannotate.config import Settings
from callannotate.observability.metrics import observe_auth_failure
from callannotate.security import credentials
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.principal import Principal
from callannotate.security.service import AuthService
from callannotate.security.singleflight import SingleFlight

log = logging.getLogger(__name__)

WS_PROTOCOL_MARKERS = ("bearer", "access_token")
MAX_TOKEN_LENGTH = 4096
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"sec-websocket-protocol"})
#: Background refreshes in progress (a reference keeps each task alive until it is done).
_refreshes: set[asyncio.Task[None]] = set()


def _bearer(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "expected 'Authorization: Bearer <token>'", error="invalid_request"
        )
    return token.strip()


def _ws_protocol_token(value: str) -> str | None:
    parts = [p.strip() for p in value.split(",")]
    for i, part in enumerate(parts[:-1]):
        if part.lower() in WS_PROTOCOL_MARKERS:
            return parts[i + 1] or None
    return None


def _first_headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each credential header, in one pass over the raw ASGI headers
    (ASGI servers give names in lower case; a repeated header counts by its first value)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        if name in _CREDENTIAL_HEADERS and name not in found:
            found[name] = value
    return found


def credential_from(conn: HTTPConnection) -> str | None:
    """The token or key the connection presents, or ``None``."""
    headers = _first_headers(conn.scope)
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization:
        return _bearer(authorization)
    api_key = headers.get(b"x-api-key", b"").decode("latin-1")
    if api_key:
        return api_key.strip()
    if conn.scope.get("type") == "websocket":
        protocol = headers.get(b"sec-websocket-protocol", b"").decode("latin-1")
        token = _ws_protocol_token(protocol) if protocol else None
        return token or conn.query_params.get("access_token") or None
    return None


async def authenticate(
    conn: HTTPConnection, settings: Settings, service: AuthService
) -> Principal | None:
    """The principal behind the connection's credential; ``None`` when it has none."""
    try:
        token = credential_from(conn)
    except AuthenticationFailed as exc:
        observe_auth_failure(exc.reason)
        raise
    if token is None:
        return None
    return await principal_from_token(token, service)


async def principal_from_token(token: str, service: AuthService) -> Principal:
    """The principal of an access JWT or API key (also a WebSocket's ``auth`` message).

    A JWT's principal carries ``expires_at`` (its ``exp``); an API key's has none. A refusal
    is counted in ``callannotate_auth_failures_total`` by its reason.
    """
    try:
        return await _principal_from_token(token, service)
    except AuthenticationFailed as exc:
        observe_auth_failure(exc.reason)
        raise


async def _principal_from_token(token: str, service: AuthService) -> Principal:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationFailed()
    if credentials.looks_like_api_key(token):
        cached = service.cached_api_key_entry(token)
        if cached is not None:
            principal, refresh_due = cached
            if refresh_due:
                refresh_soon(
                    service.lookups, ("api_key", token), partial(service.refresh_api_key, token)
                )
            return principal
        # concurrent misses of one key (cache expiry under load) share one lookup, also
        # with a refresh of it in progress
        return await service.lookups.run(
            ("api_key", token), partial(service.principal_from_api_key, token)
        )
    claims = service.codec.decode(token)
    hit = service.cached_principal(claims)
    if hit is None:
        return await service.lookups.run(
            ("jwt", token), partial(service.principal_from_claims, claims)
        )
    if service.user_refresh_due(claims.subject):
        refresh_soon(
            service.user_lookups,
            ("user", claims.subject),
            partial(service.refresh_user_state, claims.subject),
        )
    return hit


def refresh_soon(flight: SingleFlight[Any], key: Hashable, fn: Callable[[], Any]) -> None:
    """Run ``fn`` through ``flight`` in a background task, unless ``key``'s call is running."""
    if flight.running(key):
        return
    task = asyncio.get_running_loop().create_task(_refresh(flight, key, fn))
    _refreshes.add(task)
    task.add_done_callback(_refreshes.discard)


async def _refresh(flight: SingleFlight[Any], key: Hashable, fn: Callable[[], Any]) -> None:
    try:
        await flight.run(key, fn)
    except AuthenticationFailed:
        pass  # the entry was dropped: the credential's next request is refused
    except Exception:  # the next request after the entry's expiry looks up again
        log.warning("background refresh of a cached credential failed", exc_info=True)
