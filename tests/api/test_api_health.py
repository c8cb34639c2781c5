"""GET /health, /ready and /info against the real app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from callannotate import __version__
from callannotate.api.app import create_app
from callannotate.api.routes.health import check_models
from callannotate.config import ApiSettings, Settings, WorkerSettings
from callannotate.pipeline.registry import configured_steps

Upload = Callable[..., Awaitable[httpx.Response]]


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_models_queue_and_workers(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert checks["models_config"] == "ok"
    assert checks["queue"] == "ok"
    assert checks["workers"].startswith("ok")
    for step in configured_steps(settings):
        assert checks[f"model:{step}"] == "ok"


async def test_ready_503_when_models_config_missing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_config=tmp_path / "missing.yaml",
        api=ApiSettings(embedded_workers=False),
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == "not_ready"
    assert "missing.yaml" in body["detail"]


def test_check_models_reports_missing_files(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "vad:\n"
        "  class: callannotate.pipeline.audio.vad:VoiceActivityDetector\n"
        f"  path: {tmp_path / 'nowhere'}\n"
        "  file: model.onnx\n"
        "ghost:\n"
        "  class: callannotate.pipeline.does_not_exist:Ghost\n"
        "nested:\n"
        "  class: callannotate.pipeline.audio.vad:VoiceActivityDetector\n"
        "  segmentation:\n"
        "    package: callannotate\n"
        "    file: no/such/weights.bin\n"
    )
    settings = Settings(data_dir=tmp_path, models_config=config)
    checks = check_models(settings)
    assert checks["models_config"] == "ok"
    assert "missing" in checks["model:vad"]
    assert "not importable" in checks["model:ghost"]
    assert "weights.bin" in checks["model:nested"]


async def test_info_shows_version_models_and_queue(
    client: httpx.AsyncClient, upload: Upload, audio_dir: Path, settings: Settings
) -> None:
    await upload(audio_dir / "tone.wav")
    info = (await client.get("/info")).json()
    assert info["version"] == __version__
    assert info["embedded_workers"] is False
    assert info["workers"] == []
    assert info["queue"]["incoming"] == 1
    assert info["queue"]["completed"] == 0
    assert [m["step"] for m in info["models"]] == configured_steps(settings)
    assert all(m["processor"] for m in info["models"])


def test_embedded_workers_run_in_the_lifespan(tmp_path: Path) -> None:
    """With embedded workers the lifespan starts real worker processes and /info lists them."""
    settings = Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=True),
        workers=WorkerSettings(concurrency=1, preload_models=False),
    )
    app = create_app(settings)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        workers: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            workers = client.get("/info").json()["workers"]
            if workers and all(w["ready"] for w in workers):
                break
            time.sleep(0.2)
        assert len(workers) == 1
        assert workers[0]["alive"] is True
        assert isinstance(workers[0]["pid"], int)
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["workers"] == "ok"
    # After the lifespan ends the manager is stopped.
    assert app.state.manager.alive() is False
