"""A job failing with a transient error in a real Celery worker is sent again with a backoff
(Celery's retry with a countdown) until it completes; every attempt is in ``Job.history``.
Real worker subprocess on the real Redis (a dedicated database and a unique queue prefix)."""

from __future__ import annotations

import asyncio
import sys
import time
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

from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.models import JobState
from callannotate.jobs.service import build_job_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_transient_failures_are_retried_with_backoff_until_the_job_completes(
    tmp_path: Path,
) -> None:
    redis_or_skip()
    prefix = unique_prefix()
    settings = celery_settings(tmp_path / "data", prefix)
    service = build_job_service(settings, embedded=True)
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    await service.start()
    try:
        with celery_worker(settings, concurrency=1, runner="flaky"):
            deadline = time.monotonic() + 30
            while not executor.readiness()[0]:
                assert time.monotonic() < deadline, executor.readiness()
                await asyncio.sleep(0.2)
            job = new_job(service.queue)
            executor.submit(job.id)
            await asyncio.to_thread(wait_for_final, service.queue, [job.id])
    finally:
        await service.stop()
        cleanup_broker(prefix)
    done = service.queue.get(job.id)
    assert done.state == JobState.COMPLETED and done.attempts == 3
    assert [a.outcome for a in done.history] == ["retried", "retried", "completed"]
    assert all("Input/output error" in (a.error or "") for a in done.history[:2])
