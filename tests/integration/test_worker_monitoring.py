"""Worker and queue monitoring end to end: ``serve --no-workers`` next to ``callannotate
worker`` (local executor), both real processes on one data folder.

The worker process's child writes a heartbeat: ``GET /admin/workers`` and ``callannotate
status`` list it with its pid and memory; a job (the real pipeline, cheap ``vad`` step only)
is counted in ``GET /admin/queues``; after SIGKILL of the whole worker its record is reported
lost once its heartbeat is older than ``jobs.worker_lost_after_s``, not before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from local_servers import callannotate_command, free_port

pytestmark = pytest.mark.integration

LOST_AFTER_S = 3.0
HEARTBEAT_S = 0.5


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*callannotate_command(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: killed with its children
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _poll(fetch: Any, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = fetch()
            if done(value):
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {value}")


def _status(url: str, env: dict[str, str], *extra: str) -> str:
    out = subprocess.run(
        [*callannotate_command(), "status", "--url", url, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_workers_and_queues_of_a_running_service(tmp_path: Path) -> None:
    audio = tmp_path / "tone.wav"
    t = np.arange(32000) / 16000
    sf.write(audio, 0.3 * np.sin(2 * np.pi * 440.0 * t), 16000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(tmp_path / "data"),
        "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
        "CALLANNOTATE_WORKERS__CONCURRENCY": "1",
        "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
        "CALLANNOTATE_JOBS__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "CALLANNOTATE_JOBS__WORKER_LOST_AFTER_S": str(LOST_AFTER_S),
    }
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    serve = ["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)]
    with (
        _process(serve, env, api_log),
        _process(["worker"], env, worker_log) as worker,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        body = _poll(
            lambda: client.get("/admin/workers").json(),
            lambda b: b.get("alive") == 1,
            120,
            f"the worker's heartbeat\n{_tail(api_log)}\n{_tail(worker_log)}",
        )
        [record] = body["workers"]
        children = {p.pid for p in psutil.Process(worker.pid).children()}
        assert record["pid"] in children  # the worker process of `callannotate worker`
        assert record["executor"] == "local" and record["concurrency"] == 1
        assert record["rss_bytes"] > 20 << 20 and not record["lost"]
        assert record["host"] == socket.gethostname()

        with open(audio, "rb") as fh:
            r = client.post("/jobs", files={"file": ("tone.wav", fh)}, data={"steps": "vad"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        _poll(
            lambda: client.get(f"/jobs/{job_id}").json()["state"],
            lambda s: s in ("completed", "failed"),
            300,
            f"the job\n{_tail(worker_log)}",
        )
        assert client.get(f"/jobs/{job_id}").json()["state"] == "completed"
        queues = client.get("/admin/queues").json()
        assert queues["queue"]["states"]["completed"] == 1 and queues["queue"]["depth"] == 0
        assert queues["queue"]["finished"][0]["completed"] == 1
        done = _poll(
            lambda: client.get("/admin/workers").json()["workers"][0],
            lambda w: w["jobs_done"] == 1,
            10,
            "the finished job in the heartbeat",
        )
        assert done["pid"] == record["pid"]

        table = _status(url, env)
        assert f"  {record['pid']}  " in table and "1 alive, 0 lost" in table
        assert "last 5.0 min" in table
        both = json.loads(_status(url, env, "--json"))
        assert both["workers"]["workers"][0]["pid"] == record["pid"]
        assert both["queues"]["queue"]["states"]["completed"] == 1

        os.killpg(worker.pid, signal.SIGKILL)  # the whole worker, its child too
        worker.wait(10)
        killed = time.monotonic()
        last_beat = client.get("/admin/workers").json()["workers"][0]
        assert not last_beat["lost"]  # not before the bound
        lost = _poll(
            lambda: client.get("/admin/workers").json(),
            lambda b: b["lost"] == 1,
            LOST_AFTER_S + 10,
            "the killed worker to count as lost",
        )
        took = time.monotonic() - killed
        assert took >= LOST_AFTER_S - HEARTBEAT_S - 0.5 - last_beat["heartbeat_age_s"]
        assert lost["workers"][0]["pid"] == record["pid"] and lost["alive"] == 0
        assert "LOST" in _status(url, env)
        print(f"killed worker reported lost {took:.1f} s after SIGKILL (bound {LOST_AFTER_S} s)")
