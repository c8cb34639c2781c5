"""``serve --processes N``: several API processes on one port (callannotate.api.processes).

The unit tests check the refusals and the extra processes' settings; the integration test runs
the real thing (``callannotate serve --processes 3`` with its embedded worker, a private
Redis as the event bus) and checks what an operator relies on: one port answers, a job
uploaded to whichever process is run by the first one and its events reach a WebSocket client
of whichever process, ``/metrics`` counts every process's requests, a killed extra process is
started again without losing the counts, and ``SIGTERM`` stops every process and removes the
metrics folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from callannotate.api.processes import extra_settings, processes_refusal
from callannotate.config import Settings
from local_servers import PrivateRedis, callannotate_command, free_port, running_redis


def _settings(**overrides: object) -> Settings:
    return Settings.model_validate(overrides)


def test_one_process_is_always_fine() -> None:
    assert processes_refusal(_settings()) is None


def test_several_processes_need_the_redis_event_bus() -> None:
    refusal = processes_refusal(_settings(api={"processes": 2}))
    assert refusal is not None and "events.backend 'redis'" in refusal


def test_several_processes_refuse_per_process_rate_limits() -> None:
    settings = _settings(
        api={"processes": 2}, events={"backend": "redis"}, rate_limits={"backend": "memory"}
    )
    refusal = processes_refusal(settings)
    assert refusal is not None and "rate_limits.backend" in refusal
    no_limits = _settings(
        api={"processes": 2},
        events={"backend": "redis"},
        rate_limits={"backend": "memory", "enabled": False},
    )
    assert processes_refusal(no_limits) is None
    assert processes_refusal(_settings(api={"processes": 2}, events={"backend": "redis"})) is None


def test_extra_processes_are_api_only_without_a_metrics_port() -> None:
    settings = _settings(api={"processes": 3, "port": 9001}, metrics={"port": 9100})
    extra = extra_settings(settings)
    assert extra.api.embedded_workers is False and extra.metrics.port == 0
    assert extra.api.port == 9001 and extra.api.processes == 3
    assert settings.api.embedded_workers is True and settings.metrics.port == 9100  # unchanged


def test_serve_refuses_several_processes_on_the_memory_bus(tmp_path: Path) -> None:
    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("CALLANNOTATE_EVENTS__BACKEND", None)
    done = subprocess.run(
        [*callannotate_command(), "serve", "--processes", "2", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "events.backend 'redis'" in done.stderr


# --------------------------------------------------------------------------- the real thing


def _api_pids(server: psutil.Process) -> set[int]:
    """The extra API processes: the server's children that listen (not the embedded worker,
    not multiprocessing's resource tracker)."""
    pids = set()
    for child in server.children():
        try:
            if any(c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")):
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"{what} not within {timeout} s:\n{tail}")


def _health_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer t0ken"}).text
    match = re.search(
        r'^callannotate_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)$',
        text,
        re.M,
    )
    return float(match.group(1)) if match else 0.0


async def _job_events(url: str, audio: Path) -> list[str]:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://")
    async with connect(f"{ws_url}/ws/processes-test") as ws:
        await ws.send(json.dumps({"type": "subscribe", "all": True}))
        while json.loads(await ws.recv()).get("type") != "subscribed":
            pass
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            with audio.open("rb") as fh:
                response = await client.post(
                    "/jobs", files={"file": ("tone.wav", fh)}, data={"steps": "vad"}
                )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        seen: list[str] = []
        while not seen or seen[-1] not in ("job.completed", "job.failed"):
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            if message.get("job_id") == job_id and message.get("type", "").startswith("job."):
                seen.append(message["type"])
        return seen


@pytest.mark.integration
def test_three_processes_share_one_port(tmp_path: Path) -> None:
    audio = tmp_path / "tone.wav"
    t = np.arange(32000) / 16000
    sf.write(audio, 0.3 * np.sin(2 * np.pi * 440.0 * t), 16000)
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with running_redis(PrivateRedis(tmp_path / "redis")) as redis_server:
        env = {
            **os.environ,
            "TMPDIR": str(temp),  # where the metrics folder is made
            "CALLANNOTATE_DATA_DIR": str(tmp_path / "data"),
            "CALLANNOTATE_EVENTS__BACKEND": "redis",
            "CALLANNOTATE_EVENTS__REDIS_URL": redis_server.url,
            "CALLANNOTATE_METRICS__TOKEN": "t0ken",
            "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
            "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
        }
        argv = ["serve", "--processes", "3", "--workers", "1", "--port", str(port), "--grace", "5"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*callannotate_command(), *argv], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            server = psutil.Process(proc.pid)
            _wait(lambda: len(_api_pids(server)) == 2, 60, "two extra API processes", log)
            _wait(lambda: _ok(f"{url}/ready"), 120, "/ready", log)
            folders = list(temp.glob("callannotate-api-metrics-*"))
            assert len(folders) == 1

            events = asyncio.run(_job_events(url, audio))  # run by the first process's worker
            assert events[0] == "job.queued" and events[-1] == "job.completed", events

            before = _health_count(url)
            for _ in range(30):  # new connections: spread over the processes by the kernel
                assert httpx.get(f"{url}/health").status_code == 200
            assert _health_count(url) == before + 30

            victim = min(_api_pids(server))
            os.kill(victim, signal.SIGKILL)
            _wait(
                lambda: len(_api_pids(server)) == 2 and victim not in _api_pids(server),
                30,
                "a new extra process",
                log,
            )
            assert _health_count(url) == before + 30  # the killed process's counts stay
            assert httpx.get(f"{url}/health").status_code == 200

            extras = _api_pids(server)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
            assert not any(psutil.pid_exists(pid) for pid in extras)
            assert not folders[0].exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False
