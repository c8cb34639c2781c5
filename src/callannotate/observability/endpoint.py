"""``GET /metrics`` on the API port: for a scraper holding the scrape token, never public.

* It answers only ``Authorization: Bearer <metrics.token>``: 404 when no token is configured
  (the route then does not exist for anyone), 401 for a missing or wrong token. The token is
  the scraper's own, separate from user authentication.
* It is served by :class:`~callannotate.observability.middleware.MetricsMiddleware` before
  routing, so the app's user authentication and rate limits (app-wide route dependencies)
  never see the scraper's token; request ids and security headers still apply (outer
  middlewares). It is not in the OpenAPI document.
* ``metrics.port`` > 0 starts a separate plain-HTTP listener on ``metrics.host`` (default
  127.0.0.1) in ``callannotate serve`` and ``callannotate worker``
  (:mod:`callannotate.observability.export`); reachability is the protection there.
"""

from __future__ import annotations

import hmac

import anyio
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from callannotate.api.errors import error_json
from callannotate.config import MetricsSettings, Settings
from callannotate.observability.metrics import CONTENT_TYPE, render

PATH = "/metrics"


def token_ok(settings: MetricsSettings, authorization: str | None) -> bool | None:
    """None: no token configured (endpoint off); else whether ``authorization`` carries it."""
    if settings.token is None or not settings.token.get_secret_value():
        return None
    expected = settings.token.get_secret_value()
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return None


async def serve_metrics(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``GET /metrics`` (see the module docstring)."""
    settings: Settings = scope["app"].state.settings
    allowed = token_ok(settings.metrics, _authorization(scope))
    response: Response
    if allowed is None:
        response = error_json(404, "not_found", "Not Found")
    elif not allowed:
        response = error_json(
            401,
            "unauthorized",
            "GET /metrics needs Authorization: Bearer <metrics.token>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    else:
        body = await anyio.to_thread.run_sync(render)  # the collector reads the queue folder
        response = Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
    await response(scope, receive, send)
