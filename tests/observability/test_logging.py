"""Structured JSON logs: ECS field names, request and job ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from callannotate.config import LogSettings
from callannotate.observability.logging import (
    configure_logging,
    job_context,
    redact_query,
    request_id_var,
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging(LogSettings(level="DEBUG", json_format=True), stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_lines_have_ecs_fields(stream: io.StringIO) -> None:
    logging.getLogger("callannotate.test").info("hello %s", "world", extra={"size_bytes": 12})
    (doc,) = lines(stream)
    assert doc["message"] == "hello world"
    assert doc["log.level"] == "info"
    assert doc["log.logger"] == "callannotate.test"
    assert doc["ecs.version"]
    assert doc["service.name"] == "callannotate"
    assert str(doc["@timestamp"]).endswith("Z")
    assert isinstance(doc["process.pid"], int)
    assert doc["labels.size_bytes"] == 12
    assert "job.id" not in doc and "http.request.id" not in doc


def test_job_and_request_ids(stream: io.StringIO) -> None:
    log = logging.getLogger("callannotate.test")
    token = request_id_var.set("req-1")
    try:
        with job_context("job-1"):
            log.warning("inside")
        log.warning("outside job")
    finally:
        request_id_var.reset(token)
    log.warning("explicit", extra={"job_id": "job-2"})
    inside, outside, explicit = lines(stream)
    assert inside["job.id"] == "job-1" and inside["http.request.id"] == "req-1"
    assert "job.id" not in outside and outside["http.request.id"] == "req-1"
    assert explicit["job.id"] == "job-2" and "http.request.id" not in explicit


def test_exceptions_are_structured(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("callannotate.test").exception("failed")
    (doc,) = lines(stream)
    assert doc["error.type"] == "ValueError"
    assert doc["error.message"] == "bad value"
    assert "Traceback" in str(doc["error.stack_trace"])


def test_configure_is_idempotent(stream: io.StringIO) -> None:
    configure_logging(LogSettings(level="INFO", json_format=False), stream=stream)
    configure_logging(LogSettings(level="INFO", json_format=False), stream=stream)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "callannotate"]
    assert len(ours) == 1
    with job_context("j9"):
        logging.getLogger("callannotate.test").info("plain")
    assert stream.getvalue().rstrip().endswith("plain [job=j9]")


def test_uvicorn_access_lines_get_http_fields(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/jobs?limit=2", "1.1", 200
    )
    (doc,) = lines(stream)
    assert doc["http.request.method"] == "GET"
    assert doc["url.path"] == "/jobs"
    assert doc["http.response.status_code"] == 200
    assert doc["client.address"] == "127.0.0.1"


def test_credentials_in_request_targets_are_redacted(stream: io.StringIO) -> None:
    access = logging.getLogger("uvicorn.access")
    target = "/jobs/j1/report?exp=99&kid=k1&sig=SIG-SECRET&access_token=TOKEN-SECRET"
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", target, "1.1", 200)
    # uvicorn names the WebSocket handshakes on its error logger, path and query included
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws/c1?acc%65ss_token=WS-SECRET"
    )
    text = stream.getvalue()
    for secret in ("SIG-SECRET", "TOKEN-SECRET", "WS-SECRET"):
        assert secret not in text
    access_doc, ws_doc = lines(stream)
    assert access_doc["message"] == (
        '127.0.0.1:5000 - "GET /jobs/j1/report?exp=99&kid=k1&sig=[redacted]'
        '&access_token=[redacted] HTTP/1.1" 200'
    )
    assert access_doc["url.path"] == "/jobs/j1/report"
    assert ws_doc["message"].endswith('"WebSocket /ws/c1?acc%65ss_token=[redacted]" [accepted]')


def test_plain_lines_are_redacted_too() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging(LogSettings(level="INFO", json_format=False), stream=buffer)
    try:
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "c", "GET", "/x?token=T-SECRET&limit=2", "1.1", 200
        )
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert "T-SECRET" not in buffer.getvalue()
    assert "/x?token=[redacted]&limit=2" in buffer.getvalue()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/jobs", "/jobs"),
        ("/jobs?", "/jobs?"),
        ("/jobs?limit=2&status=done", "/jobs?limit=2&status=done"),
        ("/a?SIG=x&sig", "/a?SIG=[redacted]&sig"),  # a bare name carries no value
        ("/a?api_key=k&key=&b=1", "/a?api_key=[redacted]&key=[redacted]&b=1"),
        ("/a?password=p%26q&x=%3Fsig%3Dy", "/a?password=[redacted]&x=%3Fsig%3Dy"),
    ],
)
def test_redact_query(target: str, expected: str) -> None:
    assert redact_query(target) == expected
