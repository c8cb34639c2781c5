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
from callannotate.pipeline.settings import STEPS

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
    """Every file a configured step loads is checked, each missing one named."""
    config = tmp_path / "models.yaml"
    config.write_text(
        f"vad:\n  path: {tmp_path / 'nowhere.onnx'}\n"
        "diarize:\n"
        "  segmentation:\n"
        "    package: callannotate\n"
        "    file: no/such/weights.bin\n"
        "sentiment:\n"
    )
    settings = Settings(data_dir=tmp_path, models_config=config)
    checks = check_models(settings)
    assert checks["models_config"] == "ok"
    assert "nowhere.onnx" in checks["model:vad"] and "missing" in checks["model:vad"]
    assert "diarize.segmentation" in checks["model:diarize"]
    assert "weights.bin" in checks["model:diarize"]
    assert checks["model:sentiment"] == "ok"  # no model files
    assert set(checks) == {"models_config", "model:vad", "model:diarize", "model:sentiment"}


async def _ready(settings: Settings) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/ready")


async def test_ready_503_names_a_transcription_model_that_does_not_exist(tmp_path: Path) -> None:
    """16.6: the old check guessed files from config keys and reported this file ready."""
    config = tmp_path / "models.yaml"
    config.write_text("transcription:\n  model: does-not-exist\n")
    settings = Settings(
        data_dir=tmp_path / "data", models_config=config, api=ApiSettings(embedded_workers=False)
    )
    response = await _ready(settings)
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"
    assert "does-not-exist" in response.json()["detail"]


async def test_ready_503_names_a_missing_own_whisper_folder(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(f"transcription:\n  path: {tmp_path / 'my-whisper'}\n")
    settings = Settings(
        data_dir=tmp_path / "data", models_config=config, api=ApiSettings(embedded_workers=False)
    )
    response = await _ready(settings)
    assert response.status_code == 503
    assert "model:transcription" in response.json()["detail"]
    assert "my-whisper" in response.json()["detail"]


def test_every_configured_file_present_is_ok(tmp_path: Path) -> None:
    """The shipped models file: each step's files (Whisper parts and tokenizer files, the
    streaming models, the count model, GE2E...) are installed with their digests."""
    checks = check_models(Settings(data_dir=tmp_path))
    assert checks == {"models_config": "ok", **{f"model:{s}": "ok" for s in STEPS}}


async def test_a_configuration_error_is_503_never_400(tmp_path: Path, audio_dir: Path) -> None:
    """A bad models file met by a request is the server's fault: 503 configuration_error
    (a bad `recognition` value used to come back as 400 Bad Request)."""
    config = tmp_path / "models.yaml"
    config.write_text("embedding: {}\nrecognition:\n  score_norm: tnorm\n")
    settings = Settings(
        data_dir=tmp_path / "data", models_config=config, api=ApiSettings(embedded_workers=False)
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with open(audio_dir / "tone.wav", "rb") as fh:
            response = await client.post(
                "/voices", data={"name": "X"}, files={"file": ("tone.wav", fh, "audio/wav")}
            )
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "configuration_error"
    assert "recognition: score_norm" in body["detail"]
    assert body["detail"].startswith("models.yaml: ")  # the file, not its server path
    assert str(tmp_path) not in body["detail"]


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
        assert ready.json()["checks"]["workers"] == "ok (1 of 1 workers ready)"
    # After the lifespan ends the executor is stopped.
    assert app.state.executor.alive() is False
