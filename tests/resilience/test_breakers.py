"""Unit tests of the named breakers (pybreaker underneath) on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from callannotate.resilience import breakers
from callannotate.resilience.breakers import Breaker, CircuitOpen


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(name: str, state: str) -> float | None:
    return REGISTRY.get_sample_value(
        "callannotate_circuit_breakers", {"breaker": name, "state": state}
    )


def fail(breaker: Breaker, key: str = "", exc: Exception | None = None) -> None:
    with pytest.raises(type(exc) if exc else ConnectionError), breaker.guard(key):
        raise exc or ConnectionError("refused")


def test_opens_after_failures_half_opens_after_reset_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = Breaker("events_redis", failures=3, reset_s=10, clock=clock)
    fail(breaker)
    fail(breaker)
    assert breaker.state() == "closed" and breaker.status().circuits[0].failures == 2
    fail(breaker)  # the third failure opens it; the caller still sees the real error
    assert breaker.state() == "open"
    assert gauge("events_redis", "open") == 1 and gauge("events_redis", "closed") == 0

    called = []
    clock.now += 9.5
    with pytest.raises(CircuitOpen) as refused, breaker.guard():
        called.append(1)
    assert not called and 0.4 < refused.value.retry_in_s <= 0.5
    assert "events_redis" in str(refused.value)

    clock.now += 1  # reset timeout over: the next call is the trial
    with breaker.guard():
        called.append(1)
    assert called == [1] and breaker.state() == "closed"
    assert gauge("events_redis", "closed") == 1 and gauge("events_redis", "open") == 0


def test_failed_trial_opens_again_for_a_full_period() -> None:
    clock = FakeClock()
    breaker = Breaker("events_redis", failures=1, reset_s=5, clock=clock)
    fail(breaker)
    clock.now += 6
    fail(breaker)  # trial failed
    assert breaker.state() == "open"
    clock.now += 4
    with pytest.raises(CircuitOpen), breaker.guard():
        pass


def test_errors_that_are_not_failures_keep_it_closed() -> None:
    breaker = Breaker(
        "callbacks", failures=1, reset_s=5, is_failure=lambda exc: isinstance(exc, OSError)
    )
    for _ in range(3):
        fail(breaker, "a.example", ValueError("HTTP 404"))
    assert breaker.state("a.example") == "closed"


def test_keys_are_separate_circuits_and_worst_state_is_reported() -> None:
    breaker = Breaker("contacts", failures=1, reset_s=30)
    fail(breaker, "acc-1")
    with breaker.guard("acc-2"):
        pass
    status = breaker.status()
    assert status.state == "open" and status.counts == {"closed": 1, "open": 1, "half_open": 0}
    assert breaker.open_keys() == ["acc-1"]
    assert gauge("contacts", "open") == 1 and gauge("contacts", "closed") == 1
    breaker.reset("acc-1")
    assert breaker.open_keys() == [] and gauge("contacts", "open") == 0


def test_cancellation_is_not_a_failure() -> None:
    breaker = Breaker("alerts_email", failures=1, reset_s=5)

    async def cancelled() -> None:
        with breaker.guard():
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
    assert breaker.state() == "closed"


def test_keyed_breaker_is_bounded() -> None:
    breaker = Breaker("callbacks", failures=2, reset_s=5, max_keys=3)
    for n in range(10):
        with breaker.guard(f"host-{n}"):
            pass
    assert len(breaker.status().circuits) <= 3


def test_registry_reports_the_newest_breaker_of_a_name_and_rejects_unknown_names() -> None:
    first = Breaker("alerts_webhook", failures=1, reset_s=5)
    second = Breaker("alerts_webhook", failures=2, reset_s=5)
    assert breakers.get("alerts_webhook") is second and first is not second
    assert [s.name for s in breakers.statuses()] == [b.name for b in breakers.breakers()]
    with pytest.raises(ValueError, match="unknown breaker name"):
        Breaker("nope", failures=1, reset_s=1)
