"""uvicorn's own 400s (a request it cannot parse) carry the JSON error body (issue 15.16)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from callannotate.api import protocol
from callannotate.api.protocol import HTTP_PROTOCOL, JsonErrorH11Protocol
from local_servers import free_port

PROTOCOLS = [JsonErrorH11Protocol, HTTP_PROTOCOL]


def _app() -> Starlette:
    async def ok(_request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", ok)])


@pytest.fixture(params=PROTOCOLS, ids=lambda cls: cls.__name__)
def server_port(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app(), host="127.0.0.1", port=port, log_config=None, http=request.param
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "header", "chunk"],
)
def test_unparseable_request_gets_the_json_error_body(server_port: int, raw: bytes) -> None:
    response = _exchange(server_port, raw)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), response[:200]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "error": "bad_request",
        "detail": protocol.BAD_REQUEST_DETAIL,
        "request_id": "-",
    }


def test_valid_requests_still_work(server_port: int) -> None:
    response = _exchange(server_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"ok")
