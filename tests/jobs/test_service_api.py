"""The job service as the API wires it: callbacks through POST/GET /jobs, and /ready.

The app is the real one (``create_app``) with embedded worker processes running a fake runner
(``create_app(job_runner=...)``), so no models are needed; uploads are real audio files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from callback_receiver import SECRET, Receiver, serve_receiver
from fake_runners import SleepRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, CallbackSettings, Settings, WorkerSettings
from callannotate.jobs.executors.external import NO_EMBEDDED


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440.0 * t), 16000)
    return path


def app_settings(tmp_path: Path, *, embedded: bool, allowed: list[str] | None = None) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text("{}\n")
    settings = Settings(
        data_dir=tmp_path / "data",
        models_config=models,
        api=ApiSettings(embedded_workers=embedded),
        workers=WorkerSettings(concurrency=1),
        callbacks=CallbackSettings(
            secret=SecretStr(SECRET), allowed_hosts=allowed or [], backoff_initial_s=0.05
        ),
    )
    settings.queue.poll_interval = 0.05
    return settings


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
    ],
)
def test_submit_refuses_internal_callback_targets(tmp_path: Path, wav: Path, url: str) -> None:
    """15.7: an IP literal in a refused range is a 422 at submit; nothing is queued."""
    app = create_app(app_settings(tmp_path, embedded=False))
    with TestClient(app) as client, open(wav, "rb") as fh:
        response = client.post(
            "/jobs", files={"file": ("tone.wav", fh)}, data={"callback_url": url}
        )
        assert response.status_code == 422, response.text
        assert "private, loopback or link-local" in response.json()["detail"]
        assert client.get("/jobs").json()["total"] == 0


def test_allow_listed_callback_target_is_accepted(tmp_path: Path, wav: Path) -> None:
    app = create_app(app_settings(tmp_path, embedded=False, allowed=["10.0.0.0/8"]))
    with TestClient(app) as client, open(wav, "rb") as fh:
        response = client.post(
            "/jobs", files={"file": ("tone.wav", fh)}, data={"callback_url": "http://10.1.1.1/"}
        )
        assert response.status_code == 202, response.text


def test_callback_attempts_are_visible_in_get_job(
    tmp_path: Path, wav: Path, receiver: Receiver
) -> None:
    """16.1 end to end: upload with callback_url -> job runs -> signed POST -> attempts shown."""
    receiver.statuses = [500]
    settings = app_settings(tmp_path, embedded=True, allowed=["127.0.0.1"])
    app = create_app(settings, job_runner=SleepRunner())
    with TestClient(app) as client:
        with open(wav, "rb") as fh:
            response = client.post(
                "/jobs", files={"file": ("tone.wav", fh)}, data={"callback_url": receiver.url()}
            )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_for(lambda: len(client.get(f"/jobs/{job_id}").json()["callbacks"]) == 2)
        job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "completed"
    first, second = job["callbacks"]
    assert (first["status_code"], first["delivered"]) == (500, False)
    assert (second["status_code"], second["delivered"]) == (200, True)
    assert all(r["valid"] for r in receiver.requests)


def test_ready_waits_for_a_worker_with_loaded_models(tmp_path: Path) -> None:
    """15.12: /ready is 503 while the only worker is still loading its models, then 200."""
    settings = app_settings(tmp_path, embedded=True)
    app = create_app(settings, job_runner=SleepRunner(preload_s=3.0))
    with TestClient(app) as client:
        early = client.get("/ready")
        assert early.status_code == 503, early.text
        assert "no worker has loaded its models yet" in early.json()["detail"]
        wait_for(lambda: client.get("/ready").status_code == 200)
        assert client.get("/ready").json()["checks"]["workers"] == "ok (1 of 1 workers ready)"


def test_ready_without_embedded_workers_says_so(tmp_path: Path) -> None:
    app = create_app(app_settings(tmp_path, embedded=False))
    with TestClient(app) as client:
        response = client.get("/ready")
        assert response.status_code == 200, response.text
        assert response.json()["checks"]["workers"] == NO_EMBEDDED
