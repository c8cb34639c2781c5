"""Helpers for the Celery executor tests: a private broker namespace and real workers.

Each test gets its own Redis database number (``CALLANNOTATE_TEST_CELERY_DB``, default 13)
and a unique queue prefix (queues, broker keys and broadcast exchange all carry it), so
parallel runs and other tests on the same Redis do not collide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState

REDIS_HOST = os.environ.get("CALLANNOTATE_TEST_REDIS_HOST", "127.0.0.1:6379")
REDIS_DB = int(os.environ.get("CALLANNOTATE_TEST_CELERY_DB", "13"))
BROKER_URL = f"redis://{REDIS_HOST}/{REDIS_DB}"
WORKER_MAIN = Path(__file__).resolve().parent / "celery_worker_main.py"
FINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=1.0).ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Redis not reachable at {BROKER_URL}: {exc}")


def celery_settings(
    data_dir: Path, prefix: str, lease_seconds: float = 60.0, **workers: float
) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": data_dir,
            "queue": {"lease_seconds": lease_seconds},
            "jobs": {
                "executor": "celery",
                "broker_url": BROKER_URL,
                "queue_prefix": prefix,
                "ping_interval_s": 0.5,
            },
            "workers": {"preload_models": False, **workers},
            "events": {"backend": "memory"},
        }
    )


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CALLANNOTATE_DATA_DIR": str(settings.data_dir),
            "CALLANNOTATE_JOBS__EXECUTOR": "celery",
            "CALLANNOTATE_JOBS__BROKER_URL": settings.jobs.broker_url,
            "CALLANNOTATE_JOBS__QUEUE_PREFIX": settings.jobs.queue_prefix,
            "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
            "CALLANNOTATE_WORKERS__JOB_TIMEOUT_S": str(settings.workers.job_timeout_s),
            "CALLANNOTATE_WORKERS__TIMEOUT_GRACE_S": str(settings.workers.timeout_grace_s),
            "CALLANNOTATE_EVENTS__BACKEND": "memory",
            "CALLANNOTATE_JOBS__HEARTBEAT_INTERVAL_S": str(settings.jobs.heartbeat_interval_s),
        }
    )
    return env


@contextlib.contextmanager
def worker_process(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    *,
    stop: signal.Signals = signal.SIGQUIT,
    stop_timeout_s: float = 15.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker subprocess in its own session, its output in ``log``. On exit, if still
    running, it gets ``stop`` by its pid (``SIGQUIT``: cold shutdown; ``SIGTERM``: warm, the
    worker's own cleanup runs), and its process group a SIGKILL after ``stop_timeout_s``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(stop)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def celery_worker(
    settings: Settings,
    *,
    concurrency: int = 2,
    steps: int = 3,
    step_s: float = 0.02,
    runner: str = "sleep",
    queues: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` subprocess (prefork) running the fake SleepRunner;
    ``queues``: ``heavy``, ``light`` or both (default); ``env``: more variables. Stopped by a
    cold shutdown (SIGQUIT): the jobs of a test are done."""
    argv = [sys.executable, str(WORKER_MAIN), str(concurrency), str(steps), str(step_s)]
    with worker_process(
        [*argv, queues, runner],
        {**worker_env(settings), **(env or {})},
        settings.data_dir / f"worker-{uuid.uuid4().hex[:6]}.log",
    ) as proc:
        yield proc


def wait_for_final(queue: FileQueue, job_ids: list[str], timeout: float = 40.0) -> None:
    """Poll until every job is finished (the bound only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue.get(j).state in FINAL for j in job_ids):
            return
        time.sleep(0.05)
    states = {j: queue.get(j).state.value for j in job_ids}
    raise AssertionError(f"jobs not finished: {states}")


def cleanup_broker(prefix: str, broker_url: str = BROKER_URL) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


def unique_prefix() -> str:
    return f"catest-{uuid.uuid4().hex[:10]}"
