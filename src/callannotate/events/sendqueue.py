"""A bounded, coalescing send queue: what one WebSocket connection still has to send.

Rules (``capacity`` = ``events.send_queue_size``):

* Below capacity everything is appended in order.
* At capacity a ``job.progress`` replaces the queued progress of the same job (the old one is
  removed and the new one appended, so sequence numbers stay increasing), or waits in a
  one-per-job *parked* slot (latest wins) until there is room.
* At capacity any other item (``job.completed``, ``job.failed``, partial words, replies) goes
  to an overflow list: it is never dropped. A non-progress event makes the job's queued or
  parked progress obsolete, and that progress is dropped to make room.
* When the overflow is full too, or the queue has been at capacity for longer than
  ``full_timeout_s``, :meth:`offer` returns ``False``: the connection must be closed (1013) and
  the client resumes from its last sequence number.

Memory per connection is therefore bounded by ``2 * capacity`` items plus one parked
progress per subscribed job; items are shared references to events serialised once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One queued text frame. ``job_id``/``seq`` are set for job events (``terminal``: a
    ``job.completed``/``job.failed``); ``replay`` marks a request to send the job's buffered
    events (fetched when the writer reaches it)."""

    text: str
    job_id: str | None = None
    seq: int = 0
    coalescible: bool = False
    replay: bool = False
    terminal: bool = False


class SendQueue:
    def __init__(
        self,
        capacity: int,
        *,
        full_timeout_s: float,
        clock: Any = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.full_timeout_s = full_timeout_s
        self._clock = clock
        self._items: deque[Outgoing] = deque()
        self._overflow: deque[Outgoing] = deque()
        self._parked: dict[str, Outgoing] = {}
        self._queued_progress: dict[str, Outgoing] = {}  # job id -> its progress in _items
        self._full_since: float | None = None
        self._wakeup = asyncio.Event()
        self.coalesced = 0  # progress events replaced by a newer one

    def __len__(self) -> int:
        return len(self._items) + len(self._overflow) + len(self._parked)

    def __bool__(self) -> bool:
        # asked once per event per connection (is it idle?): no sum of three lengths
        return bool(self._items or self._overflow or self._parked)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def _append(self, item: Outgoing) -> None:
        self._items.append(item)
        if item.coalescible and item.job_id is not None:
            self._queued_progress[item.job_id] = item
        if self._full_since is None and len(self._items) >= self.capacity:
            self._full_since = self._clock()
        self._wakeup.set()

    def _remove_queued_progress(self, job_id: str) -> bool:
        old = self._queued_progress.pop(job_id, None)
        if old is None:
            return False
        self._items.remove(old)
        self.coalesced += 1
        return True

    def offer(self, item: Outgoing) -> bool:
        """Queue ``item``; ``False`` means the client is too slow and must be disconnected."""
        if not self.full:
            self._append(item)
            return True
        if self._full_since is not None and self._clock() - self._full_since > self.full_timeout_s:
            return False
        job_id = item.job_id
        if item.coalescible and job_id is not None:
            if not self._overflow and self._remove_queued_progress(job_id):
                self._append(item)
            else:
                if job_id in self._parked:
                    self.coalesced += 1
                self._parked[job_id] = item
            return True
        if job_id is not None:
            if self._parked.pop(job_id, None) is not None:
                self.coalesced += 1
            if not self._overflow and self._remove_queued_progress(job_id):
                self._append(item)
                return True
        if len(self._overflow) >= self.capacity:
            return False
        self._overflow.append(item)
        return True

    def pop(self) -> Outgoing | None:
        """The next item to send, or ``None`` when there is nothing."""
        if not self._items:
            self._wakeup.clear()
            return None
        item = self._items.popleft()
        if item.coalescible and item.job_id is not None:
            self._queued_progress.pop(item.job_id, None)
        self._refill()
        return item

    def _refill(self) -> None:
        while self._overflow and len(self._items) < self.capacity:
            self._items.append(self._overflow.popleft())
        # Parked progress is newer than anything of its job in the overflow: only after it.
        while not self._overflow and self._parked and len(self._items) < self.capacity:
            job_id = next(iter(self._parked))
            self._append(self._parked.pop(job_id))
        if len(self._items) < self.capacity:
            self._full_since = None
        if not self._items:
            self._wakeup.clear()

    def wake(self) -> None:
        """Make a pending :meth:`wait` return (for example to notice a close request)."""
        self._wakeup.set()

    def clear(self) -> None:
        """Drop everything still queued (the connection is closing)."""
        self._items.clear()
        self._overflow.clear()
        self._parked.clear()
        self._queued_progress.clear()
        self._full_since = None

    async def wait(self) -> None:
        """Until something is queued or :meth:`wake` is called.

        No timer per wait: this runs once per event per connection, and timers were the
        largest cost of fan-out. Time-based checks run in the hub's ticker instead.
        """
        if self._items or self._wakeup.is_set():
            return
        await self._wakeup.wait()
