"""Structured JSON logs with ECS-style field names.

Every line is one JSON object such as::

    {"@timestamp": "2026-11-24T08:15:31.123Z", "log.level": "info", "message": "job queued",
     "log.logger": "callannotate.api.routes.jobs", "ecs.version": "8.11.0",
     "service.name": "callannotate", "process.pid": 4242,
     "http.request.id": "5f0c...", "trace.id": "5f0c...", "job.id": "j-..."}

The request id and the job id come from context variables (:data:`request_id_var`,
:data:`job_id_var`) set by the API middleware and by job runners (:func:`job_context`; a
worker running a job also sets the id of the request that queued it, :func:`request_context`),
or from ``extra={"job_id": ...}`` on a single call. Audio content and tokens are never logged:
uvicorn's access and WebSocket lines name the request's path with its query, so the values of
credential parameters in it (:data:`SECRET_PARAMS`: ``?access_token=`` on the WebSockets, a
signed link's ``sig``) are replaced by ``[redacted]`` before any line is written
(:func:`redact_query`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from callannotate.config import LogSettings

ECS_VERSION = "8.11.0"
SERVICE_NAME = "callannotate"

request_id_var: ContextVar[str | None] = ContextVar("callannotate_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("callannotate_job_id", default=None)

# Attributes every LogRecord has; anything else passed through ``extra=`` is a custom field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}
_SKIPPED = frozenset({"request_id", "job_id", "color_message"})

# Query parameters whose values never reach a log line or an audit record (``sig``: a signed
# report link, reports/links.py; ``access_token``: the WebSockets' token).
SECRET_PARAMS = frozenset({"access_token", "token", "key", "api_key", "password", "secret", "sig"})
REDACTED = "[redacted]"


def is_secret_param(name: str) -> bool:
    """Whether the query parameter ``name`` carries a credential."""
    return name.lower() in SECRET_PARAMS


def redact_query(target: str) -> str:
    """``target`` (a path with its query, as a server logs it) with the value of every
    credential parameter replaced by ``[redacted]``; anything without a query unchanged."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    items = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        items.append(f"{name}={REDACTED}" if eq and is_secret_param(unquote_plus(name)) else item)
    return f"{path}?{'&'.join(items)}"


class RedactQueryFilter(logging.Filter):
    """Redacts credential parameters in the request targets of uvicorn's lines (the access
    line's path and the WebSocket lines' path are ``%s`` arguments; the message is built
    from them only when formatted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn") and isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


@contextlib.contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Tag every log line written inside the block with ``http.request.id`` and ``trace.id``
    (a worker running a job queued by that request); ``None`` leaves things as they are."""
    if not request_id:
        yield
        return
    token = request_id_var.set(str(request_id)[:128])
    try:
        yield
    finally:
        request_id_var.reset(token)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line written inside the block with ``job.id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def _json_default(value: Any) -> str:
    return str(value)


def _access_fields(doc: dict[str, Any], args: tuple[Any, ...]) -> None:
    """ECS HTTP fields from uvicorn's access record (client, method, path, version, status)."""
    if len(args) != 5:
        return
    client, method, path, version, status = args
    doc["client.address"] = str(client).rsplit(":", 1)[0]
    doc["http.request.method"] = str(method)
    doc["url.path"] = str(path).split("?", 1)[0]
    doc["http.version"] = str(version)
    with contextlib.suppress(TypeError, ValueError):
        doc["http.response.status_code"] = int(status)


class EcsJsonFormatter(logging.Formatter):
    """Formats records as one-line JSON objects with ECS field names."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        doc: dict[str, Any] = {
            "@timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "log.level": record.levelname.lower(),
            "message": record.getMessage(),
            "ecs.version": ECS_VERSION,
            "log.logger": record.name,
            "service.name": SERVICE_NAME,
            "process.pid": record.process,
            "process.thread.name": record.threadName,
            "log.origin.function": record.funcName,
            "log.origin.file.line": record.lineno,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            doc["http.request.id"] = request_id
            doc["trace.id"] = request_id  # one search finds the request and its job's work
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        if job_id:
            doc["job.id"] = job_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            _access_fields(doc, record.args)
        if record.exc_info and record.exc_info[0] is not None:
            doc["error.type"] = record.exc_info[0].__name__
            doc["error.message"] = str(record.exc_info[1])
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["error.stack_trace"] = record.exc_text
        for key, value in record.__dict__.items():
            if key in _SKIPPED or key in _RECORD_ATTRS or key.startswith("_"):
                continue
            doc[f"labels.{key}" if "." not in key else key] = value
        return json.dumps(doc, default=_json_default, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Human-readable lines for terminals, still showing the request and job ids."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = []
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        if job_id:
            tags.append(f"job={job_id}")
        if request_id:
            tags.append(f"request={request_id}")
        return f"{line} [{' '.join(tags)}]" if tags else line


_HANDLER_NAME = "callannotate"


def configure_logging(settings: LogSettings | None = None, *, stream: Any = None) -> None:
    """Install one handler on the root logger (replacing a previous one of ours).

    Idempotent: calling it again (for example in a spawned worker process) does not add
    duplicate handlers. ``uvicorn`` loggers propagate to the root and share the format.
    """
    settings = settings or LogSettings()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactQueryFilter())
    handler.setFormatter(EcsJsonFormatter() if settings.json_format else PlainFormatter())
    root.addHandler(handler)
    level = os.environ.get("CALLANNOTATE_LOG_LEVEL_OVERRIDE") or settings.level
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
        uv.disabled = False
        uv.setLevel(logging.NOTSET)  # the root's level governs
