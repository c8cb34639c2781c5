"""16.2: a standalone ``callannotate worker`` publishes its job events on the shared bus.

Two real processes on one data folder and the real Redis: ``callannotate serve --no-workers``
(the API, with the WebSocket) and ``callannotate worker`` (the only process running jobs).
A WebSocket client of the API subscribed to every job must see ``job.queued`` (published by
the API) and ``job.started``, ``job.progress`` and ``job.completed`` (published by the
worker). The job runs the real pipeline with the cheap ``vad`` step only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from local_servers import callannotate_command, free_port

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EXPECTED = ("job.queued", "job.started", "job.progress", "job.completed")


def _redis_available() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def needs_redis() -> None:
    if not _redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI but not reachable at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*callannotate_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


async def _events_of_one_job(url: str, ws_url: str, audio: Path, logs: list[Path]) -> list[dict]:
    from websockets.asyncio.client import connect

    seen: list[dict] = []
    async with connect(f"{ws_url}/ws/worker-events-test") as ws:
        await ws.send(json.dumps({"type": "subscribe", "all": True}))
        while json.loads(await ws.recv()).get("type") != "subscribed":
            pass
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            with open(audio, "rb") as fh:
                response = await client.post(
                    "/jobs", files={"file": ("tone.wav", fh)}, data={"steps": "vad"}
                )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 300
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"events so far: {seen}\n" + "\n".join(map(_tail, logs))
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=remaining))
            except TimeoutError:
                continue
            if message.get("job_id") != job_id or not message.get("type", "").startswith("job."):
                continue
            seen.append(message)
            if message["type"] in ("job.completed", "job.failed"):
                return seen


def test_standalone_worker_events_reach_api_websocket_clients(tmp_path: Path) -> None:
    audio = tmp_path / "tone.wav"
    t = np.arange(32000) / 16000
    sf.write(audio, 0.3 * np.sin(2 * np.pi * 440.0 * t), 16000)
    port = free_port()
    env = {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(tmp_path / "data"),
        "CALLANNOTATE_EVENTS__BACKEND": "redis",
        "CALLANNOTATE_EVENTS__REDIS_URL": REDIS_URL,
        "CALLANNOTATE_EVENTS__REDIS_PREFIX": f"test-worker-events-{uuid.uuid4().hex[:12]}",
        "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
        "CALLANNOTATE_WORKERS__CONCURRENCY": "1",
        "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
    }
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    serve = ["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)]
    with _process(serve, env, api_log) as api, _process(["worker"], env, worker_log) as worker:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert api.poll() is None, f"API exited:\n{_tail(api_log)}"
            assert worker.poll() is None, f"worker exited:\n{_tail(worker_log)}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=5.0).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"API not ready:\n{_tail(api_log)}"
            time.sleep(0.2)
        events = asyncio.run(
            _events_of_one_job(url, f"ws://127.0.0.1:{port}", audio, [api_log, worker_log])
        )
        types = [e["type"] for e in events]
        assert types[-1] == "job.completed", events
        for expected in EXPECTED:
            assert expected in types, f"{expected} missing from {types}"
        assert types.index("job.queued") < types.index("job.started") < types.index("job.completed")
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)  # one numbering for both processes' events
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
