"""The job event bus: numbers events per job, keeps a bounded replay buffer, fans out.

Two implementations share one interface:

* :class:`MemoryEventBus`: everything in this process (the default: one API process with its
  embedded workers).
* :class:`RedisEventBus`: sequence numbers, the replay buffer and fan-out live in Redis, so
  any API process can serve any client and any process (a standalone worker, another API
  server) can publish. One Lua script per event increments the job's counter, appends the
  record to a capped list with a TTL and publishes it on one channel, atomically; every API
  process subscribes to that channel and fans events out to its own WebSocket connections.
  A publish that meets a Redis blip is retried (``events.publish_attempts``, backoff with
  jitter); the ``events_redis`` circuit breaker stops trying after ``events.breaker_failures``
  failures in a row, so while Redis is down events are dropped at once (counted, logged once
  per outage) instead of each waiting for a refused connection, and jobs go on. The
  subscription reconnects by itself and tells WebSocket clients to resync.

Publishing order: ``publish_nowait``/``publish_threadsafe`` put drafts on one outbox that a
single task drains, so events from one producer keep their order (and so their sequence
numbers follow the order of the calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callannotate.config import EventSettings
from callannotate.events.models import BusEvent, EventDraft, Replay, iso_ts
from callannotate.observability.metrics import EVENTS_DROPPED, observe_job_event
from callannotate.resilience.breakers import Breaker, CircuitOpen
from callannotate.resilience.retry import RetryPolicy, async_retrying, is_transient

if TYPE_CHECKING:
    from callannotate.jobs.events import JobEvent

log = logging.getLogger(__name__)

Listener = Callable[[BusEvent], None]
ResyncListener = Callable[[], None]


class EventBus(ABC):
    """Numbered, replayable job events with local fan-out to listeners."""

    def __init__(self, settings: EventSettings, *, public_url: str = "") -> None:
        self.settings = settings
        self._public_url = public_url.rstrip("/")
        self._listeners: list[Listener] = []
        self._resync_listeners: list[ResyncListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._outbox: asyncio.Queue[EventDraft] | None = None
        self._publisher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._outbox = asyncio.Queue()
        await self._start_backend()
        self._publisher = asyncio.create_task(self._drain_outbox(), name="event-bus-publisher")

    async def stop(self) -> None:
        """Publish what is still in the outbox, then stop."""
        if self._outbox is not None and self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._outbox.join()
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        self._publisher = None
        await self._stop_backend()
        self._loop = None

    @property
    def running(self) -> bool:
        return self._publisher is not None

    # -- listeners (local fan-out) -----------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) for every event published on the bus."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_resync_listener(self, listener: ResyncListener) -> Callable[[], None]:
        """Call ``listener`` after a lost bus connection came back (events may have been missed)."""
        self._resync_listeners.append(listener)
        return lambda: self._resync_listeners.remove(listener)

    def _deliver(self, event: BusEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed", extra={"job_id": event.job_id})

    def _resync(self) -> None:
        for listener in tuple(self._resync_listeners):
            try:
                listener()
            except Exception:
                log.exception("event resync listener failed")

    # -- publishing ----------------------------------------------------------------------------
    async def publish(self, draft: EventDraft) -> BusEvent:
        """Number, store and fan out one event now; returns it with its sequence number."""
        return await self._publish(draft)

    def publish_nowait(self, draft: EventDraft) -> None:
        """Queue ``draft`` for publishing; call from the event loop's thread."""
        if self._outbox is None:
            log.debug("event bus not started; dropped %s", draft.type)
            return
        self._outbox.put_nowait(draft)

    def publish_threadsafe(self, draft: EventDraft) -> None:
        """Queue ``draft`` for publishing from any thread (the manager's callbacks)."""
        loop, outbox = self._loop, self._outbox
        if loop is None or outbox is None or loop.is_closed():
            log.debug("event bus not started; dropped %s", draft.type)
            return
        if threading.get_ident() == self._loop_thread:
            outbox.put_nowait(draft)
        else:
            loop.call_soon_threadsafe(outbox.put_nowait, draft)

    def on_job_event(self, event: JobEvent) -> None:
        """``QueueManager(on_event=bus.on_job_event)``: adapt and publish a manager event."""
        observe_job_event(event)  # every job event of this process passes here exactly once
        self.publish_threadsafe(self.draft_from_job_event(event))

    def on_job_event_and_wait(self, event: JobEvent, timeout_s: float) -> None:
        """As :meth:`on_job_event`, but from a thread other than the loop's return only once
        the event is numbered (at most ``timeout_s``): for an event that must come before what
        the caller does next. A bus that is down loses the event (logged), never the caller's
        work."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._loop_thread:
            self.on_job_event(event)  # not started (dropped, as always) or on the loop: queued
            return
        observe_job_event(event)
        draft = self.draft_from_job_event(event)
        future = asyncio.run_coroutine_threadsafe(self._publish(draft), loop)
        try:
            future.result(timeout_s)
        except Exception as exc:
            future.cancel()
            self._dropped(draft, exc)

    def _dropped(self, draft: EventDraft, exc: Exception) -> None:
        EVENTS_DROPPED.inc()
        if isinstance(exc, CircuitOpen):  # the bus's dependency is down: logged when it opened
            log.debug("event %s dropped: circuit open", draft.type)
            return
        log.warning(
            "publishing %s failed: %s",
            draft.type,
            f"{type(exc).__name__}: {exc}"[:300],
            extra={"job_id": draft.job_id},
        )

    def draft_from_job_event(self, event: JobEvent) -> EventDraft:
        data = dict(event.data)
        if event.type == "job.completed":
            data.setdefault("result_url", f"{self._public_url}/jobs/{event.job_id}/result")
        return EventDraft(
            type=event.type, job_id=event.job_id, owner=event.owner, data=data, ts=iso_ts(event.ts)
        )

    async def flush(self) -> None:
        """Wait until everything queued with ``publish_nowait``/``publish_threadsafe`` is out."""
        if self._outbox is not None:
            await self._outbox.join()

    async def _drain_outbox(self) -> None:
        assert self._outbox is not None
        outbox = self._outbox
        while True:
            draft = await outbox.get()
            try:
                await self._publish(draft)
            except Exception as exc:
                self._dropped(draft, exc)
            finally:
                outbox.task_done()
            # A burst must not starve the connections' writers: let them run between events.
            # With nothing more queued, ``get`` above suspends anyway: no extra loop turn.
            if not outbox.empty():
                await asyncio.sleep(0)

    # -- backend ---------------------------------------------------------------------------------
    @abstractmethod
    async def _start_backend(self) -> None: ...

    @abstractmethod
    async def _stop_backend(self) -> None: ...

    @abstractmethod
    async def _publish(self, draft: EventDraft) -> BusEvent: ...

    @abstractmethod
    async def replay(self, job_id: str, after_seq: int = 0) -> Replay:
        """Events of ``job_id`` with ``seq > after_seq`` still in the buffer, oldest first."""


@dataclass(slots=True)
class _JobLog:
    owner: str
    events: deque[BusEvent]
    last_seq: int = 0
    touched: float = field(default_factory=time.monotonic)


class MemoryEventBus(EventBus):
    """In-process bus: per-job counters and bounded replay buffers in memory."""

    def __init__(self, settings: EventSettings, *, public_url: str = "") -> None:
        super().__init__(settings, public_url=public_url)
        self._logs: dict[str, _JobLog] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def _start_backend(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="event-bus-sweeper")

    async def _stop_backend(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _publish(self, draft: EventDraft) -> BusEvent:
        return self.publish_sync(draft)

    def publish_sync(self, draft: EventDraft) -> BusEvent:
        """Number, store and fan out ``draft`` right now (event-loop thread only)."""
        job_log = self._logs.get(draft.job_id)
        if job_log is None:
            job_log = _JobLog(owner=draft.owner, events=deque(maxlen=self.settings.replay_limit))
            self._logs[draft.job_id] = job_log
        job_log.last_seq += 1
        job_log.touched = time.monotonic()
        event = BusEvent.build(draft, job_log.last_seq)
        job_log.events.append(event)
        self._deliver(event)
        return event

    async def replay(self, job_id: str, after_seq: int = 0) -> Replay:
        job_log = self._logs.get(job_id)
        if job_log is None:
            return Replay(events=[], first_seq=None, last_seq=0, owner=None)
        events = list(job_log.events)
        first = events[0].seq if events else None
        if first is not None and after_seq >= first:
            events = events[after_seq - first + 1 :]
        return Replay(
            events=events, first_seq=first, last_seq=job_log.last_seq, owner=job_log.owner
        )

    def sweep(self, now: float | None = None) -> int:
        """Forget jobs whose last event is older than ``replay_ttl_s``; returns how many."""
        limit = (time.monotonic() if now is None else now) - self.settings.replay_ttl_s
        stale = [job_id for job_id, job_log in self._logs.items() if job_log.touched < limit]
        for job_id in stale:
            del self._logs[job_id]
        return len(stale)

    def job_count(self) -> int:
        return len(self._logs)

    async def _sweep_forever(self) -> None:
        interval = max(0.5, min(self.settings.replay_ttl_s / 2, 60.0))
        while True:
            await asyncio.sleep(interval)
            self.sweep()


# KEYS[1] = seq counter, KEYS[2] = capped record list.
# ARGV[1] = record JSON without seq, ARGV[2] = list bound, ARGV[3] = TTL seconds, ARGV[4] = channel.
_PUBLISH_LUA = """
local seq = redis.call('INCR', KEYS[1])
local record = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('RPUSH', KEYS[2], record)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], record)
return seq
"""


REDIS_POOL_SIZE = 32  # connections per process (plus one for the subscription)
REDIS_POOL_TIMEOUT_S = 20.0  # longest wait for a free pooled connection


class RedisEventBus(EventBus):
    """Redis-backed bus: shared counters and replay buffers, pub/sub fan-out."""

    def __init__(self, settings: EventSettings, *, public_url: str = "") -> None:
        super().__init__(settings, public_url=public_url)
        prefix = settings.redis_prefix
        self.channel = f"{prefix}:events"
        self._key_prefix = f"{prefix}:events:job:"
        self._redis: Any = None
        self._script: Any = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self.client_name = ""
        self.breaker = Breaker(
            "events_redis",
            failures=settings.breaker_failures,
            reset_s=settings.breaker_reset_s,
            is_failure=is_transient,
        )
        # a blip (a dropped connection, Redis restarting) is short: retry fast, in order
        self.retry = RetryPolicy(settings.publish_attempts, initial_s=0.05, max_s=1.0)

    def _keys(self, job_id: str) -> tuple[str, str]:
        return f"{self._key_prefix}{job_id}:seq", f"{self._key_prefix}{job_id}:log"

    async def _start_backend(self) -> None:
        import redis.asyncio as aioredis

        # Named, so operators (and tests) can tell this process's connections apart.
        self.client_name = f"{self.settings.redis_prefix}:events:{os.getpid()}:{id(self):x}"
        # A blocking pool: a burst of replays (many clients reconnecting) waits for a free
        # connection instead of failing with MaxConnectionsError.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.redis_url,
            max_connections=REDIS_POOL_SIZE,
            timeout=REDIS_POOL_TIMEOUT_S,
            client_name=self.client_name,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        try:
            await self._redis.ping()
            self._script = self._redis.register_script(_PUBLISH_LUA)
            self._pubsub = await self._subscribe()
        except Exception:
            await self._redis.aclose()
            self._redis = None
            raise
        self._listener = asyncio.create_task(self._listen_forever(), name="event-bus-redis")

    async def _subscribe(self) -> Any:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        return pubsub

    async def _stop_backend(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _listen_forever(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    log.warning("event bus: Redis subscription restored; resyncing subscribers")
                    self._resync()
                backoff = 0.2
                async for message in self._pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        event = BusEvent.from_record(message["data"])
                    except ValueError:
                        log.warning("event bus: skipped a malformed record on %s", self.channel)
                        continue
                    self._deliver(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event bus: Redis subscription lost (%s); retrying", exc)
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish(self, draft: EventDraft) -> BusEvent:
        if self._script is None:
            raise RuntimeError("Redis event bus is not started")
        seq_key, log_key = self._keys(draft.job_id)
        args = [
            draft.record_body(),
            self.settings.replay_limit,
            max(1, math.ceil(self.settings.replay_ttl_s)),
            self.channel,
        ]
        seq = 0
        # One publish is one call through the breaker; inside it, a blip (a pooled connection
        # Redis closed when it restarted, a reset) is retried at once with backoff, so only an
        # event that could not be published at all counts towards opening the circuit.
        with self.breaker.guard():
            async for attempt in async_retrying(self.retry):
                with attempt:
                    seq = await self._script(keys=[seq_key, log_key], args=args)
        # Local listeners get the event through the channel subscription, like every process.
        return BusEvent.build(draft, int(seq))

    async def replay(self, job_id: str, after_seq: int = 0) -> Replay:
        if self._redis is None:
            raise RuntimeError("Redis event bus is not started")
        seq_key, log_key = self._keys(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(seq_key)
            pipe.lrange(log_key, 0, -1)
            raw_last, raw_records = await pipe.execute()
        events: list[BusEvent] = []
        for raw in raw_records:
            try:
                events.append(BusEvent.from_record(raw))
            except ValueError:
                log.warning(
                    "event bus: skipped a malformed stored record", extra={"job_id": job_id}
                )
        first = events[0].seq if events else None
        owner = events[-1].owner if events else None
        last = int(raw_last) if raw_last is not None else (events[-1].seq if events else 0)
        return Replay(
            events=[e for e in events if e.seq > after_seq],
            first_seq=first,
            last_seq=last,
            owner=owner,
        )


def create_bus(settings: EventSettings, *, public_url: str = "") -> EventBus:
    """The bus ``settings.backend`` names (not started)."""
    if settings.backend == "redis":
        return RedisEventBus(settings, public_url=public_url)
    return MemoryEventBus(settings, public_url=public_url)
