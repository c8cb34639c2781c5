"""One ASGI middleware for the HTTP and WebSocket metrics of the API.

It also answers ``GET /metrics`` itself (:mod:`callannotate.observability.endpoint`).

HTTP: ``callannotate_http_requests_total{route,method,status}`` and
``callannotate_http_request_duration_seconds{route,method}``. ``route`` is the matched route's
template (``/jobs/{job_id}``), read from ``scope["route"]`` that the router sets, or
``unmatched``: a raw path never becomes a label. Methods outside the standard list count as
``other``.

WebSocket: connections open (gauge) and accepted, messages sent, and server close codes, by
route template, observed on the ``send`` channel, so the WebSocket code knows nothing of
metrics.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callannotate.observability.endpoint import PATH, serve_metrics
from callannotate.observability.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    METHODS,
    UNMATCHED_ROUTE,
    WS_ACCEPTED,
    WS_CLOSES,
    WS_CONNECTIONS,
    WS_FRAMES,
)


def route_template(scope: Scope) -> str:
    """The template of the route that handled ``scope`` (``unmatched`` when none did)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return scope.get("root_path", "") + path if scope.get("root_path") else path
    return UNMATCHED_ROUTE


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (route, method, status) -> its counter and histogram children: ``labels()`` takes a
        # lock and validates on every call; the key set is bounded by the label rules.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics_page = scope.get("path") == PATH and scope.get("method") in ("GET", "HEAD")
        try:
            if metrics_page:  # before routing: no user auth or rate limit sees the scrape token
                await serve_metrics(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = PATH if metrics_page else route_template(scope)
            method = scope.get("method", "GET")
            if method not in METHODS:
                method = "other"
            key = (route, method, str(status))
            children = self._children.get(key)
            if children is None:
                children = (HTTP_REQUESTS.labels(*key), HTTP_DURATION.labels(route, method))
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted_route: str | None = None
        frames: Any = None  # the connection's frame counter child, looked up once

        async def send_wrapper(message: Message) -> None:
            nonlocal accepted_route, frames
            kind = message["type"]
            await send(message)
            if kind == "websocket.send":
                if frames is None:
                    frames = WS_FRAMES.labels(accepted_route or route_template(scope))
                frames.inc()
            elif kind == "websocket.accept":
                accepted_route = route_template(scope)
                frames = WS_FRAMES.labels(accepted_route)
                WS_ACCEPTED.labels(accepted_route).inc()
                WS_CONNECTIONS.labels(accepted_route).inc()
            elif kind == "websocket.close":
                code = str(int(message.get("code", 1000)))
                WS_CLOSES.labels(accepted_route or route_template(scope), code).inc()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if accepted_route is not None:
                WS_CONNECTIONS.labels(accepted_route).dec()
