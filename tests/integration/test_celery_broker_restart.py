"""Chaos: the Celery **broker** (Redis) dies and comes back while Celery jobs run (issue 18).

A PRIVATE ``redis-server`` (tests/jobs/broker_testing.py: 127.0.0.1, a free port, started and
SIGKILLed by its pid; the shared Redis on 6379 is never touched) is the broker of a real
Celery worker subprocess (tests/jobs/celery_worker_main.py, the fake SleepRunner) and of the
API-side :class:`CeleryExecutor`. It runs with ``appendonly yes`` + ``appendfsync always``, as
a production broker must (docs/scale-out.md), so the messages of waiting jobs are on disk when
it is killed. Jobs are submitted; Redis is SIGKILLed while two run and the others wait; one
more job is submitted while it is down; it is started again on the same port and folder.

Every job completes exactly once (one "job completed" log line each), none stays in
processing, and a message left unacknowledged in the broker belongs to a finished job (its
late redelivery is a no-op). The recovery time is printed; benchmarks/executors.py measures it
for longer outages.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from broker_testing import DurableRedis
from celery_testing import celery_settings, celery_worker, unique_prefix, wait_for_final
from queue_testing import new_job

from callannotate.config import Settings
from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.executors.celery_app import ReconnectingConsumer, create_celery_app
from callannotate.jobs.models import JobState
from callannotate.jobs.service import JobService, build_job_service
from local_servers import running_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

JOBS = 8
DOWN_S = 3.0  # how long the broker stays dead


def test_broker_loss_settings(tmp_path: Path) -> None:
    """Reconnect forever, every second; running jobs are not cancelled on a broker loss."""
    from celery.utils.imports import symbol_by_name

    settings = celery_settings(tmp_path, unique_prefix())
    conf = create_celery_app(settings).conf
    assert conf.broker_connection_max_retries is None
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert symbol_by_name(conf.worker_consumer) is ReconnectingConsumer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DurableRedis]:
    with running_redis(DurableRedis(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
async def service(tmp_path: Path, broker: DurableRedis) -> AsyncIterator[JobService]:
    settings = celery_settings(tmp_path / "data", unique_prefix(), lease_seconds=1.0)
    settings.jobs.broker_url = broker.url
    svc = build_job_service(settings, embedded=True)
    assert isinstance(svc.executor, CeleryExecutor)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def _wait_ready(executor: CeleryExecutor, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not executor.readiness()[0]:
        assert time.monotonic() < deadline, f"Celery workers never ready: {executor.readiness()}"
        await asyncio.sleep(0.2)


def _completed_lines(settings: Settings) -> list[str]:
    lines: list[str] = []
    for log in Path(settings.data_dir).glob("worker-*.log"):
        text = log.read_text(errors="replace")
        lines += [line for line in text.splitlines() if "job completed" in line]
    return lines


async def test_broker_restart_every_job_completes_exactly_once(
    service: JobService, broker: DurableRedis
) -> None:
    executor = service.executor
    assert isinstance(executor, CeleryExecutor)
    queue, settings = service.queue, service.settings
    with celery_worker(settings, concurrency=2, steps=10, step_s=0.1):  # ~1 s jobs
        await _wait_ready(executor)
        ids = [new_job(queue).id for _ in range(JOBS)]
        for job_id in ids:
            executor.submit(job_id)
        while sum(queue.get(j).state == JobState.RUNNING for j in ids) < 2:
            await asyncio.sleep(0.02)

        broker.kill()  # two jobs running, the others waiting in the broker
        killed_at = time.monotonic()
        late = new_job(queue)  # submitted while the broker is down: kept, sent again later
        executor.submit(late.id)
        ids.append(late.id)
        await asyncio.sleep(DOWN_S)
        broker.start()
        restarted_at = time.monotonic()

        await asyncio.to_thread(wait_for_final, queue, ids, 120.0)
        recovered_s = time.monotonic() - restarted_at
        for job_id in ids:
            done = queue.get(job_id)
            assert done.state == JobState.COMPLETED, (job_id, done.state, done.error)
        assert queue.counts()["processing"] == 0
        unacked = broker.unacked_task_ids(settings.jobs.queue_prefix)
    completed = _completed_lines(settings)
    for job_id in ids:  # exactly once each
        assert sum(job_id in line for line in completed) == 1, job_id
    for task_id in unacked:  # the task id starts with the job id; redelivery is a no-op
        assert queue.get(task_id.split("-")[0]).state == JobState.COMPLETED
    print(
        f"broker down {restarted_at - killed_at:.1f} s; all {len(ids)} jobs completed "
        f"{recovered_s:.2f} s after the broker restart; {len(unacked)} stale unacked messages"
    )
