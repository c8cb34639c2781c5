"""``/ws/{client_id}`` on the real app (lifespan, FileQueue, event bus) through Starlette's
TestClient, and the API specification kept in sync with the OpenAPI schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from callannotate.api.deps import get_current_principal
from callannotate.api.ws import EventService
from callannotate.events.models import EventDraft
from callannotate.security.principal import Principal

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api-specification.md"


@pytest.fixture
def live(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:  # runs the lifespan: the event service starts
        yield client


def receive_until(ws: WebSocketTestSession, kind: str, limit: int = 50) -> list[dict[str, Any]]:
    """Frames up to and including the first of type ``kind``."""
    frames: list[dict[str, Any]] = []
    for _ in range(limit):
        frame: dict[str, Any] = ws.receive_json()
        frames.append(frame)
        if frame["type"] == kind:
            return frames
    raise AssertionError(f"no {kind!r} in {frames}")


def upload(client: TestClient, audio: Path) -> dict[str, Any]:
    with open(audio, "rb") as fh:
        response = client.post("/jobs", files={"file": (audio.name, fh, "audio/wav")})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def publish(app: FastAPI, job_id: str, kind: str, owner: str = "local", **data: Any) -> None:
    service: EventService = app.state.events
    service.bus.publish_threadsafe(EventDraft(type=kind, job_id=job_id, owner=owner, data=data))


def test_an_upload_is_announced_and_events_stream_live(
    app: FastAPI, live: TestClient, audio_dir: Path
) -> None:
    with live.websocket_connect("/ws/dashboard") as watcher:
        welcome = watcher.receive_json()
        assert welcome["type"] == "welcome" and welcome["client_id"] == "dashboard"
        watcher.send_json({"type": "subscribe", "all": True})
        assert watcher.receive_json() == {"type": "subscribed", "jobs": [], "all": True}

        job = upload(live, audio_dir / "tone.wav")
        queued = watcher.receive_json()
        assert queued["type"] == "job.queued" and queued["job_id"] == job["id"]
        assert queued["seq"] == 1 and queued["data"]["state"] == "queued"

        with live.websocket_connect("/ws/job-page") as page:
            page.receive_json()  # welcome
            page.send_json({"type": "subscribe", "jobs": [job["id"]]})
            frames = receive_until(page, "job.queued")  # the replay of what came before
            assert frames[0] == {"type": "subscribed", "jobs": [job["id"]], "all": False}
            publish(app, job["id"], "job.progress", step="transcribe", percent=40.0)
            for ws in (watcher, page):
                progress = ws.receive_json()
                assert progress["type"] == "job.progress" and progress["seq"] == 2
                assert progress["data"] == {"step": "transcribe", "percent": 40.0}


def test_retry_is_announced(app: FastAPI, live: TestClient, audio_dir: Path) -> None:
    job = upload(live, audio_dir / "tone.wav")
    app.state.queue.cancel(job["id"])  # queued -> cancelled, so it can be retried
    with live.websocket_connect("/ws/c") as ws:
        ws.receive_json()
        ws.send_json({"type": "subscribe", "jobs": [job["id"]]})
        receive_until(ws, "job.queued")
        assert live.post(f"/jobs/{job['id']}/retry").status_code == 202
        again = ws.receive_json()
        assert again["type"] == "job.queued" and again["seq"] == 2


def test_job_queued_is_on_the_bus_before_a_worker_can_claim_the_job(
    app: FastAPI, live: TestClient, audio_dir: Path
) -> None:
    """A worker in another process polls the queue folder: were the job claimable before
    ``job.queued`` is numbered, that worker's ``job.started`` could come first (it did in CI)."""
    queue = app.state.queue
    claimable: list[tuple[str, bool]] = []

    def listener(event: Any) -> None:
        if event.type == "job.queued":
            claimable.append((event.job_id, (queue.root / "incoming" / event.job_id).exists()))

    remove = app.state.events.bus.add_listener(listener)
    try:
        job = upload(live, audio_dir / "tone.wav")
        queue.cancel(job["id"])
        assert live.post(f"/jobs/{job['id']}/retry").status_code == 202
    finally:
        remove()
    assert claimable == [(job["id"], False), (job["id"], False)]  # upload, then retry


def test_unknown_and_foreign_jobs_get_errors_not_a_closed_socket(
    app: FastAPI, live: TestClient, audio_dir: Path
) -> None:
    job = upload(live, audio_dir / "tone.wav")  # owned by "local"
    app.dependency_overrides[get_current_principal] = lambda: Principal(id="bob")
    with live.websocket_connect("/ws/bob-1") as ws:
        ws.receive_json()
        ws.send_json({"type": "subscribe", "jobs": ["0" * 32, job["id"], "../etc"]})
        frames = receive_until(ws, "subscribed")
        assert [(f["type"], f.get("code")) for f in frames] == [
            ("error", "unknown_job"),
            ("error", "unknown_job"),  # another user's job: no existence leak
            ("error", "unknown_job"),
            ("subscribed", None),
        ]
        assert frames[-1]["jobs"] == []
        ws.send_json({"type": "subscribe", "all": True})
        receive_until(ws, "subscribed")
        publish(app, job["id"], "job.started")  # another user's job: never delivered
        ws.send_json({"type": "ping", "id": "p1"})
        assert ws.receive_json()["type"] == "pong"  # and nothing came before it


@pytest.mark.parametrize(
    ("path", "send", "code", "error"),
    [
        ("/ws/ok", lambda ws: ws.send_bytes(b"\x01\x02"), 1003, "unsupported_data"),
        ("/ws/ok", lambda ws: ws.send_text("hello"), 1007, "invalid_payload"),
        # issue 15.10: 60 kB of nesting was an unhandled RecursionError (close 1000)
        ("/ws/ok", lambda ws: ws.send_text("[" * 30000 + "]" * 30000), 1007, "invalid_payload"),
        ("/ws/ok", lambda ws: ws.send_text(" " * 65537), 1009, "message_too_big"),
        ("/ws/bad id!", None, 1008, None),
    ],
)
def test_malformed_frames_and_bad_client_ids_close_with_a_code(
    live: TestClient, path: str, send: Any, code: int, error: str | None
) -> None:
    with live.websocket_connect(path) as ws:
        if send is not None:
            ws.receive_json()
            send(ws)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["code"] == error, reply
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == code
        assert closed.value.reason


def test_the_websocket_route_is_mounted(app: FastAPI) -> None:
    assert app.url_path_for("job_events", client_id="tab-1") == "/ws/tab-1"


def test_api_specification_mentions_every_openapi_path(app: FastAPI) -> None:
    """docs/api-specification.md stays in sync: every REST path and the WebSocket appear."""
    text = SPEC.read_text(encoding="utf-8")
    schema = app.openapi()
    missing: list[str] = []
    for path, operations in schema["paths"].items():
        for method in operations:
            if method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                continue
            pattern = rf"`?{method.upper()}\s+{re.escape(path)}`?"
            if not re.search(pattern, text):
                missing.append(f"{method.upper()} {path}")
    assert "GET /ws/{client_id}" in text
    assert not missing, f"document these in {SPEC.name}: {missing}"
