# ruff: noqa: F811  (the receiver fixture is imported from test_callbacks)
"""A callback lost between a job's final state and its delivery task is found and delivered
once (callannotate.jobs.callback_sweep), with a real HTTP receiver on 127.0.0.1.

The main test kills a real service process (tests/jobs/callback_kill_main.py) in that
window, then starts a fresh service on the same data folder: the receiver must get exactly
one signed delivery, however many passes and processes look."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from callback_receiver import Receiver
from fake_runners import SleepRunner
from queue_testing import new_job
from test_callbacks import callback_settings, receiver  # noqa: F401 (fixture)

from callannotate.config import Settings
from callannotate.jobs.callback_sweep import CallbackSweep, delivery_task_id
from callannotate.jobs.callbacks import DELIVERY_HEADER, CallbackDispatcher
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightKind, LightState, LightStore, light_store
from callannotate.jobs.models import CallbackAttempt, JobState, utcnow
from callannotate.jobs.service import build_job_service

TESTS = Path(__file__).resolve().parents[1]
KILL_MAIN = Path(__file__).resolve().parent / "callback_kill_main.py"


def ended_job(queue: FileQueue, url: str | None, *, fail: bool = False) -> str:
    """A job that ran and ended, with nothing announced (no event published)."""
    job = new_job(queue, callback_url=url)
    assert queue.claim("test-worker") is not None
    if fail:
        queue.fail(job.id, "invalid_audio: no audio stream")
    else:
        queue.complete(job.id, b'{"steps": []}')
    return job.id


def task_ids(store: LightStore) -> list[str]:
    return sorted(folder.name for folder in store._task_dirs())


async def until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_delivery_lost_to_a_killed_process_is_delivered_once_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS / "jobs"), str(TESTS), env.get("PYTHONPATH", "")]
    )
    child = subprocess.Popen(
        [sys.executable, str(KILL_MAIN), str(tmp_path), receiver.url()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        # the worker processes of the killed service, if any are left (its own session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, err.decode()[-3000:]
    job_id = out.decode().split()[0]

    # what the kill left: the job ended, no delivery stored, nothing sent
    settings = callback_settings(tmp_path)
    settings.queue.lease_seconds = 0.5  # maintenance passes every 0.5 s (1 s at least)
    queue = FileQueue(settings.queue_dir, settings.queue)
    ended = queue.get(job_id)
    assert ended.state == JobState.COMPLETED and ended.callbacks == []
    store = light_store(settings.data_dir)
    assert task_ids(store) == []
    assert receiver.requests == []

    service = build_job_service(settings, embedded=True, runner=SleepRunner())
    service.callbacks.sweep.grace_s = 0.5  # the job ended a moment ago (default 30 s)
    await service.start()
    try:
        await until(lambda: queue.get(job_id).callbacks, "the lost delivery was not made")
        await asyncio.sleep(3.0)  # more maintenance passes: none may deliver again
        await until(lambda: not service.callbacks._tasks, "a delivery did not end")
    finally:
        await service.stop()

    (request,) = receiver.requests
    assert request["valid"], "the receiver could not verify the signature"
    assert request["headers"]["X-CallAnnotate-Event"] == "job.completed"
    expected_id = delivery_task_id(job_id, "job.completed", ended.finished_at)
    assert request["headers"][DELIVERY_HEADER] == expected_id
    body = json.loads(request["body"])
    assert body["job_id"] == job_id and body["state"] == "completed"
    assert [a.delivered for a in queue.get(job_id).callbacks] == [True]
    assert task_ids(store) == [expected_id]
    assert store.get(expected_id).state == LightState.COMPLETED


async def _started(settings: Settings, queue: FileQueue) -> CallbackDispatcher:
    dispatcher = CallbackDispatcher(settings, queue)
    dispatcher.sweep.grace_s = 0.0
    await dispatcher.start()
    return dispatcher


async def test_normal_path_and_several_sweepers_deliver_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Two processes sweep while the job's own process stores its delivery: one task, one
    POST (the ids agree, the rename into place keeps the first)."""
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = ended_job(queue, receiver.url())
    own, other = await _started(settings, queue), await _started(settings, queue)
    try:
        own.on_job_event(JobEvent(type="job.completed", job_id=job_id, owner="local"))
        counts = await asyncio.gather(
            asyncio.to_thread(own.recover), asyncio.to_thread(other.recover)
        )
        for dispatcher in (own, other):
            await dispatcher.drain()
        await until(lambda: queue.get(job_id).callbacks, "nothing delivered")
        assert await asyncio.to_thread(own.recover) == 0
        assert await asyncio.to_thread(other.recover) == 0
    finally:
        await own.stop()
        await other.stop()
    assert sum(counts) <= 1
    assert len(receiver.requests) == 1 and receiver.requests[0]["valid"]
    assert len(task_ids(own.light)) == 1


