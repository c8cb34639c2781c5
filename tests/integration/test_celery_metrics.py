"""A real Celery worker serves the job metrics of all its prefork children on one port.

The API side is :class:`CeleryExecutor` on the real Redis (a private queue prefix on a
dedicated database, celery_testing.py); the worker is a real ``run_celery_worker`` subprocess
with ``metrics.port`` set (tests/observability/celery_metrics_worker.py: a fake runner that
reports model load times, step seconds and the recording's duration). The test scrapes the
port as Prometheus would, SIGKILLs a child that completed jobs and checks that its counts
stay, and that the worker's multiprocess folder is fresh at start and gone after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from celery_testing import (
    celery_settings,
    cleanup_broker,
    redis_or_skip,
    unique_prefix,
    wait_for_final,
    worker_env,
    worker_process,
)
from queue_testing import new_job

from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.models import JobState
from callannotate.jobs.service import JobService, build_job_service
from local_servers import callannotate_command, free_port

pytestmark = pytest.mark.integration

WORKER_MAIN = Path(__file__).resolve().parents[1] / "observability" / "celery_metrics_worker.py"
AUDIO_S = 12.0  # celery_metrics_worker.AUDIO_S
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[JobService]:
    redis_or_skip()
    prefix = unique_prefix()
    settings = celery_settings(tmp_path / "data", prefix)
    svc = build_job_service(settings, embedded=True)
    assert isinstance(svc.executor, CeleryExecutor)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        cleanup_broker(prefix)


@contextlib.contextmanager
def metrics_worker(
    service: JobService, port: int, tmp: Path, concurrency: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """celery_metrics_worker.py serving ``port``; stopped by a warm shutdown (SIGTERM), so the
    worker's own cleanup (its multiprocess folder in ``tmp``) runs."""
    settings = service.settings
    env = worker_env(settings)
    env["CALLANNOTATE_METRICS__PORT"] = str(port)
    env["TMPDIR"] = str(tmp)  # where the worker makes its multiprocess folder
    with worker_process(
        [sys.executable, str(WORKER_MAIN), str(concurrency), "0.2"],
        env,
        settings.data_dir / "worker.log",
        stop=signal.SIGTERM,
        stop_timeout_s=30,
    ) as proc:
        yield proc


def scrape(port: int) -> Samples:
    """Every sample of the worker's port: (name, sorted labels) -> value."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    text = response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_scrape(
    port: int, name: str, at_least: float, timeout: float = 60.0, **labels: str
) -> Samples:
    """Scrape until ``name{labels}`` reaches ``at_least`` (the bound only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            samples = await asyncio.to_thread(scrape, port)
            if value(samples, name, **labels) >= at_least:
                return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} never reached {at_least}")
        await asyncio.sleep(0.2)


