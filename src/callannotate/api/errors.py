"""One error body everywhere, and the request id that ties a response to its logs.

* :class:`RequestIdMiddleware` accepts the client's ``X-Request-ID`` (when well formed) or
  makes one, exposes it through :data:`~callannotate.observability.logging.request_id_var`,
  echoes it on every response, and turns unexpected exceptions into a 500 error body.
* :func:`install_error_handlers` maps domain errors, FastAPI's validation errors and
  Starlette's HTTP errors (404, 405, ...) to ``{"error", "detail", "request_id"}``.
* Every detail goes through :func:`safe_detail`: server paths under the data folder are
  replaced, and what a client sent is echoed at most :data:`MAX_ECHO` characters at a time.
* Security headers (``nosniff``, CSP, ...) are added by :mod:`callannotate.api.headers`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callannotate.api.schemas import ErrorBody
from callannotate.errors import CallAnnotateError
from callannotate.observability.logging import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_ECHO = 64
MAX_DETAIL = 1000
_LONG_TOKEN = re.compile(rf"\S{{{MAX_ECHO + 1},}}")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Invalid input"},
    429: {  # every route: rate limits (api/ratelimit.py)
        "model": ErrorBody,
        "description": "Over a rate limit: retry after Retry-After seconds (RateLimit-* headers)",
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in (
                ("Retry-After", "Seconds to wait before retrying"),
                ("RateLimit-Limit", "Bucket size (burst)"),
                ("RateLimit-Remaining", "Tokens left"),
                ("RateLimit-Reset", "Seconds until the bucket is full"),
                ("RateLimit-Policy", "Size and refill window of the bucket, and its budget"),
            )
        },
    },
    500: {"model": ErrorBody, "description": "Unexpected server error"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting :class:`ErrorBody` for ``codes``."""
    return {code: {"model": ErrorBody, "description": HTTPStatus(code).phrase} for code in codes}


def current_request_id() -> str:
    return request_id_var.get() or "-"


def error_json(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, request_id=current_request_id())
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _code_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def safe_detail(detail: str, data_dir: Path | None = None) -> str:
    """``detail`` fit for a client: no path under ``data_dir``, no echo longer than
    :data:`MAX_ECHO` characters (a 10,000-character job id comes back as 64 + "…"), at most
    :data:`MAX_DETAIL` characters in all."""
    if data_dir is not None:
        for root in {str(data_dir.resolve()), str(data_dir.absolute())}:
            if len(root) > 1:  # never rewrite every "/" of a data_dir of "/"
                detail = detail.replace(root, "<data>")
    detail = _LONG_TOKEN.sub(lambda m: _shorten(m.group(0), MAX_ECHO), detail)
    return _shorten(detail, MAX_DETAIL)


def _data_dir(request: Request) -> Path | None:
    settings = getattr(request.app.state, "settings", None)
    data_dir = getattr(settings, "data_dir", None)
    return data_dir if isinstance(data_dir, Path) else None


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallAnnotateError)
    if exc.status_code >= 500:
        logger.error("request failed: %s: %s", exc.code, exc.detail)
    detail = safe_detail(exc.detail, _data_dir(request))
    return error_json(exc.status_code, exc.code, detail, getattr(exc, "headers", None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    detail = safe_detail(detail, _data_dir(request))
    return error_json(exc.status_code, _code_for_status(exc.status_code), detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = safe_detail(_format_validation(exc), _data_dir(request))
    return error_json(422, "validation_error", detail)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refuses text holding NUL (SQLite stores it): the client's input, a 422."""
    assert isinstance(exc, DataError)
    if "NUL" not in str(exc.orig):
        raise exc  # another data error is a bug: the 500 of RequestIdMiddleware
    return error_json(422, "validation_error", "text cannot contain NUL (\\u0000) characters")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CallAnnotateError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _data_error)


class RequestIdMiddleware:
    """Pure ASGI middleware (cheap on the hot path) for request ids and unexpected errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                token = request_id_var.set(self._request_id(scope))
                try:
                    await self.app(scope, receive, send)
                finally:
                    request_id_var.reset(token)
                return
            await self.app(scope, receive, send)
            return

        request_id = self._request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode("ascii"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                headers.append(header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            logger.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_json(500, "internal_error", "an unexpected error occurred")
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = str(value.decode("latin-1")).strip()
                if _VALID_REQUEST_ID.match(candidate):
                    return candidate
                break
        return uuid.uuid4().hex
