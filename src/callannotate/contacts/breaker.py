"""A simple circuit breaker per CardDAV account.

Closed: calls go through. After ``failures`` consecutive failures it opens: calls are refused
(reads come from the cache, writes wait in the outbox) for ``reset_s`` seconds, then one call
is let through (half-open); its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, failures: int = 3, reset_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._opened: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        with self._lock:
            opened = self._opened.get(key)
            if opened is None:
                return True
            if self._clock() - opened >= self.reset_s:
                self._opened[key] = self._clock()  # half-open: one try per period
                return True
            return False

    def is_open(self, key: str) -> bool:
        with self._lock:
            return key in self._opened

    def open_keys(self) -> list[str]:
        """Keys whose breaker is open or half-open now (read by the built-in alerts)."""
        with self._lock:
            return sorted(self._opened)

    def success(self, key: str) -> None:
        with self._lock:
            self._count.pop(key, None)
            self._opened.pop(key, None)

    def failure(self, key: str) -> None:
        with self._lock:
            count = self._count.get(key, 0) + 1
            self._count[key] = count
            if count >= self.failures:
                self._opened[key] = self._clock()

    def reset(self, key: str) -> None:
        self.success(key)