async def test_celery_worker_serves_its_childrens_job_metrics(
    service: JobService, tmp_path: Path
) -> None:
    queue, executor = service.queue, service.executor
    assert isinstance(executor, CeleryExecutor)
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with metrics_worker(service, port, tmp) as proc:
        # both children loaded their "models" (2 steps each), counted in their own files
        await wait_scrape(port, "callannotate_model_load_seconds_count", 2, step="vad")
        load = "callannotate_model_load_seconds_count"
        samples = await wait_scrape(port, load, 2, step="transcribe")
        (folder,) = tmp.glob("callannotate-metrics-*")  # one fresh folder for this start
        assert value(samples, "callannotate_model_load_seconds_count", step="transcribe") == 2
        assert value(samples, "callannotate_model_load_seconds_sum", step="transcribe") == 1.0
        assert value(samples, "callannotate_build_info", version=_version()) == 1
        assert value(samples, "callannotate_sla_seconds", kind="job_duration") == 1800.0
        assert value(samples, "callannotate_jobs_completed_total") == 0

        jobs = [new_job(queue) for _ in range(4)]
        for job in jobs:
            executor.submit(job.id)
        await asyncio.to_thread(wait_for_final, queue, [j.id for j in jobs])
        assert all(queue.get(j.id).state == JobState.COMPLETED for j in jobs)
        pids = {json.loads(queue.read_result(j.id))["pid"] for j in jobs}

        # the duration is observed just after the completed counter: wait for it
        duration = "callannotate_job_duration_seconds_count"
        samples = await wait_scrape(port, duration, 4, outcome="completed")
        assert value(samples, "callannotate_jobs_completed_total") == 4
        assert value(samples, "callannotate_jobs_started_total") == 4
        assert value(samples, "callannotate_job_duration_seconds_count", outcome="completed") == 4
        assert value(samples, "callannotate_job_duration_seconds_sum", outcome="completed") >= 0.8
        assert (
            value(
                samples, "callannotate_job_duration_seconds_bucket", outcome="completed", le="+Inf"
            )
            == 4
        )
        assert (
            value(samples, "callannotate_pipeline_step_duration_seconds_count", step="decode") == 4
        )
        assert value(samples, "callannotate_job_real_time_factor_count") == 4
        assert value(samples, "callannotate_audio_processed_seconds_total") == 4 * AUDIO_S
        # merged over the children: no per-process series
        assert not any(dict(labels).get("pid") for _, labels in samples)

        # SIGKILL a child that completed jobs: its counts stay, its live gauges go
        victim = sorted(pids)[0]
        assert (folder / f"counter_{victim}.db").is_file()
        assert (folder / f"gauge_livesum_{victim}.db").is_file()  # the circuit breakers
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(victim):
            assert time.monotonic() < deadline, "the killed child was never reaped"
            await asyncio.sleep(0.1)
        samples = await asyncio.to_thread(scrape, port)
        assert value(samples, "callannotate_jobs_completed_total") == 4
        assert value(samples, "callannotate_job_duration_seconds_count", outcome="completed") == 4
        assert not (folder / f"gauge_livesum_{victim}.db").exists()
        assert (folder / f"counter_{victim}.db").is_file()

        # the pool replaces the child (its model load is counted) and the next job adds up
        await wait_scrape(port, "callannotate_model_load_seconds_count", 3, step="vad")
        more = new_job(queue)
        executor.submit(more.id)
        await asyncio.to_thread(wait_for_final, queue, [more.id])
        assert queue.get(more.id).state == JobState.COMPLETED
        samples = await wait_scrape(port, duration, 5, outcome="completed")
        assert value(samples, "callannotate_jobs_completed_total") == 5
        assert value(samples, "callannotate_job_duration_seconds_count", outcome="completed") == 5
    assert proc.returncode is not None
    assert not folder.exists()  # removed when the worker stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _version() -> str:
    from callannotate import __version__

    return __version__


async def test_cli_worker_metrics_port_flag(service: JobService, tmp_path: Path) -> None:
    """``callannotate worker --executor celery --metrics-port N`` serves the port (the real
    pipeline runner; models are not preloaded, so it starts at once)."""
    port = free_port()
    env = worker_env(service.settings)
    env["TMPDIR"] = str(tmp_path)
    cmd = callannotate_command()
    log = tmp_path / "cli-worker.log"
    with worker_process(
        [*cmd, "worker", "--executor", "celery", "--workers", "1", "--metrics-port", f"{port}"],
        env,
        log,
        stop=signal.SIGTERM,
        stop_timeout_s=30,
    ):
        samples = await wait_scrape(port, "callannotate_sla_seconds", 1, kind="queue_wait")
        assert value(samples, "callannotate_jobs_completed_total") == 0
        assert len(list(tmp_path.glob("callannotate-metrics-*"))) == 1
        # stopped once Celery runs (its SIGTERM handler: warm shutdown, cleanup runs)
        executor = service.executor
        assert isinstance(executor, CeleryExecutor)
        deadline = time.monotonic() + 60
        while not executor.readiness()[0]:
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            await asyncio.sleep(0.2)
    assert not list(tmp_path.glob("callannotate-metrics-*")), log.read_text(errors="replace")
