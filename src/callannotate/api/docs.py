"""``/docs`` (Swagger UI) and ``/redoc`` served from files installed with the service.

FastAPI's own pages load their scripts from a CDN, which an air-gapped host cannot reach and
which contradicts "runs offline". The assets come from the pinned ``fastapi-offline`` wheel
(Swagger UI 5 and Redoc 2 bundles) and are served under :data:`ASSETS_URL`.

:func:`install_docs` also finishes the OpenAPI document: an error response is always the
JSON error body, also on routes whose success is HTML or a file (``/report``, ``/audio``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from callannotate.api.headers import csp_nonce

ASSETS_URL = "/docs/assets"
ASSETS_PACKAGE = "fastapi_offline"
# Swagger UI asks validator.swagger.io to grade the schema unless told not to.
SWAGGER_PARAMETERS = {"validatorUrl": None}
REDOC_BUNDLE = "redoc.standalone.js"
# Redoc's sidebar footer loads its logo from a CDN: the page's CSP blocks it (a console error on
# every visit) and an air-gapped host cannot reach it. The bundle is served with that address
# replaced by a small image of our own, inline, which the policy allows (``img-src data:``).
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
LOCAL_LOGO = (
    b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    b"%3Crect width='16' height='16' rx='3' fill='%23546e7a'/%3E%3C/svg%3E"
)


def assets_dir() -> Path:
    """The folder of the installed Swagger UI / Redoc bundles."""
    return Path(str(files(ASSETS_PACKAGE) / "static"))


@lru_cache(maxsize=1)
def redoc_bundle() -> bytes:
    """The installed Redoc bundle with its one outside address replaced by :data:`LOCAL_LOGO`."""
    return (assets_dir() / REDOC_BUNDLE).read_bytes().replace(REDOC_CDN_LOGO, LOCAL_LOGO)


def json_error_bodies(schema: dict[str, Any]) -> dict[str, Any]:
    """Move error bodies documented under a route's own media type (``text/html`` for the
    report page) to ``application/json``, which is what the API sends."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if not str(code).startswith(("4", "5")):
                    continue
                for media in list(content):
                    ref = str(content[media].get("schema", {}).get("$ref", ""))
                    if media != "application/json" and ref.endswith("/ErrorBody"):
                        content["application/json"] = content.pop(media)
    return schema


def with_nonce(page: HTMLResponse, request: Request) -> HTMLResponse:
    """``page`` with this request's CSP nonce on its inline scripts (the page's CSP,
    :mod:`callannotate.api.headers`, runs no other inline script)."""
    html = bytes(page.body).decode("utf-8")
    html = html.replace("<script>", f'<script nonce="{csp_nonce(request)}">')
    return HTMLResponse(html, status_code=page.status_code)


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect, ``/redoc`` and their assets to ``app``.

    Create the app with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are absent.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    # Registered before the static mount, which would otherwise answer this path first.
    @app.get(f"{ASSETS_URL}/{REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = json_error_bodies(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
        return with_nonce(page, request)

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return with_nonce(get_swagger_ui_oauth2_redirect_html(), request)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_BUNDLE}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
