"""Executor ``celery`` end to end: real Celery worker subprocesses on the real Redis.

The API side is :class:`CeleryExecutor` (what ``build_job_service`` builds for
``jobs.executor: celery``); the workers run ``run_celery_worker`` with the fake
``SleepRunner`` (tests/jobs/celery_worker_main.py), so jobs are short and need no models.
Each test uses its own queue prefix on a dedicated Redis database (celery_testing.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from celery_testing import (
    celery_settings,
    celery_worker,
    cleanup_broker,
    redis_or_skip,
    unique_prefix,
    wait_for_final,
)
from queue_testing import new_job

from callannotate.config import Settings
from callannotate.jobs.executors.celery import CeleryExecutor, timeout_reason
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState
from callannotate.jobs.service import JobService, build_job_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[JobService]:
    redis_or_skip()
    prefix = unique_prefix()
    # a short lease: the API looks for jobs of lost workers every second
    settings = celery_settings(tmp_path / "data", prefix, lease_seconds=1.0)
    svc = build_job_service(settings, embedded=True)
    assert isinstance(svc.executor, CeleryExecutor)  # jobs.executor wins over embedded
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        cleanup_broker(prefix)


async def _wait_ready(executor: CeleryExecutor, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _ = executor.readiness()
        if ready:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Celery workers never ready: {executor.readiness()}")


def _log_lines(settings: Settings) -> list[str]:
    lines: list[str] = []
    for log in Path(settings.data_dir).glob("worker-*.log"):
        lines += log.read_text(errors="replace").splitlines()
    return lines


async def test_jobs_complete_exactly_once_cancel_and_redelivery(service: JobService) -> None:
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    queue, settings = service.queue, service.settings
    ready, why = executor.readiness()
    assert not ready and "Celery" in why
    with celery_worker(settings, concurrency=2, steps=10, step_s=0.05):
        await _wait_ready(executor)
        assert executor.readiness()[1].startswith("ok (1 Celery workers)")
        jobs = [new_job(queue) for _ in range(8)]
        for job in jobs:
            executor.submit(job.id)
        # cancel the last one while it waits behind the others: cancelled now, task revoked
        cancelled = await executor.cancel(jobs[-1].id)
        assert cancelled.state == JobState.CANCELLED
        ids = [j.id for j in jobs]
        await asyncio.to_thread(wait_for_final, queue, ids)
        pids = set()
        for job in jobs[:-1]:
            done = queue.get(job.id)
            assert done.state == JobState.COMPLETED and done.attempts == 1
            result = json.loads(queue.read_result(job.id))
            assert result["job_id"] == job.id
            pids.add(result["pid"])
        assert len(pids) == 2  # both children worked
        assert queue.get(jobs[-1].id).state == JobState.CANCELLED
        assert queue.counts()["processing"] == 0

        # a redelivered task for a finished job is a no-op
        record = (queue.job_dir(jobs[0].id) / "job.json").read_bytes()
        executor.submit(jobs[0].id)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any("no-op" in line and jobs[0].id in line for line in _log_lines(settings)):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the duplicate task was never processed")
        assert (queue.job_dir(jobs[0].id) / "job.json").read_bytes() == record

        # cancelling a running job stops it in its worker
        running = new_job(queue)
        executor.submit(running.id)
        while queue.get(running.id).state == JobState.QUEUED:
            await asyncio.sleep(0.02)
        flagged = await executor.cancel(running.id)
        assert flagged.state in (JobState.RUNNING, JobState.CANCELLED)
        await asyncio.to_thread(wait_for_final, queue, [running.id])
        assert queue.get(running.id).state == JobState.CANCELLED
        assert queue.counts()["processing"] == 0

    completed = [line for line in _log_lines(settings) if "job completed" in line]
    for job in jobs[:-1]:  # exactly once each
        assert sum(job.id in line for line in completed) == 1


async def test_killed_worker_child_job_completes_exactly_once(service: JobService) -> None:
    """Chaos: SIGKILL the child running a job; the task is redelivered, another child takes
    the job over through the run lock, and it completes once with a second attempt."""
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    queue, settings = service.queue, service.settings
    with celery_worker(settings, concurrency=2, steps=20, step_s=0.05):
        await _wait_ready(executor)
        jobs = [new_job(queue) for _ in range(6)]
        for job in jobs:
            executor.submit(job.id)
        victim = jobs[0]
        lease: dict[str, object] | None = None
        while lease is None:
            lease = queue.lease(victim.id)
            await asyncio.sleep(0.02)
        killed_at = time.monotonic()
        os.kill(int(str(lease["pid"])), signal.SIGKILL)
        await asyncio.to_thread(wait_for_final, queue, [j.id for j in jobs])
        recovery_s = time.monotonic() - killed_at
        for job in jobs:
            assert queue.get(job.id).state == JobState.COMPLETED
        assert queue.get(victim.id).attempts == 2
        assert queue.counts()["processing"] == 0
        print(f"recovery after SIGKILL of a worker child: {recovery_s:.2f} s (all 6 jobs done)")
    completed = [line for line in _log_lines(settings) if "job completed" in line]
    for job in jobs:
        assert sum(job.id in line for line in completed) == 1


async def test_killed_child_is_replaced_although_its_models_load_slowly(
    service: JobService,
) -> None:
    """A child that loads its models for longer than Celery's default wait for a new child
    (4 s) still replaces a killed one: before, Celery SIGKILLed every replacement while it
    loaded ("Timed out waiting for UP message"), so the worker never got its child back and
    the job of the killed child waited for ever (with real models: 12 s to load)."""
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    queue, settings = service.queue, service.settings
    with celery_worker(
        settings, concurrency=1, steps=20, step_s=0.1, runner="slowstart", env={"SLOW_START_S": "6"}
    ):
        await _wait_ready(executor)
        job = new_job(queue)
        executor.submit(job.id)
        lease: dict[str, object] | None = None
        while lease is None:
            lease = queue.lease(job.id)
            await asyncio.sleep(0.02)
        os.kill(int(str(lease["pid"])), signal.SIGKILL)
        await asyncio.to_thread(wait_for_final, queue, [job.id], 60.0)
        final = queue.get(job.id)
        assert final.state == JobState.COMPLETED
        assert final.attempts == 2
    assert not [line for line in _log_lines(settings) if "Timed out waiting for UP" in line]


async def test_killed_whole_worker_jobs_recovered_exactly_once(service: JobService) -> None:
    """Chaos: SIGKILL a whole Celery worker (main process and children) with jobs running
    and waiting, then start another: the API returns the orphaned jobs to the queue and sends
    them again; every job completes exactly once, none is left in processing."""
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    queue, settings = service.queue, service.settings
    jobs = [new_job(queue) for _ in range(8)]
    with celery_worker(settings, concurrency=2, steps=20, step_s=0.05) as first:
        await _wait_ready(executor)
        for job in jobs:
            executor.submit(job.id)
        while sum(queue.get(j.id).state == JobState.RUNNING for j in jobs) < 2:
            await asyncio.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
    with celery_worker(settings, concurrency=2, steps=20, step_s=0.05):
        await asyncio.to_thread(wait_for_final, queue, [j.id for j in jobs], 60.0)
        recovery_s = time.monotonic() - killed_at
    for job in jobs:
        assert queue.get(job.id).state == JobState.COMPLETED
    assert sum(queue.get(j.id).attempts == 2 for j in jobs) >= 2  # the two it was running
    assert queue.counts()["processing"] == 0
    completed = [line for line in _log_lines(settings) if "job completed" in line]
    for job in jobs:
        assert sum(job.id in line for line in completed) == 1
    print(f"whole worker SIGKILLed and restarted: 8 jobs done {recovery_s:.2f} s after the kill")


async def test_api_with_celery_executor_upload_to_result(tmp_path: Path) -> None:
    """The real app with ``jobs.executor: celery``: an upload is sent to a Celery worker and
    its result is served by the API; ``/ready`` follows the workers."""
    import wave

    import httpx
    import numpy as np

    from callannotate.api.app import create_app

    redis_or_skip()
    prefix = unique_prefix()
    settings = celery_settings(tmp_path / "data", prefix)
    app = create_app(settings)
    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
        w.writeframes((tone * 32767).astype(np.int16).tobytes())
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            executor = app.state.jobs.executor
            assert isinstance(executor, CeleryExecutor)
            with celery_worker(settings, concurrency=1):
                await _wait_ready(executor)
                ready = await client.get("/ready")
                assert ready.status_code == 200, ready.text
                with open(wav, "rb") as fh:
                    response = await client.post("/jobs", files={"file": ("a.wav", fh)})
                assert response.status_code == 202, response.text
                job_id = response.json()["id"]
                await asyncio.to_thread(wait_for_final, app.state.jobs.queue, [job_id])
                status = (await client.get(f"/jobs/{job_id}")).json()
                assert status["state"] == "completed", status
                result = await client.get(f"/jobs/{job_id}/result")
                assert result.status_code == 200
                assert result.json()["job_id"] == job_id  # written by the worker's runner
    finally:
        cleanup_broker(prefix)


async def test_time_limits_fail_the_job_with_reason_timeout(tmp_path: Path) -> None:
    """Soft limit: the job is interrupted and fails with reason ``timeout``; hard limit (a job
    that ignores the soft one): its child is killed and the worker fails it the same way."""
    redis_or_skip()
    prefix = unique_prefix()
    settings = celery_settings(tmp_path / "data", prefix, job_timeout_s=1.0, timeout_grace_s=1.0)
    queue = FileQueue(settings.queue_dir, settings.queue)
    executor = CeleryExecutor(settings, queue)
    try:
        for runner, killed in (("stubborn", False), ("deaf", True)):
            with celery_worker(settings, concurrency=1, runner=runner):
                job = new_job(queue)
                executor.submit(job.id)
                await asyncio.to_thread(wait_for_final, queue, [job.id], 30.0)
            final = queue.get(job.id)
            assert final.state == JobState.FAILED, runner
            assert final.error == timeout_reason(settings, killed=killed), final.error
            assert final.attempts == 1
            assert queue.counts()["processing"] == 0
    finally:
        cleanup_broker(prefix)
