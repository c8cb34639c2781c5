"""QueueManager with real worker processes running fake job runners (no models, no data).

The runners (``fake_runners``) sleep in small steps and report progress through the hook, so
a job runs long enough to be killed, cancelled or timed out while it runs. Runs of the real
pipeline are in ``tests/integration/test_worker_pipeline.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from fake_runners import FailingRunner, SleepRunner, StubbornRunner
from manager_testing import Harness, make_settings
from queue_testing import new_job

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.manager import TIMEOUT
from callannotate.jobs.models import JobState
from callannotate.pipeline.types import AnnotateOptions

LONG = SleepRunner(steps=2000, step_s=0.02)  # 40 s unless stopped


def result_pid(h: Harness, job_id: str) -> int:
    return int(json.loads(h.queue.read_result(job_id))["pid"])


async def test_job_completes_with_the_runners_result(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), SleepRunner())
    await h.manager.start()
    try:
        await h.wait_ready()
        assert h.manager.alive()
        job = h.submit()
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
        assert done.attempts == 1
        result = json.loads(h.queue.read_result(job.id))
        assert result["job_id"] == job.id
        decode = next(p for p in done.progress if p.step == "decode")
        assert decode.status == "done" and decode.percent == 100.0
        await h.wait_event(job.id, "job.completed")
        types = h.types(job.id)
        assert types[0] == "job.started" and types[-1] == "job.completed"
        assert "job.progress" in types
        await h.wait(lambda: h.manager.workers()[0].jobs_done == 1)
        (info,) = h.manager.workers()
        assert info.jobs_done == 1 and info.restarts == 0 and info.preload_error is None
        assert info.pid == result["pid"]
    finally:
        await h.manager.stop()
    assert not h.manager.alive()


async def test_runner_error_fails_the_job_and_the_worker_keeps_serving(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), FailingRunner())
    await h.manager.start()
    try:
        await h.wait_ready()
        (before,) = h.manager.workers()
        job = h.submit()
        failed = await h.wait_state(job.id, JobState.FAILED, JobState.COMPLETED)
        assert failed.error == "RuntimeError: the fake step broke"
        (after,) = h.manager.workers()
        assert after.pid == before.pid and after.restarts == 0
    finally:
        await h.manager.stop()


async def test_pool_of_two_workers_runs_jobs_in_parallel(tmp_path) -> None:
    h = Harness(make_settings(tmp_path, concurrency=2), SleepRunner(steps=3))
    await h.manager.start()
    try:
        await h.wait_ready()
        jobs = [h.submit() for _ in range(4)]
        for job in jobs:
            done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
            assert done.state == JobState.COMPLETED
        pids = {result_pid(h, job.id) for job in jobs}
        assert pids == {w.pid for w in h.manager.workers()} and len(pids) == 2
        await h.wait(lambda: sum(w.jobs_done for w in h.manager.workers()) == 4)
    finally:
        await h.manager.stop()


async def test_sigkill_mid_job_completes_exactly_once(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), SleepRunner(steps=40, step_s=0.05))
    await h.manager.start()
    try:
        job = h.submit()
        pid = await h.wait_running(job.id)
        os.kill(pid, signal.SIGKILL)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
        assert done.attempts == 2  # the killed attempt counted
        await h.wait_event(job.id, "job.completed")
        types = h.types(job.id)
        assert types.count("job.completed") == 1
        assert types.count("job.started") == 2
        requeued = [e for e in h.events if e.type == "job.queued" and e.job_id == job.id]
        assert len(requeued) == 1 and "worker process died" in requeued[0].data["reason"]
        (info,) = h.manager.workers()
        assert info.restarts == 1 and info.pid != pid and info.alive
        assert h.queue.counts() == {
            "incoming": 0,
            "processing": 0,
            "completed": 1,
            "failed": 0,
            "archived": 0,
        }
    finally:
        await h.manager.stop()


async def test_soft_time_limit_fails_the_job_and_keeps_the_worker(tmp_path) -> None:
    """16.8: over job_timeout_s the worker is asked to stop; it fails the job and survives."""
    h = Harness(make_settings(tmp_path, job_timeout_s=0.3, timeout_grace_s=60.0), LONG)
    await h.manager.start()
    try:
        await h.wait_ready()
        (before,) = h.manager.workers()
        job = h.submit()
        failed = await h.wait_state(job.id, JobState.FAILED, JobState.COMPLETED)
        assert failed.state == JobState.FAILED
        assert failed.error is not None and failed.error.startswith(f"{TIMEOUT}: ")
        assert "killed" not in failed.error
        await h.wait_event(job.id, "job.failed")
        event = next(e for e in h.events if e.job_id == job.id and e.type == "job.failed")
        assert event.data["reason"] == TIMEOUT
        await h.wait(lambda: h.manager.workers()[0].jobs_done == 1)
        (after,) = h.manager.workers()
        assert after.pid == before.pid and after.restarts == 0 and after.alive
    finally:
        await h.manager.stop()


async def test_job_ignoring_the_soft_limit_is_killed_after_the_grace(tmp_path) -> None:
    """16.8: a job that never reaches the hook is killed once timeout_grace_s is over."""
    h = Harness(make_settings(tmp_path, job_timeout_s=0.3, timeout_grace_s=0.5), StubbornRunner())
    await h.manager.start()
    try:
        job = h.submit()
        pid = await h.wait_running(job.id)
        failed = await h.wait_state(job.id, JobState.FAILED, JobState.COMPLETED)
        assert failed.error is not None and failed.error.startswith(f"{TIMEOUT}: ")
        assert "killed" in failed.error
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        await h.wait(lambda: h.manager.workers()[0].restarts == 1 and h.manager.alive())
    finally:
        await h.manager.stop()


async def test_worker_is_recycled_after_max_jobs(tmp_path) -> None:
    """16.8: workers.max_jobs_per_worker replaces a worker process between jobs."""
    h = Harness(make_settings(tmp_path, max_jobs_per_worker=2), SleepRunner())
    await h.manager.start()
    try:
        await h.wait_ready()
        jobs = [h.submit() for _ in range(3)]
        for job in jobs:
            done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
            assert done.state == JobState.COMPLETED, done.error
        first, second, third = (result_pid(h, job.id) for job in jobs)
        assert first == second != third
        await h.wait(lambda: h.manager.workers()[0].jobs_done == 3)
        (info,) = h.manager.workers()
        assert info.recycled == 1 and info.restarts == 0 and info.pid == third
    finally:
        await h.manager.stop()


async def test_cancel_running_and_queued(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), LONG)
    await h.manager.start()
    try:
        running = h.submit()
        queued = h.submit()
        pid = await h.wait_running(running.id)
        cancelled = await h.manager.cancel(queued.id)
        assert cancelled.state == JobState.CANCELLED
        result = await h.manager.cancel(running.id)
        assert result.state == JobState.CANCELLED
        assert result.error == "cancelled"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the worker running it was killed
        assert h.types(running.id)[-1] == "job.failed"
        await h.wait(lambda: h.manager.alive() and h.manager.workers()[0].ready)
    finally:
        await h.manager.stop()


async def test_cancel_from_another_process_view(tmp_path) -> None:
    """An API process that does not run the job flags it in job.json; the runner stops it."""
    h = Harness(make_settings(tmp_path), LONG)
    await h.manager.start()
    try:
        job = h.submit()
        await h.wait_running(job.id)
        # Progress is written into job.json while the job runs.
        await h.wait(lambda: any(p.step == "decode" for p in h.queue.get(job.id).progress))
        other = FileQueue(h.settings.queue_dir, h.settings.queue)
        assert other.cancel(job.id).cancel_requested
        final = await h.wait_state(job.id, JobState.CANCELLED, JobState.COMPLETED)
        assert final.state == JobState.CANCELLED
    finally:
        await h.manager.stop()


async def test_delete_running_job_from_another_process_view(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), SleepRunner(steps=100, step_s=0.02))
    await h.manager.start()
    try:
        job = h.submit()
        await h.wait_running(job.id)
        FileQueue(h.settings.queue_dir, h.settings.queue).delete(job.id)
        # The runner lets go of it (its worker is stopped, or its result is dropped when
        # it finished before the manager noticed the delete).
        await h.wait(lambda: not h.queue.holds(job.id))
        assert sum(h.queue.counts().values()) == 0
        assert "job.completed" not in h.types(job.id)
        await h.wait(lambda: h.manager.alive() and h.manager.workers()[0].ready)
        after = h.submit()
        done = await h.wait_state(after.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await h.manager.stop()


async def test_graceful_stop_releases_running_job(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), LONG, grace_s=0.2)
    await h.manager.start()
    job = h.submit()
    await h.wait_running(job.id)
    await h.manager.stop(graceful=True)
    back = h.queue.get(job.id)
    assert back.state == JobState.QUEUED
    assert back.attempts == 0  # a shutdown does not use up an attempt
    assert not h.queue.holds(job.id)
    assert h.types(job.id)[-1] == "job.queued"
    assert all(not w.alive for w in h.manager.workers())


async def test_graceful_stop_lets_running_job_finish(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), SleepRunner(steps=20, step_s=0.02), grace_s=30.0)
    await h.manager.start()
    job = h.submit()
    await h.wait_running(job.id)
    await h.manager.stop(graceful=True)
    assert h.queue.get(job.id).state == JobState.COMPLETED


async def test_unloadable_model_is_reported_not_fatal(tmp_path) -> None:
    h = Harness(make_settings(tmp_path), SleepRunner(preload_error="vad: no such model"))
    await h.manager.start()
    try:
        await h.wait_ready()
        (info,) = h.manager.workers()
        assert info.preload_error == "vad: no such model"
        assert info.alive and info.restarts == 0
        job = h.submit()
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await h.manager.stop()


async def test_start_recovers_jobs_of_a_dead_process(tmp_path) -> None:
    settings = make_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job = new_job(queue, options=AnnotateOptions())
    # A previous process claimed the job and died (its lock is gone with it).
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from callannotate.config import QueueSettings;"
            "from callannotate.jobs.filequeue import FileQueue;"
            "FileQueue(Path(sys.argv[1]), QueueSettings()).claim('old')",
            str(settings.queue_dir),
        ],
        check=True,
    )
    assert queue.get(job.id).state == JobState.RUNNING
    h = Harness(settings, SleepRunner())
    await h.manager.start()
    try:
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
        assert done.attempts == 2
        assert h.types(job.id)[0] == "job.queued"
    finally:
        await h.manager.stop()
