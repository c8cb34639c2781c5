"""The dispatch loop's wake-up wait must never swallow a cancellation (Python 3.11 race)."""

from __future__ import annotations

import asyncio

import pytest

from callannotate.jobs.manager import sleep_until_set


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
