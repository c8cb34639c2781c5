"""End to end: a real ``callannotate serve`` process with real worker processes.

1. Upload the shared call sample, poll the job to completion, fetch the annotation.
2. SIGKILL the worker process while it runs a job: the manager returns the job to the
   queue, a new worker runs it, and it completes exactly once (one result, attempt 2).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from callannotate.pipeline.types import Annotation
from local_servers import callannotate_command, free_port

pytestmark = pytest.mark.integration

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
SAMPLE = SHARED / "diarization" / "callsample" / "sample.wav"
START_TIMEOUT_S = 600.0  # workers load every model once (first run may export ONNX)
JOB_TIMEOUT_S = 900.0

needs_sample = pytest.mark.skipif(
    not SAMPLE.is_file(), reason=f"shared call sample not found at {SAMPLE}"
)


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)

    def log_tail(self, lines: int = 40) -> str:
        """The server log's last lines, without the access lines of our own polling."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").splitlines()
            kept = [line for line in text if '"log.logger": "uvicorn.access"' not in line]
            return "\n".join(kept[-lines:])
        return ""


def _wait_workers_ready(server: Server, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    workers: list[dict[str, Any]] = []
    with server.client() as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                workers = client.get("/info").json()["workers"]
                if workers and all(w["alive"] and w["ready"] for w in workers):
                    return workers
            time.sleep(0.5)
    raise AssertionError(f"workers not ready after {timeout}s: {workers}\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("server-data")
    log = data / "server.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CALLANNOTATE_DATA_DIR": str(data),
            "CALLANNOTATE_WORKERS__CONCURRENCY": "1",
            "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
            "CALLANNOTATE_LOG__JSON_FORMAT": "true",
        }
    )
    # Converted models are content-addressed: a cache shared between runs is safe.
    env.setdefault(
        "CALLANNOTATE_MODEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "model-cache")
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *callannotate_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    srv = Server(f"http://127.0.0.1:{port}", data, process, log)
    try:
        _wait_workers_ready(srv, START_TIMEOUT_S)
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # The worker processes end with the server (they are its children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _upload(client: httpx.Client, path: Path, **fields: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        response = client.post("/jobs", files={"file": (path.name, fh, "audio/wav")}, data=fields)
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(f"/jobs/{response.json()['id']}")
    job: dict[str, Any] = response.json()
    return job


def _wait_finished(server: Server, client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job not finished after {JOB_TIMEOUT_S}s: {job}\n{server.log_tail()}")


def _job_folders(server: Server, job_id: str) -> list[str]:
    queue = server.data_dir / "queue"
    return sorted(p.parent.name for p in queue.glob(f"*/{job_id}"))


@needs_sample
def test_upload_poll_and_fetch_result(server: Server) -> None:
    with server.client() as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        job = _upload(client, SAMPLE, language="en", num_speakers="2")
        assert job["audio"]["duration"] == pytest.approx(30.0, abs=0.05)
        finished = _wait_finished(server, client, job["id"])
        assert finished["state"] == "completed", f"{finished}\n{server.log_tail()}"
        assert finished["attempts"] == 1
        assert finished["started_at"] and finished["finished_at"]
        assert finished["progress"] and finished["progress"][0]["step"] == "decode"
        result = client.get(f"/jobs/{job['id']}/result")
        assert result.status_code == 200
        annotation = Annotation.model_validate_json(result.content)
        assert annotation.recording.filename == "sample.wav"
        assert annotation.recording.duration == pytest.approx(30.0, abs=0.05)
        assert annotation.recording.sample_rate == 16000
        assert any(step.name == "decode" and step.status == "done" for step in annotation.steps)
        listed = client.get("/jobs", params={"status": "completed"}).json()
        assert job["id"] in [j["id"] for j in listed["items"]]
    assert _job_folders(server, job["id"]) == ["completed"]


def test_the_log_never_shows_a_credential_from_a_url(server: Server) -> None:
    """uvicorn's access line names the path with its query: a token or a link's signature
    in it is redacted (observability/logging.py)."""
    with server.client() as client:
        client.get("/health", params={"access_token": "TOKEN-12345", "sig": "SIG-67890"})
        client.get("/jobs/none/report", params={"exp": "1", "kid": "k", "sig": "SIG-67890"})
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace")
        if "/jobs/none/report?" in text:
            break
        time.sleep(0.1)
    assert "/health?access_token=[redacted]&sig=[redacted]" in text
    assert "/jobs/none/report?exp=1&kid=k&sig=[redacted]" in text
    assert "TOKEN-12345" not in text and "SIG-67890" not in text


def _long_recording(folder: Path, minutes: float) -> Path:
    """The call sample repeated to ``minutes`` so a job runs long enough to be killed."""
    target = folder / "long-call.wav"
    with wave.open(str(SAMPLE), "rb") as src:
        params = src.getparams()
        frames = src.readframes(src.getnframes())
    repeats = max(1, int(minutes * 60 / (params.nframes / params.framerate)))
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        for _ in range(repeats):
            dst.writeframes(frames)
    return target


@needs_sample
def test_sigkilled_worker_job_completes_exactly_once(server: Server, tmp_path: Path) -> None:
    recording = _long_recording(tmp_path, minutes=3)
    with server.client() as client:
        workers = _wait_workers_ready(server, START_TIMEOUT_S)
        restarts_before = workers[0]["restarts"]
        victim_pid: int | None = None
        job: dict[str, Any] = {}
        # A job may finish before we see it running on a fast machine: try a few uploads.
        for _attempt in range(3):
            job = _upload(client, recording, steps="preprocess,vad")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and victim_pid is None:
                for worker in client.get("/info").json()["workers"]:
                    if worker["job_id"] == job["id"] and worker["pid"]:
                        victim_pid = int(worker["pid"])
                        break
                else:
                    if client.get(f"/jobs/{job['id']}").json()["state"] not in (
                        "queued",
                        "running",
                    ):
                        break  # missed it: already finished
                    time.sleep(0.01)
            if victim_pid is not None:
                break
        assert victim_pid is not None, "never saw the job running on a worker"
        assert victim_pid != server.process.pid
        os.kill(victim_pid, signal.SIGKILL)

        finished = _wait_finished(server, client, job["id"])
        assert finished["state"] == "completed", f"{finished}\n{server.log_tail()}"
        assert finished["attempts"] == 2  # the killed attempt and the one that completed
        result = client.get(f"/jobs/{job['id']}/result")
        assert result.status_code == 200
        Annotation.model_validate_json(result.content)

        workers = _wait_workers_ready(server, START_TIMEOUT_S)
        assert workers[0]["pid"] != victim_pid  # a new worker process took over
        assert workers[0]["restarts"] == restarts_before + 1
        completed = client.get("/jobs", params={"status": "completed", "limit": 500}).json()
        assert [j["id"] for j in completed["items"]].count(job["id"]) == 1
        active = client.get("/jobs", params={"status": "queued,running"}).json()
        assert job["id"] not in [j["id"] for j in active["items"]]
    # Exactly one copy of the job, in completed, with one result file.
    assert _job_folders(server, job["id"]) == ["completed"]
    results = list((server.data_dir / "queue").glob(f"*/{job['id']}/result.json"))
    assert len(results) == 1
