"""Login throttling: failed attempts counted per account and per client address.

:class:`LoginThrottle` is the interface; :class:`MemoryLoginThrottle` keeps the counts in the
process (enough for one API process). A Redis implementation plugs in behind the same three
methods when the service runs several API processes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class LoginThrottle(Protocol):
    def retry_after(self, account: str, ip: str | None) -> float | None:
        """Seconds to wait when the account or the address is locked, else ``None``."""

    def failed(self, account: str, ip: str | None) -> None:
        """Count one failed attempt."""

    def succeeded(self, account: str) -> None:
        """Forget the account's failures (the address's stay counted)."""


class MemoryLoginThrottle:
    """Sliding window: at most ``per_account`` / ``per_ip`` failures per ``window_s``."""

    MAX_KEYS = 100_000

    def __init__(
        self,
        per_account: int,
        per_ip: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_account = per_account
        self.per_ip = per_ip
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _wait(self, key: str, limit: int, now: float) -> float | None:
        times = self._recent(key, now)
        if times is None or len(times) < limit:
            return None
        return times[-limit] + self.window_s - now

    def retry_after(self, account: str, ip: str | None) -> float | None:
        now = self._clock()
        with self._lock:
            waits = [self._wait(f"u:{account}", self.per_account, now)]
            if ip:
                waits.append(self._wait(f"ip:{ip}", self.per_ip, now))
        found = [w for w in waits if w is not None]
        return max(found) if found else None

    def failed(self, account: str, ip: str | None) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= self.MAX_KEYS:
                for key in list(self._failures):
                    self._recent(key, now)
            for key, limit in ((f"u:{account}", self.per_account), (f"ip:{ip}", self.per_ip)):
                if key == "ip:None":
                    continue
                self._failures.setdefault(key, deque(maxlen=limit)).append(now)

    def succeeded(self, account: str) -> None:
        with self._lock:
            self._failures.pop(f"u:{account}", None)
