"""Job priority through Celery on the real Redis, and what a Celery worker child reports.

A real Celery worker subprocess with one child (fake SleepRunner, tests/jobs/celery_worker_main.py)
is kept busy with one job while seven jobs of mixed priority wait in Redis: they must start
highest priority first, oldest first within a priority. Meanwhile the broker figures of
``GET /admin/queues`` (:func:`broker_stats`) show them waiting per priority, and the child's
heartbeat record shows its pid, memory and the job it runs. Own queue prefix per test on the
dedicated test database (celery_testing.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
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
from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.heartbeat import WorkerRegistry
from callannotate.jobs.models import JobState
from callannotate.jobs.queue_stats import broker_stats
from callannotate.security.atrest import vault_for

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    redis_or_skip()
    prefix = unique_prefix()
    base = celery_settings(tmp_path / "data", prefix)
    yield base.model_copy(
        update={"jobs": base.jobs.model_copy(update={"heartbeat_interval_s": 0.5})}
    )
    cleanup_broker(prefix)


def _wait(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_waiting_jobs_start_by_priority_then_age(settings: Settings) -> None:
    queue = FileQueue(settings.queue_dir, settings.queue, vault_for(settings))
    executor = CeleryExecutor(settings, queue)  # submit only: no ping loop needed
    registry = WorkerRegistry.from_settings(settings)
    with celery_worker(settings, concurrency=1, steps=6, step_s=0.1):
        blocker = new_job(queue, priority=0)
        executor.submit(blocker.id)
        _wait(lambda: queue.get(blocker.id).state == JobState.RUNNING, "the blocker to start")

        waiting = []
        for priority in (1, 5, 9, 1, 9, 5, 0):
            job = new_job(queue, priority=priority)
            executor.submit(job.id)
            waiting.append(job)
            time.sleep(0.01)

        stats = broker_stats(settings, queue)
        heavy = next(q for q in stats.queues if q.kind == "heavy")
        light = next(q for q in stats.queues if q.kind == "light")
        assert heavy.depth == 7, stats
        assert heavy.by_priority == {9: 2, 5: 2, 1: 2, 0: 1}
        assert heavy.oldest_waiting_s is not None and heavy.oldest_waiting_s >= 0
        assert light.depth == 0 and stats.unacked == 1  # the blocker's message

        [child] = registry.snapshot()
        assert child.executor == "celery" and child.jobs_running == [blocker.id]
        assert child.rss_bytes > 20 << 20 and child.concurrency == 1
        prefix = settings.jobs.queue_prefix
        assert child.queues == [f"{prefix}.light", f"{prefix}.heavy"]  # light taken first

        ids = [blocker.id, *(j.id for j in waiting)]
        wait_for_final(queue, ids, timeout=60.0)

    done = [queue.get(j.id) for j in waiting]
    assert all(j.state == JobState.COMPLETED for j in done)
    started = sorted(done, key=lambda j: j.started_at or j.created_at)
    expected = sorted(waiting, key=lambda j: (-j.priority, j.created_at))
    assert [j.id for j in started] == [j.id for j in expected], [
        (j.priority, j.started_at) for j in started
    ]
    assert child.pid == json.loads(queue.read_result(blocker.id))["pid"]
