"""Waking the dispatch loop: never swallowing a cancellation (Python 3.11 race), and
``executor.submit`` starting a job at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_runners import SleepRunner
from manager_testing import Harness, make_settings

from callannotate.jobs.executors.local import LocalExecutor
from callannotate.jobs.manager import sleep_until_set
from callannotate.jobs.models import JobState


@pytest.mark.parametrize("yields", range(6))
async def test_cancel_while_event_is_being_set_stops_the_loop(yields: int) -> None:
    # ``asyncio.wait_for(event.wait(), t)`` returned normally here for 3+ yields on 3.11,
    # so a loop around it outlived ``cancel()`` and the queue manager's stop() hung.
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            event.clear()
            await sleep_until_set(event, 0.05)
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    event.set()
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert task in done and task.cancelled()


async def test_returns_on_set_and_on_timeout() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sleep_until_set(event, 0.05)
    assert loop.time() - started >= 0.04
    loop.call_later(0.01, event.set)
    started = loop.time()
    await sleep_until_set(event, 5.0)
    assert loop.time() - started < 1.0


# --------------------------------------------------------------------------- executor.submit


@pytest.mark.parametrize("from_thread", [False, True])
async def test_submit_starts_a_queued_job_before_the_next_poll(
    tmp_path: Path, from_thread: bool
) -> None:
    """``executor.submit`` (the API calls it after queueing) wakes the dispatch loop at once,
    also from a worker thread, so a job does not wait for ``queue.poll_interval``."""
    settings = make_settings(tmp_path)
    settings.queue.poll_interval = 600.0  # without a wake-up the job would wait 10 minutes
    h = Harness(settings, SleepRunner())
    executor = LocalExecutor(h.manager)
    await executor.start()
    try:
        await h.wait_ready()
        await asyncio.sleep(0.2)  # the loop is asleep after handling the worker's "ready"
        job = h.submit()
        if from_thread:
            await asyncio.to_thread(executor.submit, job.id)
        else:
            executor.submit(job.id)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED, timeout=120)
        assert done.state == JobState.COMPLETED
    finally:
        await executor.stop()
