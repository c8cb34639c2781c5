"""One database lookup for many concurrent requests that miss the same cache entry.

The principal caches (:mod:`callannotate.security.service`) expire every
``auth.principal_cache_s`` seconds. Under load, every request in flight at that moment missed
the cache together and each sent its own lookup to a worker thread and the database: with 200
busy clients that was 200 identical queries, a latency spike and ~10 % more CPU per request
(docs/security.md, "Measured"). :class:`SingleFlight` lets the first request of a key run the
lookup and the others wait for its answer, a result or the same exception.

Only requests presenting the same credential share a call (the key is the credential), so no
caller ever receives another credential's principal. A caller whose leader was cancelled (its
client went away) runs its own lookup instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent ``run(key, fn)`` calls of one event loop share one ``fn()`` in a thread."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[T]] = {}

    def in_flight(self) -> int:
        return len(self._calls)

    def running(self, key: Hashable) -> bool:
        """Whether a call of ``key`` is in progress."""
        return key in self._calls

    async def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread, or the result of the same key's call in progress."""
        loop = asyncio.get_running_loop()
        pending = self._calls.get(key)
        if pending is not None and pending.get_loop() is loop:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller itself was cancelled
                # the leader was cancelled before it had an answer: look up ourselves
        future: asyncio.Future[T] = loop.create_future()
        self._calls[key] = future
        try:
            result = await anyio.to_thread.run_sync(fn)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if self._calls.get(key) is future:
                del self._calls[key]
