"""A real Prometheus scrapes a real ``callannotate serve`` that processes a job.

The server runs the real pipeline on the shared JFK recording in its worker process, a
WebSocket client follows the job, a live ``/stream`` session transcribes the same recording,
and a queued job is cancelled. Prometheus (Debian's ``prometheus`` binary, bound to
127.0.0.1 on a free port, storage in a temp folder, stopped by its pid) scrapes ``/metrics``
with the bearer token and evaluates the shipped alert rules. Then every expression of every
shipped Grafana dashboard must return data from Prometheus's query API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from local_servers import callannotate_command, free_port

pytestmark = [pytest.mark.integration, pytest.mark.models]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SHARED = Path(os.environ.get("CALLANNOTATE_SHARED_DATA", ROOT / ".." / "shared" / "data"))
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
TOKEN = "integration-scrape-token-42"
START_TIMEOUT_S = 600.0
JOB_TIMEOUT_S = 600.0


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing (apt-get install prometheus)")
        pytest.skip("prometheus not installed (Debian package prometheus)")
    return path


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop one process we started (by its pid; its own session when it made children)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "uvicorn.access" not in line)[-6000:]
    return ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if not JFK.is_file():
        pytest.skip(f"shared recording not found at {JFK}")
    data = tmp_path_factory.mktemp("metrics-server")
    log = data / "server.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CALLANNOTATE_DATA_DIR": str(data),
            "CALLANNOTATE_WORKERS__CONCURRENCY": "1",
            "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
            "CALLANNOTATE_METRICS__TOKEN": TOKEN,
        }
    )
    cmd = callannotate_command()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                workers = httpx.get(f"{url}/info", timeout=5).json()["workers"]
                if workers and all(w["alive"] and w["ready"] for w in workers):
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not ready:\n{_tail(log)}")
            time.sleep(0.5)
        yield url, log
    finally:
        _stop(process)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its worker processes, if any are left


@pytest.fixture(scope="module")
def prometheus(server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _prometheus()
    folder = tmp_path_factory.mktemp("prometheus")
    token = folder / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    target = server[0].removeprefix("http://")
    shutil.copytree(DEPLOY / "prometheus" / "rules", folder / "rules")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/callannotate.rules.yml"],
        "scrape_configs": [
            {
                "job_name": "callannotate",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(token)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready:\n{_tail(log)}")
            time.sleep(0.2)
        yield url
    finally:
        _stop(process)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_query(prom: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(prom, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _stream_jfk(url: str) -> dict[str, Any]:
    from websockets.sync.client import connect

    from callannotate.pipeline.audio.decode import decode

    pcm = (np.clip(decode(JFK).mono(), -1, 1) * 32767).astype("<i2").tobytes()
    with connect(url.replace("http://", "ws://") + "/stream", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "config", "format": "pcm_s16le", "language": "en"}))
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        for i in range(0, len(pcm), 32000):
            ws.send(pcm[i : i + 32000])
        ws.send(json.dumps({"type": "end"}))
        while True:
            msg = json.loads(ws.recv(timeout=300))
            if msg["type"] in ("final", "error"):
                return dict(msg)


def _dashboard_exprs() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["expr"]))
    return out


def test_prometheus_scrapes_a_working_service_and_every_dashboard_has_data(
    server: tuple[str, Path], prometheus: str
) -> None:
    from websockets.sync.client import connect

    url, log = server
    client = httpx.Client(base_url=url, timeout=60)
    # the endpoint is not public
    assert client.get("/metrics").status_code == 401
    # a WebSocket client follows the jobs (frames sent); a bad client id is closed (1008)
    stack = contextlib.ExitStack()
    events = stack.enter_context(
        connect(url.replace("http://", "ws://") + "/ws/metrics-test", open_timeout=30)
    )
    events.send(json.dumps({"type": "subscribe", "all": True}))
    with (
        contextlib.suppress(Exception),
        connect(url.replace("http://", "ws://") + "/ws/bad%20id") as bad,
    ):
        bad.recv(timeout=10)
    try:
        with open(JFK, "rb") as fh:
            job = client.post("/jobs", files={"file": ("jfk.flac", fh, "audio/flac")}).json()
        with open(JFK, "rb") as fh:
            extra = client.post("/jobs", files={"file": ("jfk.flac", fh, "audio/flac")}).json()
        # the second waits behind the first (one worker): cancelling it fails it (cancelled)
        assert client.delete(f"/jobs/{extra['id']}").status_code == 204
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (state := client.get(f"/jobs/{job['id']}").json()["state"]) not in (
            "completed",
            "failed",
        ):
            assert time.monotonic() < deadline, _tail(log)
            time.sleep(0.5)
        assert state == "completed", _tail(log)
        final = _stream_jfk(url)
        assert final["type"] == "final", final
        assert "country" in final["text"].lower()

        # Prometheus saw the completed job, its steps and the stream
        completed = _wait_query(prometheus, "sum(callannotate_jobs_completed_total)")
        assert completed and float(completed[0]["value"][1]) == 1.0
        cancelled = _wait_query(prometheus, 'callannotate_jobs_failed_total{reason="cancelled"}')
        assert cancelled and float(cancelled[0]["value"][1]) == 1.0
        steps = _wait_query(prometheus, "callannotate_pipeline_step_duration_seconds_count")
        assert {s["metric"]["step"] for s in steps} >= {"decode", "transcribe"}
        assert _wait_query(prometheus, "callannotate_stream_latency_seconds_count > 0")
        assert _wait_query(prometheus, "callannotate_model_load_seconds_count > 0")
        time.sleep(3)  # a few more scrapes so rate() has two samples of everything

        missing = []
        for dashboard, title, expr in _dashboard_exprs():
            if not _wait_query(prometheus, expr, timeout=10):
                missing.append(f"{dashboard} / {title}: {expr}")
        assert not missing, "expressions without data:\n" + "\n".join(missing)
        # no job id leaked into a label
        labels = httpx.get(f"{prometheus}/api/v1/labels", timeout=10).json()["data"]
        for name in labels:
            values = httpx.get(f"{prometheus}/api/v1/label/{name}/values", timeout=10).json()
            assert job["id"] not in values["data"], name
        # the shipped alert rules load and evaluate without errors
        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert rules and all(r.get("health") == "ok" for g in rules for r in g["rules"]), rules
    finally:
        stack.close()
        client.close()
