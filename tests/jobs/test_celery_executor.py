"""Executor ``celery``: the job side in this process (no broker) and the app's settings.

The real workers on the real Redis are in tests/integration/test_celery_workers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from fake_runners import FailingRunner, SleepRunner
from queue_testing import new_job

from callannotate.config import Settings
from callannotate.jobs.events import JobEvent
from callannotate.jobs.executors.celery import JobHost, timeout_reason
from callannotate.jobs.executors.celery_app import (
    RUN_JOB,
    create_celery_app,
    heavy_queue,
    light_queue,
    visibility_timeout_s,
)
from callannotate.jobs.filequeue import LOCK_FILE, FileQueue
from callannotate.jobs.fsutil import try_lock, unlock
from callannotate.jobs.models import JobState


def _settings(tmp_path: Path, **workers: object) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path,
            "jobs": {"executor": "celery", "queue_prefix": "t1"},
            "workers": {"preload_models": False, **workers},
            "events": {"backend": "memory"},
        }
    )


def test_app_delivery_semantics(tmp_path: Path) -> None:
    settings = _settings(tmp_path, job_timeout_s=120.0, timeout_grace_s=10.0)
    conf = create_celery_app(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit == 120.0
    assert conf.task_time_limit == 130.0
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility == visibility_timeout_s(settings) > 130.0
    assert {q.name for q in conf.task_queues} == {"t1.heavy", "t1.light"}
    assert conf.task_routes[RUN_JOB]["queue"] == heavy_queue(settings) == "t1.heavy"
    assert light_queue(settings) == "t1.light"


def test_claim_job_takes_the_given_job_once(queue: FileQueue) -> None:
    first = new_job(queue)
    second = new_job(queue)
    claimed = queue.claim_job(second.id, "w1")
    assert claimed is not None and claimed.id == second.id and claimed.attempts == 1
    assert queue.get(second.id).state == JobState.RUNNING
    assert queue.get(first.id).state == JobState.QUEUED  # not the oldest: the given one
    # a second delivery while it runs (here or in another process) is a no-op
    assert queue.claim_job(second.id, "w2") is None
    other = FileQueue(queue.root, queue.settings)
    assert other.claim_job(second.id, "w3") is None
    queue.complete(second.id, b"{}")
    assert queue.claim_job(second.id, "w1") is None  # finished: no-op
    assert queue.claim_job("0" * 32, "w1") is None  # unknown: no-op


def test_claim_job_takes_over_an_orphan(queue: FileQueue) -> None:
    job = new_job(queue)
    runner = FileQueue(queue.root, queue.settings)
    assert runner.claim_job(job.id, "dead") is not None
    # the runner "dies": its run lock is released by the kernel
    runner.forget(job.id)
    again = queue.claim_job(job.id, "w2")
    assert again is not None and again.attempts == 2 and again.worker == "w2"
    assert queue.get(job.id).state == JobState.RUNNING


def test_claim_job_finalises_cancelled_and_exhausted_orphans(queue: FileQueue) -> None:
    cancelled = new_job(queue)
    runner = FileQueue(queue.root, queue.settings)
    assert runner.claim_job(cancelled.id, "dead") is not None
    queue.cancel(cancelled.id)  # flagged: a live runner holds it
    runner.forget(cancelled.id)
    assert queue.claim_job(cancelled.id, "w2") is None
    assert queue.get(cancelled.id).state == JobState.CANCELLED

    exhausted = new_job(queue)
    for _ in range(queue.settings.max_attempts):
        assert runner.claim_job(exhausted.id, "dead") is not None
        runner.forget(exhausted.id)
    assert queue.claim_job(exhausted.id, "w2") is None
    final = queue.get(exhausted.id)
    assert final.state == JobState.FAILED and "gave up" in (final.error or "")


def _host(tmp_path: Path, runner: object, **workers: object) -> tuple[JobHost, list[str]]:
    settings = _settings(tmp_path, **workers)
    host = JobHost(settings, runner)  # type: ignore[arg-type]
    seen: list[str] = []
    host.announcer.bus.on_job_event = lambda e: seen.append(e.type)  # type: ignore[method-assign]
    return host, seen


def _recorded_events(host: JobHost) -> list[JobEvent]:
    """The events ``host`` announces from now on, still passed on to its bus (metrics)."""
    seen: list[JobEvent] = []
    forward = host.announcer.bus.on_job_event

    def record(event: JobEvent) -> None:
        seen.append(event)
        forward(event)

    host.announcer.bus.on_job_event = record  # type: ignore[method-assign]
    return seen


def test_job_host_runs_the_job_function_and_redelivery_is_a_noop(tmp_path: Path) -> None:
    host, seen = _host(tmp_path, SleepRunner(steps=2, step_s=0.0))
    try:
        queue = host.announcer.queue
        job = new_job(queue)
        assert host.run(job.id) == "completed"
        done = queue.get(job.id)
        assert done.state == JobState.COMPLETED and done.attempts == 1
        assert [(p.step, p.status, p.percent) for p in done.progress] == [("decode", "done", 100.0)]
        assert b'"pid": %d' % os.getpid() in queue.read_result(job.id)
        assert seen[0] == "job.started" and seen[-1] == "job.completed"
        assert "job.progress" in seen
        before = (queue.job_dir(job.id) / "job.json").read_bytes()
        seen.clear()
        assert host.run(job.id) == "skipped"  # a redelivered task for a finished job
        assert seen == []
        assert (queue.job_dir(job.id) / "job.json").read_bytes() == before
    finally:
        host.close()


def test_job_host_failures_and_timeout(tmp_path: Path) -> None:
    host, seen = _host(tmp_path, FailingRunner())
    try:
        queue = host.announcer.queue
        job = new_job(queue)
        assert host.run(job.id) == "failed"
        assert "the fake step broke" in (queue.get(job.id).error or "")
        assert seen[-1] == "job.failed"
    finally:
        host.close()
    host, seen = _host(tmp_path / "t", SleepRunner(steps=5, step_s=0.05), job_timeout_s=0.01)
    try:
        queue = host.announcer.queue
        job = new_job(queue)
        assert host.run(job.id) == "failed"
        final = queue.get(job.id)
        assert final.error == timeout_reason(host.settings, killed=False)
        assert final.error.startswith("timeout:")
    finally:
        host.close()


def test_job_host_stops_a_job_cancelled_elsewhere(tmp_path: Path) -> None:
    class CancelInside(SleepRunner):
        def run(self, request, ctx):  # type: ignore[no-untyped-def]
            FileQueue(queue.root, queue.settings).cancel(request.job_id)  # another process
            return super().run(request, ctx)

    host, seen = _host(tmp_path, CancelInside(steps=30, step_s=0.05))
    try:
        queue = host.announcer.queue
        job = new_job(queue)
        assert host.run(job.id) == "cancelled"
        assert queue.get(job.id).state == JobState.CANCELLED
        fd = try_lock(queue.job_dir(job.id) / LOCK_FILE)
        assert fd is not None  # the run lock was released
        unlock(fd)
        assert seen[-1] == "job.failed"
    finally:
        host.close()


def test_submit_while_the_broker_is_down_is_kept_and_sent_later(tmp_path: Path) -> None:
    """The upload never fails on the broker: the id is kept and sent once Redis answers."""
    import redis
    from celery_testing import BROKER_URL, cleanup_broker, redis_or_skip, unique_prefix

    from callannotate.jobs.executors.celery import CeleryExecutor, build_app
    from callannotate.jobs.executors.celery_app import message_priority

    redis_or_skip()
    prefix = unique_prefix()
    down = _settings(tmp_path).model_copy(
        update={
            "jobs": _settings(tmp_path).jobs.model_copy(
                update={"broker_url": "redis://127.0.0.1:1/0", "queue_prefix": prefix}
            )
        }
    )
    queue = FileQueue(down.queue_dir, down.queue)
    executor = CeleryExecutor(down, queue)
    job = new_job(queue)
    executor.submit(job.id)  # no exception
    assert executor._unsent == {job.id}
    # the broker is back
    up = down.model_copy(update={"jobs": down.jobs.model_copy(update={"broker_url": BROKER_URL})})
    executor.app = build_app(up)
    try:
        executor._resend()
        assert executor._unsent == set()
        client = redis.Redis.from_url(BROKER_URL)
        # one Redis list per priority step: the default priority 5 is sent as step 4
        key = f"{prefix}:{prefix}.heavy\x06\x16{message_priority(job.priority)}"
        assert client.llen(key) == 1
        assert job.id in client.lindex(key, 0).decode()
    finally:
        cleanup_broker(prefix)
    # a job no longer queued is dropped from the ids to send
    executor._unsent.add(job.id)
    queue.cancel(job.id)
    executor._resend()
    assert executor._unsent == set()


def test_a_transient_failure_is_announced_and_counted_as_a_retry(tmp_path: Path) -> None:
    """A child's ``job.queued`` after a transient error has the documented ``attempts`` and
    ``reason`` (it had ``error`` instead), so ``callannotate_jobs_retried_total`` of a Celery
    worker counts it: it stayed 0 however many jobs were retried."""
    from flaky_runners import FlakyIORunner
    from prometheus_client import REGISTRY

    def retried() -> float:
        sample = REGISTRY.get_sample_value("callannotate_jobs_retried_total", {"reason": "error"})
        return sample or 0.0

    settings = _settings(tmp_path)
    host = JobHost(settings, FlakyIORunner(tmp_path / "flaky", failures=1))
    seen = _recorded_events(host)
    before = retried()
    try:
        job = new_job(host.announcer.queue)
        assert host.run(job.id) == "queued"
    finally:
        host.close()
    queued = [e for e in seen if e.type == "job.queued"]
    assert len(queued) == 1
    assert queued[0].data["state"] == "queued" and queued[0].data["attempts"] == 1
    assert "Input/output error" in queued[0].data["reason"]
    assert retried() - before == 1


def test_workers_silent_for_the_forget_period_are_forgotten(tmp_path: Path) -> None:
    """A restarted Celery worker is a new node name; the old one is shown lost, then
    forgotten after ``jobs.worker_forget_after_s`` (it stayed for ever: ``/info`` listed every
    worker ever started and ``callannotate_workers_configured`` kept growing)."""
    from callannotate.jobs.executors.celery import CeleryExecutor

    settings = _settings(tmp_path)
    settings = settings.model_copy(
        update={
            "jobs": settings.jobs.model_copy(
                update={"worker_lost_after_s": 30.0, "worker_forget_after_s": 300.0}
            )
        }
    )
    executor = CeleryExecutor(settings, FileQueue(settings.queue_dir, settings.queue))
    executor._record_ping(["callannotate-1@a"], 1000.0)
    executor._record_ping(["callannotate-2@a"], 1100.0)  # the worker was restarted
    executor._record_ping(["callannotate-2@a"], 1250.0)
    assert [w.name for w in executor.workers()] == ["callannotate-1@a", "callannotate-2@a"]
    executor._record_ping(["callannotate-2@a"], 1301.0)
    assert [w.name for w in executor.workers()] == ["callannotate-2@a"]


def test_a_job_taken_over_from_a_dead_child_is_announced_as_requeued(tmp_path: Path) -> None:
    """A killed child's task is redelivered at once and another child takes the job over
    (before the API's recovery sees it): that child announces the requeue as the API's
    recovery and the local executor do, ``job.queued`` with ``reason`` before ``job.started``,
    so clients see why attempt 2 starts and ``callannotate_jobs_retried_total{reason=
    "worker_died"}`` counts it (it missed every child killed mid-job)."""
    from prometheus_client import REGISTRY

    def died() -> float:
        sample = REGISTRY.get_sample_value(
            "callannotate_jobs_retried_total", {"reason": "worker_died"}
        )
        return sample or 0.0

    settings = _settings(tmp_path)
    host = JobHost(settings, SleepRunner(steps=1, step_s=0.0))
    seen = _recorded_events(host)
    try:
        job = new_job(host.announcer.queue)
        dead = FileQueue(settings.queue_dir, settings.queue)
        assert dead.claim_job(job.id, "host:1:celery") is not None
        dead.forget(job.id)  # the child is SIGKILLed: its run lock is gone
        before = died()
        assert host.run(job.id) == "completed"
        assert died() - before == 1
        assert host.run(job.id) == "skipped"  # a late redelivery: no event, no count
        assert died() - before == 1
    finally:
        host.close()
    kinds = [(e.type, e.data.get("attempt", e.data.get("attempts"))) for e in seen]
    assert kinds[:2] == [("job.queued", 1), ("job.started", 2)], kinds
    assert seen[0].data["state"] == "queued"
    assert seen[0].data["reason"].startswith("interrupted: the process running the job died")


def test_a_node_whose_children_run_a_job_is_busy(tmp_path: Path) -> None:
    """``callannotate_workers_busy`` was always 0 with Celery: the API knows the nodes from
    its ping, and now what their children run from their heartbeat records."""
    from datetime import timedelta

    from callannotate.jobs.executors.celery import CeleryExecutor
    from callannotate.jobs.heartbeat import WorkerRecord, WorkerRegistry
    from callannotate.jobs.models import utcnow

    settings = _settings(tmp_path)
    executor = CeleryExecutor(settings, FileQueue(settings.queue_dir, settings.queue))
    registry = WorkerRegistry.from_settings(settings)
    now = utcnow()

    def child(pid: int, node: str, jobs: list[str], age_s: float = 0.0) -> None:
        beat = now - timedelta(seconds=age_s)
        registry.write(
            WorkerRecord(
                id=f"h-{pid}", host="h", pid=pid, executor="celery", name=node,
                concurrency=2, queues=["heavy"], jobs_running=jobs, models_loaded=[],
                rss_bytes=0, started_at=beat, heartbeat_at=beat,
            )
        )  # fmt: skip

    child(1, "callannotate-1@h", [])
    child(2, "callannotate-1@h", ["job-a"])
    child(3, "callannotate-2@h", [])
    child(4, "callannotate-2@h", ["job-old"], age_s=3600.0)  # killed: its record is lost
    executor._record_ping(["callannotate-1@h", "callannotate-2@h"], 1000.0)
    workers = {w.name: w.job_id for w in executor.workers()}
    assert workers == {"callannotate-1@h": "job-a", "callannotate-2@h": None}
