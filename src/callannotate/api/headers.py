"""Security headers on every HTTP response, and CORS (off unless an allow-list is set).

:class:`SecurityHeadersMiddleware` is the one place that sets them (routes set none):

* ``X-Content-Type-Options: nosniff``: a browser never guesses a type (an uploaded WAV with
  a page appended stays audio).
* ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no page is framed
  (click-jacking), the old header for old browsers, the CSP directive for current ones.
* ``Referrer-Policy: no-referrer``: job ids in URLs never leak to another site.
* ``Content-Security-Policy``, chosen by the route that answered (its path template):

  - :data:`REPORT_PAGE` (``/jobs/{job_id}/report``): the report's own inline script, allowed
    by its SHA-256 hash (nothing else runs, whatever a transcript contains), inline styles,
    ``data:`` images, audio from the service itself;
  - :data:`DOCS_PAGE` (``/docs``, ``/redoc``, the OAuth2 redirect): scripts from the service
    (``/docs/assets``) plus the page's inline start-up script by a per-request nonce
    (:func:`csp_nonce`), styles inline (Swagger UI and Redoc inject them), ``fetch`` to the
    service only;
  - :data:`USER_BYTES` for what carries a caller's bytes (audio, exports):
    ``default-src 'none'; sandbox`` so a file that is also HTML never runs as a page;
  - :data:`API_DEFAULT` for everything else (JSON, errors, 404s): nothing may load.

* ``Strict-Transport-Security: max-age=31536000; includeSubDomains`` on responses served over
  HTTPS (``serve --ssl-certfile``, or a TLS proxy with uvicorn's ``--proxy-headers``).

The same pass over the response headers also adds what inner layers decided but no longer
add on their own send channel (each wrapper of ``send`` costs a call per message on every
request): the ``RateLimit-*`` fields of the request's rate-limit decision
(:mod:`callannotate.api.ratelimit`, left in ``scope["state"]``) and the complete ``Allow``
list of a ``405`` (:func:`callannotate.api.methods.allowed_methods`).

:func:`install_cors` adds Starlette's ``CORSMiddleware`` only when ``api.cors_origins`` lists
origins; without it, browsers keep the same-origin policy (no ``Access-Control-*`` header).
"""

from __future__ import annotations

import secrets
from base64 import b64encode
from functools import lru_cache
from hashlib import sha256

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callannotate.api.methods import allowed_methods
from callannotate.config import ApiSettings
from callannotate.security.ratelimit import Decision

#: ``scope["state"]`` key of the request's allowed rate-limit decision (set by
#: ``callannotate.api.ratelimit.enforce_rate_limits``).
STATE_RATELIMIT_DECISION = "ratelimit_decision"

HSTS = "max-age=31536000; includeSubDomains"

_FRAMING = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
API_DEFAULT = f"default-src 'none'; {_FRAMING}"
USER_BYTES = f"default-src 'none'; {_FRAMING}; sandbox"
# {script} is filled with the report script's hash (see report_page_policy).
_REPORT_TEMPLATE = (
    "default-src 'none'; script-src {script}; style-src 'unsafe-inline'; "
    f"img-src 'self' data:; media-src 'self'; {_FRAMING}"
)
# {nonce} is filled per request; without a nonce no inline script runs.
_DOCS_TEMPLATE = (
    "default-src 'none'; script-src 'self'{nonce}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    f"{_FRAMING}"
)
REPORT_PAGE = "report"
DOCS_PAGE = "docs"

# Path template of the route that answered -> the policy it gets (API_DEFAULT otherwise).
ROUTE_POLICIES: dict[str, str] = {
    "/jobs/{job_id}/report": REPORT_PAGE,
    "/jobs/{job_id}/audio": USER_BYTES,
    "/jobs/{job_id}/export": USER_BYTES,
    "/jobs/{job_id}/exports/{export_id}/file": USER_BYTES,
    "/docs": DOCS_PAGE,
    "/docs/oauth2-redirect": DOCS_PAGE,
    "/redoc": DOCS_PAGE,
}

_NONCE_KEY = "csp_nonce"


def csp_nonce(request: Request) -> str:
    """A fresh nonce for this request's inline scripts; the page's CSP allows it."""
    state = request.scope.setdefault("state", {})
    nonce = state.get(_NONCE_KEY)
    if not isinstance(nonce, str):
        nonce = secrets.token_urlsafe(18)
        state[_NONCE_KEY] = nonce
    return nonce


def script_hash(source: str) -> str:
    """The CSP source allowing an inline ``<script>`` whose text is exactly ``source``."""
    return "'sha256-" + b64encode(sha256(source.encode("utf-8")).digest()).decode() + "'"


