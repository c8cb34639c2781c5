"""``OPTIONS`` and ``405`` answers that list every method a path allows.

Starlette answers from the first route whose path matches, so ``/jobs`` (GET and POST are two
routes) announced only one method. :class:`AllowMiddleware` looks at every route: ``OPTIONS``
on a known path answers ``204`` with the full ``Allow`` header, and a ``405``'s ``Allow`` is
rewritten to the same list (by :class:`callannotate.api.headers.SecurityHeadersMiddleware`,
which already rewrites the headers of every response: one wrapper of ``send`` instead of two).
"""

from __future__ import annotations

from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(scope: Scope) -> list[str]:
    """Methods of every HTTP route of the app matching the request's path (empty if none).

    Each route is asked whether it would take the path with each method (included routers
    answer for their own routes); a mount (the docs' static files) serves GET and HEAD.
    """
    app = scope.get("app")
    router = getattr(app, "router", None)
    methods: set[str] = set()
    for route in getattr(router, "routes", ()):
        if isinstance(route, Mount):
            if route.matches({**scope, "method": "GET"})[0] != Match.NONE:
                methods.update(("GET", "HEAD"))
            continue
        for method in METHODS:
            if method not in methods and route.matches({**scope, "method": method})[0] == (
                Match.FULL
            ):
                methods.add(method)
    if not methods:
        return []
    methods.add("OPTIONS")
    return [m for m in (*METHODS, "OPTIONS") if m in methods]


class AllowMiddleware:
    """Pure ASGI middleware: answer ``OPTIONS`` (``405``'s ``Allow``: see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            methods = allowed_methods(scope)
            if methods:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [(b"allow", ", ".join(methods).encode("ascii"))],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)
