"""``SingleFlight``: concurrent calls of one key share one call; failures and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from callannotate.security.singleflight import SingleFlight


class Lookup:
    """A slow lookup (in a thread) that counts how often it really ran."""

    def __init__(self, result: str = "value", error: Exception | None = None) -> None:
        self.calls = 0
        self.result, self.error = result, error
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
        time.sleep(0.05)
        if self.error is not None:
            raise self.error
        return self.result


async def test_concurrent_calls_of_one_key_share_one_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    lookup = Lookup()
    results = await asyncio.gather(*(flight.run("k", lookup) for _ in range(30)))
    assert results == ["value"] * 30 and lookup.calls == 1
    assert flight.in_flight() == 0
    # later calls (nothing in flight) run again: this is no cache
    assert await flight.run("k", lookup) == "value" and lookup.calls == 2


async def test_different_keys_do_not_share() -> None:
    flight: SingleFlight[str] = SingleFlight()
    a, b = Lookup("a"), Lookup("b")
    assert list(await asyncio.gather(flight.run("a", a), flight.run("b", b))) == ["a", "b"]
    assert (a.calls, b.calls) == (1, 1)


async def test_every_waiter_gets_the_exception() -> None:
    flight: SingleFlight[str] = SingleFlight()
    lookup = Lookup(error=ValueError("refused"))
    results = await asyncio.gather(
        *(flight.run("k", lookup) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results) and lookup.calls == 1
    assert flight.in_flight() == 0


async def test_a_cancelled_leader_does_not_fail_its_waiters() -> None:
    flight: SingleFlight[str] = SingleFlight()
    lookup = Lookup()
    leader = asyncio.create_task(flight.run("k", lookup))
    await asyncio.sleep(0)  # the leader registered its call
    leader.cancel()  # before its thread started: it never gets an answer
    waiter = asyncio.create_task(flight.run("k", lookup))
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await waiter == "value"
    assert flight.in_flight() == 0


async def test_a_cancelled_waiter_leaves_the_call_running() -> None:
    flight: SingleFlight[str] = SingleFlight()
    lookup = Lookup()
    leader = asyncio.create_task(flight.run("k", lookup))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(flight.run("k", lookup))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await leader == "value" and lookup.calls == 1
