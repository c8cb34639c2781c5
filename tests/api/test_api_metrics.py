"""GET /metrics: token-guarded, route templates as labels, WebSocket counters, own listener."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import WebSocketDisconnect
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, MetricsSettings, Settings
from callannotate.observability.export import MetricsListener
from local_servers import free_port

TOKEN = "scrape-token-0123456789"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_settings(tmp_path: Path, **metrics: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        metrics=MetricsSettings(**metrics),  # type: ignore[arg-type]
    )


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    with TestClient(create_app(make_settings(tmp_path, token=SecretStr(TOKEN)))) as c:
        yield c  # type: ignore[misc]


def test_metrics_without_a_token_setting_does_not_exist(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}x"],
)
def test_metrics_refuses_a_missing_or_wrong_token(client: TestClient, header: str | None) -> None:
    r = client.get("/metrics", headers={"Authorization": header} if header else {})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in r.text
    assert r.json()["error"] == "unauthorized"


def test_metrics_with_the_token(client: TestClient) -> None:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    # the scrape-time gauges of this app's queue are there
    assert {"callannotate_jobs", "callannotate_queue_depth", "callannotate_http_requests"} <= names


def test_http_requests_are_labelled_by_route_template(client: TestClient) -> None:
    job_id = "0" * 32
    route = "/jobs/{job_id}"
    before = value("callannotate_http_requests_total", route=route, method="GET", status="404")
    hist = value("callannotate_http_request_duration_seconds_count", route=route, method="GET")
    unmatched = value(
        "callannotate_http_requests_total", route="unmatched", method="GET", status="404"
    )
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get("/no/such/path/123").status_code == 404
    after = value("callannotate_http_requests_total", route=route, method="GET", status="404")
    assert after - before == 1
    assert (
        value("callannotate_http_request_duration_seconds_count", route=route, method="GET") - hist
        == 1
    )
    assert (
        value("callannotate_http_requests_total", route="unmatched", method="GET", status="404")
        - unmatched
        == 1
    )
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert job_id not in text and "/no/such/path" not in text


def _other_method_requests() -> float:
    return sum(
        s.value
        for f in REGISTRY.collect()
        if f.name == "callannotate_http_requests"
        for s in f.samples
        if s.name.endswith("_total") and s.labels.get("method") == "other"
    )


def test_odd_methods_are_one_label(client: TestClient) -> None:
    before = _other_method_requests()
    client.request("BREW", "/health")
    assert _other_method_requests() - before == 1
    assert "BREW" not in client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text


def test_websocket_connections_frames_and_closes(client: TestClient) -> None:
    route = "/ws/{client_id}"
    accepted = value("callannotate_websocket_connections_accepted_total", route=route)
    frames = value("callannotate_websocket_frames_sent_total", route=route)
    closes = value("callannotate_websocket_closes_total", route=route, code="1008")
    with client.websocket_connect("/ws/client-1") as ws:
        assert value("callannotate_websocket_connections", route=route) >= 1
        ws.send_json({"type": "ping"})
        ws.receive_json()
    with (
        client.websocket_connect("/ws/bad id!") as ws,  # refused client id: closed with 1008
        pytest.raises(WebSocketDisconnect),
    ):
        ws.receive_json()
    assert value("callannotate_websocket_connections_accepted_total", route=route) - accepted == 2
    assert value("callannotate_websocket_frames_sent_total", route=route) - frames >= 1
    assert value("callannotate_websocket_closes_total", route=route, code="1008") - closes == 1


def test_separate_metrics_listener_binds_localhost(tmp_path: Path) -> None:
    port = free_port()
    listener = MetricsListener(MetricsSettings(port=port))
    listener.start()
    try:
        assert listener.port == port
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert "callannotate_build_info" in r.text
    finally:
        listener.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_job_records_the_request_id_that_queued_it(client: TestClient, audio_dir: Path) -> None:
    with open(audio_dir / "tone.wav", "rb") as fh:
        r = client.post(
            "/jobs",
            files={"file": ("tone.wav", fh, "audio/wav")},
            headers={"X-Request-ID": "req-trace-42"},
        )
    assert r.status_code == 202, r.text
    assert r.json()["request_id"] == "req-trace-42"


@pytest.mark.auth
def test_metrics_uses_its_own_token_when_user_auth_is_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, token=SecretStr(TOKEN))
    assert settings.auth.enabled  # on by default; this test does not turn it off
    with TestClient(create_app(settings)) as c:
        assert c.get("/jobs").status_code == 401  # users need credentials ...
        ok = c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200  # ... the scraper needs only the scrape token
        assert c.get("/metrics").status_code == 401
