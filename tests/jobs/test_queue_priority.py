"""Job priority in the file queue: highest priority first, FIFO within a priority."""

from __future__ import annotations

import time
from pathlib import Path

from queue_testing import MakeJob

from callannotate.config import Settings
from callannotate.jobs.executors.celery_app import create_celery_app, message_priority
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState


def test_claim_takes_higher_priority_first_and_fifo_within_one(
    queue: FileQueue, make_job: MakeJob
) -> None:
    order = [5, 1, 9, 5, 9, 0, 5]
    jobs = []
    for priority in order:
        jobs.append(make_job(priority=priority))
        time.sleep(0.002)  # distinct created_at
    claimed = []
    while (job := queue.claim("w0")) is not None:
        claimed.append(job)
    expected = sorted(jobs, key=lambda j: (-j.priority, j.created_at))
    assert [j.id for j in claimed] == [j.id for j in expected]
    assert [j.priority for j in claimed] == [9, 9, 5, 5, 5, 1, 0]


def test_priority_survives_failure_and_retry(queue: FileQueue, make_job: MakeJob) -> None:
    low, high = make_job(priority=2), make_job(priority=8)
    assert queue.claim("w0") is not None  # high
    failed = queue.fail(high.id, "broke")
    assert failed.state == JobState.FAILED
    retried = queue.retry(high.id)
    assert retried.priority == 8
    claimed = queue.claim("w0")
    assert claimed is not None and claimed.id == high.id  # still ahead of the older low
    assert queue.get(low.id).state == JobState.QUEUED


def test_default_priority_is_five_and_old_records_read_as_default(
    queue: FileQueue, make_job: MakeJob
) -> None:
    job = make_job()
    assert job.priority == 5
    path = queue.job_dir(job.id) / "job.json"
    text = path.read_text().replace('"priority": 5,', "")
    assert '"priority"' not in text
    path.write_text(text)
    assert queue.get(job.id).priority == 5


def test_celery_sends_priorities_redis_serves_first(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert [message_priority(p) for p in (9, 5, 0)] == [0, 4, 9]  # Redis pops 0 first
    conf = create_celery_app(settings).conf
    assert conf.broker_transport_options["priority_steps"] == list(range(10))
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert conf.task_default_priority == message_priority(5)