@lru_cache(maxsize=1)
def report_page_policy() -> str:
    """The report page's CSP: its inline scripts by hash (they are fixed text)."""
    from callannotate.reports.html import inline_scripts

    hashes = " ".join(script_hash(s) for s in inline_scripts()) or "'none'"
    return _REPORT_TEMPLATE.format(script=hashes)


def policy_for(scope: Scope) -> str:
    """The CSP for the response to ``scope`` (after routing: the route is in the scope)."""
    route = scope.get("route")
    name = ROUTE_POLICIES.get(getattr(route, "path", ""), API_DEFAULT)
    if name == REPORT_PAGE:
        return report_page_policy()
    if name == DOCS_PAGE:
        nonce = scope.get("state", {}).get(_NONCE_KEY)
        return _DOCS_TEMPLATE.format(nonce=f" 'nonce-{nonce}'" if nonce else "")
    return name


_STATIC: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_OWNED = frozenset(
    {name for name, _ in _STATIC} | {b"content-security-policy", b"strict-transport-security"}
)
_HSTS_HEADER = (b"strict-transport-security", HSTS.encode("ascii"))
# The headers added to every response of a fixed policy (all but the pages'), built once.
_FIXED_TAILS: dict[str, tuple[tuple[bytes, bytes], ...]] = {
    policy: (*_STATIC, (b"content-security-policy", policy.encode("ascii")))
    for policy in (API_DEFAULT, USER_BYTES)
}
_ROUTE_TAILS: dict[str, tuple[tuple[bytes, bytes], ...]] = {
    path: _FIXED_TAILS[name] for path, name in ROUTE_POLICIES.items() if name in _FIXED_TAILS
}
_DEFAULT_TAIL = _FIXED_TAILS[API_DEFAULT]


def _security_tail(scope: Scope) -> tuple[tuple[bytes, bytes], ...]:
    """The security headers of the response to ``scope`` (without HSTS)."""
    route = scope.get("route")
    path = getattr(route, "path", None) if route is not None else None
    if path is None:
        return _DEFAULT_TAIL
    tail = _ROUTE_TAILS.get(path)
    if tail is not None:
        return tail
    if path not in ROUTE_POLICIES:
        return _DEFAULT_TAIL
    return (*_STATIC, (b"content-security-policy", policy_for(scope).encode("ascii")))


def response_headers(scope: Scope, message: Message) -> list[tuple[bytes, bytes]]:
    """The headers of ``message`` (an ``http.response.start``) as sent: the security headers
    replacing any set inside, ``RateLimit-*`` of the request's decision unless a route or
    error set them, and the full ``Allow`` list on a ``405``."""
    status = message["status"]
    allow = allowed_methods(scope) if status == 405 else None
    state = scope.get("state")
    decision: Decision | None = state.get(STATE_RATELIMIT_DECISION) if state else None
    headers: list[tuple[bytes, bytes]] = []
    has_limit = False
    for header in message.get("headers", ()):
        name = header[0].lower()
        if name in _OWNED or (allow and name == b"allow"):
            continue
        if name == b"ratelimit-limit":
            has_limit = True
        headers.append(header)
    if decision is not None and not has_limit:
        headers.extend(decision.header_pairs())
    if allow:
        headers.append((b"allow", ", ".join(allow).encode("ascii")))
    headers.extend(_security_tail(scope))
    if scope.get("scheme") == "https":
        headers.append(_HSTS_HEADER)
    return headers


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding the headers of the module doc to every HTTP response
    (:func:`response_headers`).

    The security headers it owns replace any a route or an inner middleware set, so there is
    one source of truth (:data:`ROUTE_POLICIES`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = response_headers(scope, message)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# What a cross-origin page may send and read, when CORS is on.
CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-API-Key",
    "X-Request-ID",
    "Range",
    "If-Range",
]
CORS_EXPOSED_HEADERS = [
    "X-Request-ID",
    "Content-Disposition",
    "Content-Range",
    "Accept-Ranges",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Location",
]


def install_cors(app: FastAPI, api: ApiSettings) -> bool:
    """Add CORS for ``api.cors_origins`` (none: CORS stays off); whether it was added.

    Credentials (cookies) are not allowed: the API authenticates with bearer tokens and API
    keys, which a cross-origin page sends in a header it was allowed to send.
    """
    origins = [origin.strip().rstrip("/") for origin in api.cors_origins if origin.strip()]
    if not origins:
        return False
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=api.cors_max_age_s,
    )
    return True