async def test_what_needs_no_delivery_is_left_alone(tmp_path: Path, receiver: Receiver) -> None:
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    no_url = ended_job(queue, None)
    announced = ended_job(queue, receiver.url())
    attempt = CallbackAttempt(
        event="job.completed", attempt=1, at=utcnow(), duration_ms=3.0, delivered=True
    )
    queue.record_callback(announced, attempt)  # delivered (by a task purged since, say)
    in_flight = ended_job(queue, receiver.url())
    old_style = light_store(settings.data_dir).create(  # a task of an older release
        LightKind.CALLBACK, {"job_id": in_flight, "event": "job.completed", "delivery": "d"}
    )
    failed = ended_job(queue, receiver.url(), fail=True)
    dispatcher = await _started(settings, queue)
    try:
        assert await asyncio.to_thread(dispatcher.recover) == 1  # the failed job only
        await dispatcher.drain()
    finally:
        await dispatcher.stop()
    (request,) = receiver.requests
    assert json.loads(request["body"])["job_id"] == failed
    assert request["headers"]["X-CallAnnotate-Event"] == "job.failed"
    assert queue.get(no_url).callbacks == [] and queue.get(in_flight).callbacks == []
    assert light_store(settings.data_dir).get(old_style.id).state == LightState.QUEUED


async def test_a_job_that_just_ended_is_left_to_its_own_process(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = ended_job(queue, receiver.url())
    dispatcher = CallbackDispatcher(settings, queue)  # default grace (30 s)
    await dispatcher.start()
    try:
        assert await asyncio.to_thread(dispatcher.recover) == 0
        assert task_ids(dispatcher.light) == []
        # ... which stores it: delivered once, and the sweep then finds nothing to do
        dispatcher.on_job_event(JobEvent(type="job.completed", job_id=job_id, owner="local"))
        await until(lambda: queue.get(job_id).callbacks, "nothing delivered")
        await dispatcher.drain()
        dispatcher.sweep.grace_s = 0.0
        assert await asyncio.to_thread(dispatcher.recover) == 0
    finally:
        await dispatcher.stop()
    assert len(receiver.requests) == 1


async def test_a_job_that_ends_again_is_announced_again(tmp_path: Path, receiver: Receiver) -> None:
    """A failed job retried by its owner ends again: that end gets its own delivery (a new
    id), the first one is not sent twice."""
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = ended_job(queue, receiver.url(), fail=True)
    dispatcher = await _started(settings, queue)
    try:
        assert await asyncio.to_thread(dispatcher.recover) == 1
        await dispatcher.drain()
        queue.retry(job_id)
        assert queue.claim("test-worker") is not None
        queue.fail(job_id, "invalid_audio: still no audio stream")
        assert await asyncio.to_thread(dispatcher.recover) == 1
        await dispatcher.drain()
        assert await asyncio.to_thread(dispatcher.recover) == 0
    finally:
        await dispatcher.stop()
    deliveries = [r["headers"][DELIVERY_HEADER] for r in receiver.requests]
    assert len(deliveries) == 2 and len(set(deliveries)) == 2
    assert [json.loads(r["body"])["error"] for r in receiver.requests] == [
        "invalid_audio: no audio stream",
        "invalid_audio: still no audio stream",
    ]


def test_one_task_id_is_stored_once_across_racing_creators(tmp_path: Path) -> None:
    store = light_store(tmp_path)
    task_id = delivery_task_id("a" * 32, "job.completed", utcnow())
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            store.create(LightKind.CALLBACK, {"n": 1}, task_id=task_id)
            results.append("stored")
        except FileExistsError:
            results.append("exists")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["exists"] * 7 + ["stored"]
    assert task_ids(store) == [task_id]
    assert not [p for p in tmp_path.joinpath("light").iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="32 hex"):
        store.create(LightKind.CALLBACK, {}, task_id="../../etc")


def test_an_idle_pass_reads_no_job_record(tmp_path: Path) -> None:
    """Cost: each ended job's record is read once; a pass over unchanged folders reads
    nothing; a job ending meanwhile costs one read."""
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    for i in range(200):
        ended_job(queue, "http://127.0.0.1:9/hook" if i % 2 else None, fail=i % 5 == 0)
    sweep = CallbackSweep(queue, light_store(settings.data_dir), window_s=3600.0, grace_s=60.0)
    assert sweep.find() == []  # all ended just now: within the grace period
    assert sweep.records_read == 200
    sweep.grace_s = 0.0
    sweep._stamps.clear()  # (the folders were "racy": just changed) list them again now
    assert len(sweep.find()) == 100  # those with a callback_url
    read = sweep.records_read
    time.sleep(2.1)  # past the racy window of the folders' timestamps
    sweep.find()  # listed again (they had just changed), nothing read
    assert sweep.records_read == read
    listed = sweep.rescans
    for _ in range(3):
        assert sweep.find() == []
    assert (sweep.records_read, sweep.rescans) == (read, listed)  # not even listed
    ended_job(queue, None)
    sweep.find()
    assert sweep.records_read == read + 1  # the one new job


def test_jobs_ended_before_the_window_are_not_read(tmp_path: Path) -> None:
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = ended_job(queue, "http://127.0.0.1:9/hook")
    path = queue.root / "completed" / job_id / "job.json"
    record = json.loads(path.read_text())
    record["finished_at"] = (utcnow() - timedelta(days=2)).isoformat()
    path.write_text(json.dumps(record))
    sweep = CallbackSweep(queue, light_store(settings.data_dir), window_s=86400.0, grace_s=0.0)
    assert sweep.find() == []
