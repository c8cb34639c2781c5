"""Retries with exponential backoff and jitter (tenacity), and which errors deserve one.

Transient errors (a dependency down or slow: connection refused or reset, timeouts, HTTP 5xx /
408 / 425 / 429, Redis connection errors, temporary I/O, an open circuit) are retried up to a
limit; permanent ones (undecodable audio, invalid options, HTTP 4xx, missing files) fail at
once with their reason. :func:`is_transient` is the one classification every caller uses.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import redis.exceptions as redis_errors
import tenacity

from callannotate.resilience.breakers import CircuitOpen

RETRY_STATUSES = frozenset({408, 425, 429})

# OSError numbers that say "try again later" (anything else, e.g. ENOENT or EACCES, is final)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.EIO,
        errno.ESTALE,  # NFS
    }
)


class TransientError(Exception):
    """A failure worth another attempt (e.g. an HTTP 503 answer)."""


def retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUSES


def is_transient(exc: BaseException) -> bool:
    """True for errors another attempt may not meet (see the module docstring)."""
    if isinstance(exc, TransientError | CircuitOpen | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, httpx.TransportError):  # connect, read, write, timeouts, protocol
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return retryable_status(exc.response.status_code)
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return True  # BusyLoadingError (Redis starting) is a ConnectionError
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries; the wait after try n is ``initial_s * 2**(n-1)`` plus up to
    ``initial_s`` of random jitter, at most ``max_s``; no try starts after ``max_elapsed_s``."""

    attempts: int
    initial_s: float
    max_s: float
    max_elapsed_s: float | None = None

    def wait(self) -> tenacity.wait.wait_base:
        return tenacity.wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=self.initial_s
        )

    def delay(self, attempt: int) -> float:
        """The wait after try ``attempt`` (1 for the first) failed, drawn from :meth:`wait`;
        for callers that schedule the next try themselves (the file queue's ``not_before``)
        instead of sleeping in a tenacity loop."""
        state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        return float(self.wait()(state))

    def stop(self) -> tenacity.stop.stop_base:
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.attempts)
        if self.max_elapsed_s is not None:
            stop = stop | tenacity.stop_before_delay(self.max_elapsed_s)
        return stop


BeforeSleep = Callable[[tenacity.RetryCallState], Any]


def async_retrying(
    policy: RetryPolicy,
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    before_sleep: BeforeSleep | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tenacity.AsyncRetrying:
    """``async for attempt in async_retrying(...): with attempt: ...``; the last error is
    raised as itself once retries are exhausted or an error is not worth retrying."""
    return tenacity.AsyncRetrying(
        stop=policy.stop(),
        wait=policy.wait(),
        retry=tenacity.retry_if_exception(retry_if),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


def retrying(
    policy: RetryPolicy,
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    before_sleep: BeforeSleep | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """The blocking twin of :func:`async_retrying`."""
    return tenacity.Retrying(
        stop=policy.stop(),
        wait=policy.wait(),
        retry=tenacity.retry_if_exception(retry_if),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
