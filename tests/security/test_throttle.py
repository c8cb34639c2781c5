"""The in-memory login throttle: per-account and per-address windows (fake clock)."""

from __future__ import annotations

from callannotate.security.throttle import MemoryLoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_account_limit_and_window() -> None:
    clock = Clock()
    throttle = MemoryLoginThrottle(per_account=3, per_ip=100, window_s=60, clock=clock)
    for i in range(3):
        assert throttle.retry_after("alice", f"10.0.0.{i}") is None
        throttle.failed("alice", f"10.0.0.{i}")
        clock.now += 1
    wait = throttle.retry_after("alice", "10.0.0.99")
    assert wait is not None and 57 <= wait <= 58  # the oldest failure leaves the window then
    assert throttle.retry_after("bob", "10.0.0.99") is None  # other accounts are not affected
    clock.now += 58
    assert throttle.retry_after("alice", None) is None


def test_ip_limit_across_accounts() -> None:
    clock = Clock()
    throttle = MemoryLoginThrottle(per_account=100, per_ip=3, window_s=60, clock=clock)
    for name in ("a", "b", "c"):
        throttle.failed(name, "192.0.2.1")
    assert throttle.retry_after("d", "192.0.2.1") is not None
    assert throttle.retry_after("d", "192.0.2.2") is None


def test_success_clears_the_account_but_not_the_address() -> None:
    clock = Clock()
    throttle = MemoryLoginThrottle(per_account=2, per_ip=2, window_s=60, clock=clock)
    throttle.failed("alice", "192.0.2.1")
    throttle.failed("alice", "192.0.2.1")
    throttle.succeeded("alice")
    assert throttle.retry_after("alice", None) is None
    assert throttle.retry_after("alice", "192.0.2.1") is not None
