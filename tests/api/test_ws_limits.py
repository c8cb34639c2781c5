"""Both WebSockets under hostile or broken clients (issue 15): origin, idle, size, depth, caps.

* 15.2 a page from a foreign ``Origin`` cannot open ``/ws/{client_id}`` or ``/stream`` (the
  handshake is refused); the same origin, a listed origin and a client without ``Origin``
  can.
* 15.9 a ``/stream`` client that sends nothing for ``api.ws_idle_timeout_s`` is closed (1008).
  (``/ws`` closes a client that answers no ping with 4000: tests/events/test_session.py and
  tests/integration/test_ws_live.py.)
* 15.10 a text message nested too deep or not JSON gets an error and close 1007; one over
  ``api.ws_max_message_bytes`` gets an error and close 1009 (``/ws``: tests/api/test_ws.py).
* 15.8 a stream over ``stream.max_duration_s`` or ``stream.max_bytes`` gets
  ``stream_too_long`` and close 1009, and its recording is deleted.

Cases after the ``ready`` message load the streaming models (tiny.en and Silero VAD).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings, StreamSettings

DEEP = "[" * 30000 + "]" * 30000
ENDPOINTS = ["/ws/tab-1", "/stream"]


def make_client(tmp_path: Path, **api: Any) -> TestClient:
    stream = api.pop("stream", StreamSettings())
    settings = Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False, **api),
        stream=stream,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(
        tmp_path,
        allowed_origins=["https://dashboard.example:8443"],
        public_url="https://calls.example/annotate",
    ) as live:
        yield live


def opened(ws: WebSocketTestSession, path: str) -> bool:
    """Whether the server accepted and serves the socket (a first answer arrives)."""
    if path.startswith("/ws/"):
        return bool(ws.receive_json()["type"] == "welcome")
    ws.send_json({"type": "config", "format": "mp3"})  # refused config: answered, no model
    return bool(ws.receive_json()["error"] == "bad_request")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "origin",
    [
        None,  # not a browser: CLI, scripts
        "http://testserver",  # same origin: the Host header of the request
        "HTTP://TestServer:80",  # the same, spelled differently
        "https://dashboard.example:8443",  # in api.allowed_origins
        "https://calls.example",  # api.public_url's origin
    ],
)
def test_allowed_origins_open_the_socket(client: TestClient, path: str, origin: str | None) -> None:
    headers = {"origin": origin} if origin else {}
    with client.websocket_connect(path, headers=headers) as ws:
        assert opened(ws, path)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://testserver.evil.example",
        "http://testserver:8080",  # another port is another origin
        "https://dashboard.example",  # listed with port 8443 only
        "null",  # sandboxed frame, file: page
        "not a url",
    ],
)
def test_a_foreign_origin_is_refused_before_the_handshake(
    client: TestClient, path: str, origin: str
) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(path, headers={"origin": origin}),
    ):
        pass  # pragma: no cover - never accepted
    assert refused.value.code == 1008


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_wildcard_allows_every_origin(tmp_path: Path, path: str) -> None:
    with (
        make_client(tmp_path, allowed_origins=["*"]) as live,
        live.websocket_connect(path, headers={"origin": "https://anywhere.example"}) as ws,
    ):
        assert opened(ws, path)


def closed_with(ws: WebSocketTestSession) -> tuple[dict[str, Any], int]:
    """The error message the server sent last, and the close code that followed."""
    error = ws.receive_json()
    assert error["type"] == "error", error
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.reason
    return error, closed.value.code


@pytest.mark.parametrize(
    ("text", "error", "code"),
    [
        (DEEP, "invalid_payload", 1007),
        ("{not json", "invalid_payload", 1007),
        ('{"type": "config", "initial_prompt": "' + "x" * 70000 + '"}', "message_too_big", 1009),
    ],
)
def test_a_bad_config_message_is_refused_by_size_and_depth(
    client: TestClient, text: str, error: str, code: int
) -> None:
    with client.websocket_connect("/stream") as ws:
        ws.send_text(text)
        got, closed = closed_with(ws)
    assert (got["error"], closed) == (error, code)


def test_a_silent_client_is_closed_before_its_config(tmp_path: Path) -> None:
    with (
        make_client(tmp_path, ws_idle_timeout_s=0.3) as live,
        live.websocket_connect("/stream") as ws,
    ):
        error, code = closed_with(ws)
    assert (error["error"], code) == ("idle_timeout", 1008)


# ---------------------------------------------------------------------------- after "ready"
def start_stream(ws: WebSocketTestSession) -> None:
    ws.send_json({"type": "config", "format": "pcm_s16le", "language": "en"})
    ready = ws.receive_json()
    assert ready["type"] == "ready", ready


def recordings(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "data").rglob("stream-*.wav"))


def pcm_noise(seconds: float) -> bytes:
    samples = np.random.default_rng(1).normal(0, 1e-3, int(seconds * 16000))
    return (samples * 32767).astype("<i2").tobytes()


@pytest.mark.models
@pytest.mark.parametrize(
    ("text", "error", "code"),
    [
        (DEEP, "invalid_payload", 1007),
        ("[1, 2", "invalid_payload", 1007),
        ('{"type": "end", "x": "' + "y" * 70000 + '"}', "message_too_big", 1009),
    ],
)
def test_a_bad_text_message_mid_stream_is_refused(
    client: TestClient, tmp_path: Path, text: str, error: str, code: int
) -> None:
    with client.websocket_connect("/stream") as ws:
        start_stream(ws)
        ws.send_bytes(pcm_noise(0.5))
        ws.send_text(text)
        got, closed = closed_with(ws)
    assert (got["error"], closed) == (error, code)
    assert recordings(tmp_path) == []


@pytest.mark.models
def test_a_stream_that_goes_silent_is_closed_with_1008(tmp_path: Path) -> None:
    with (
        make_client(tmp_path, ws_idle_timeout_s=0.5) as live,
        live.websocket_connect("/stream") as ws,
    ):
        start_stream(ws)
        ws.send_bytes(pcm_noise(0.5))
        t0 = time.monotonic()
        error, code = closed_with(ws)
        waited = time.monotonic() - t0
    assert (error["error"], code) == ("idle_timeout", 1008)
    assert waited >= 0.4  # closed for being idle, not at once
    assert recordings(tmp_path) == []


@pytest.mark.models
@pytest.mark.parametrize(
    "stream",
    [StreamSettings(max_duration_s=2.0), StreamSettings(max_duration_s=3600.0, max_bytes=48000)],
    ids=["duration", "bytes"],
)
def test_a_stream_over_its_cap_is_closed_with_1009_and_its_recording_removed(
    tmp_path: Path, stream: StreamSettings
) -> None:
    with make_client(tmp_path, stream=stream) as live, live.websocket_connect("/stream") as ws:
        start_stream(ws)
        pcm = pcm_noise(5.0)
        for i in range(0, len(pcm), 16000):  # 0.5 s messages
            ws.send_bytes(pcm[i : i + 16000])
        while True:
            message = ws.receive_json()
            if message["type"] == "error":
                break
            assert message["type"] in ("partial", "committed"), message
        assert message["error"] == "stream_too_long"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009
    assert recordings(tmp_path) == []


@pytest.mark.models
def test_a_stream_under_its_cap_ends_normally(tmp_path: Path) -> None:
    with (
        make_client(tmp_path, stream=StreamSettings(max_duration_s=2.0)) as live,
        live.websocket_connect("/stream") as ws,
    ):
        start_stream(ws)
        ws.send_bytes(pcm_noise(1.5))
        ws.send_json({"type": "end"})
        while (message := ws.receive_json())["type"] != "final":
            assert message["type"] in ("partial", "committed"), message
    assert message["duration"] == pytest.approx(1.5)
