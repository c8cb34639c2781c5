# ruff: noqa: F811  (the receiver fixture is imported from test_callbacks)
"""Callback delivery as light work: durable records, one attempt per run on the light queue,
and recovery of a delivery whose process died (a real HTTP receiver on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from callback_receiver import Receiver
from fake_runners import SleepRunner
from queue_testing import new_job
from test_callbacks import (  # noqa: F401 (fixtures)
    callback_settings,
    receiver,
    run_job,
    start_service,
)

from callannotate.jobs.callbacks import CallbackDispatcher
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightKind, LightState, light_store
from callannotate.jobs.models import JobState, utcnow
from callannotate.jobs.service import build_job_service


def finished_job(queue: FileQueue, url: str) -> str:
    job = new_job(queue, callback_url=url)
    assert queue.claim("test-worker") is not None
    queue.complete(job.id, b'{"steps": []}')
    return job.id


async def test_local_delivery_is_recorded_as_a_light_task(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    service = await start_service(callback_settings(tmp_path))
    job = await run_job(service, receiver.url())
    assert [a.delivered for a in job.callbacks] == [True]
    (task,) = [
        t
        for t in light_store(service.settings.data_dir)._task_dirs()
        if light_store(service.settings.data_dir).get(t.name).kind == LightKind.CALLBACK
    ]
    record = light_store(service.settings.data_dir).get(task.name)
    assert record.state == LightState.COMPLETED and record.params["job_id"] == job.id
    assert record.result == {"delivered": True, "attempts": 1}


async def test_one_attempt_per_run_with_backoff_between(tmp_path: Path, receiver: Receiver) -> None:
    """What a Celery light worker does: an attempt, then the task waits (slot free)."""
    receiver.statuses = [503]
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = finished_job(queue, receiver.url())
    sent: list[str] = []
    dispatcher = CallbackDispatcher(settings, queue, handoff=sent.append)
    await dispatcher.start()
    try:
        dispatcher.on_job_event(JobEvent(type="job.completed", job_id=job_id, owner="local"))
        await dispatcher.drain()
        (task_id,) = sent  # handed to the light queue, not sent from here
        assert receiver.requests == []
        store = dispatcher.light
        assert store.get(task_id).max_attempts == settings.callbacks.max_attempts
        claim = store.claim(task_id, "light-1", early=True)
        assert claim is not None
        delay = await dispatcher.deliver_once(claim)
        assert delay is not None and 0.05 <= delay <= 0.2  # backoff_initial_s .. max_s
        waiting = store.get(task_id)
        assert waiting.state == LightState.QUEUED and waiting.error == "HTTP 503"
        assert waiting.not_before is not None
        claim = store.claim(task_id, "light-2", early=True)
        assert claim is not None
        assert await dispatcher.deliver_once(claim) is None
    finally:
        await dispatcher.stop()
    job = queue.get(job_id)
    assert [(a.attempt, a.status_code, a.delivered) for a in job.callbacks] == [
        (1, 503, False),
        (2, 200, True),
    ]
    deliveries = {r["headers"]["X-CallAnnotate-Delivery"] for r in receiver.requests}
    assert len(deliveries) == 1 and all(r["valid"] for r in receiver.requests)
    assert store.get(task_id).state == LightState.COMPLETED


async def test_client_error_ends_a_queued_delivery(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [404]
    settings = callback_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job_id = finished_job(queue, receiver.url())
    dispatcher = CallbackDispatcher(settings, queue, handoff=lambda _: None)
    await dispatcher.start()
    try:
        task = dispatcher.queue_delivery(
            JobEvent(type="job.completed", job_id=job_id, owner="local")
        )
        assert task is not None
        claim = dispatcher.light.claim(task.id, "light-1")
        assert claim is not None
        assert await dispatcher.deliver_once(claim) is None
    finally:
        await dispatcher.stop()
    failed = dispatcher.light.get(task.id)
    assert failed.state == LightState.FAILED and failed.error == "HTTP 404"
    assert [a.status_code for a in queue.get(job_id).callbacks] == [404]


async def test_delivery_left_by_a_dead_process_is_delivered_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A process wrote the delivery and died (one record queued, one left running with
    its lock free): the next process's light lane delivers both, each once."""
    settings = callback_settings(tmp_path)
    settings.queue.lease_seconds = 1.0
    queue = FileQueue(settings.queue_dir, settings.queue)
    store = light_store(settings.data_dir)
    ids = [finished_job(queue, receiver.url()) for _ in range(2)]
    queued = store.create(
        LightKind.CALLBACK, {"job_id": ids[0], "event": "job.completed", "delivery": "d0"}
    )
    queued.created_at = utcnow() - timedelta(minutes=5)
    store.save(queued)
    running = store.create(
        LightKind.CALLBACK, {"job_id": ids[1], "event": "job.completed", "delivery": "d1"}
    )
    claim = store.claim(running.id, "dead-process")
    assert claim is not None
    claim.release()  # died mid-delivery

    service = build_job_service(settings, embedded=True, runner=SleepRunner())
    await service.start()
    try:
        deadline = time.monotonic() + 30
        while not all(queue.get(j).callbacks for j in ids) or service.callbacks._tasks:
            assert time.monotonic() < deadline, "the deliveries were not resumed"
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    for job_id in ids:
        assert [a.delivered for a in queue.get(job_id).callbacks] == [True]
    assert len(receiver.requests) == 2
    assert store.get(queued.id).state == LightState.COMPLETED
    assert store.get(running.id).state == LightState.COMPLETED
    assert queue.get(ids[0]).state == JobState.COMPLETED
