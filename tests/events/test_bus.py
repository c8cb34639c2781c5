"""The event bus, in memory and on a real Redis: numbering, replay bounds, TTL, fan-out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from callannotate.config import EventSettings
from callannotate.events.bus import EventBus, MemoryEventBus, RedisEventBus, create_bus
from callannotate.events.models import BusEvent, EventDraft
from callannotate.jobs.events import JobEvent

BusFactory = Callable[..., Awaitable[EventBus]]


class Collector:
    def __init__(self) -> None:
        self.events: list[BusEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: BusEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[BusEvent]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


def draft(job: str, kind: str = "job.progress", owner: str = "alice", **data: object) -> EventDraft:
    return EventDraft(type=kind, job_id=job, owner=owner, data=dict(data))


async def test_sequence_numbers_are_per_job_and_monotonic(make_bus: BusFactory) -> None:
    bus = await make_bus()
    seen = Collector()
    bus.add_listener(seen)
    published = [await bus.publish(draft(job, percent=i)) for i in range(3) for job in ("a", "b")]
    assert [(e.job_id, e.seq) for e in published] == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)
    ]  # fmt: skip
    events = await seen.wait_for(6)
    assert sorted((e.job_id, e.seq) for e in events) == sorted((e.job_id, e.seq) for e in published)
    assert all(e.owner == "alice" for e in events)


async def test_replay_returns_events_after_a_sequence_number(make_bus: BusFactory) -> None:
    bus = await make_bus()
    for i in range(5):
        await bus.publish(draft("job1", percent=i * 10))
    replay = await bus.replay("job1", 2)
    assert [e.seq for e in replay.events] == [3, 4, 5]
    assert [e.data["percent"] for e in replay.events] == [20, 30, 40]
    assert (replay.first_seq, replay.last_seq, replay.owner) == (1, 5, "alice")
    assert not replay.truncated_after(2)
    assert (await bus.replay("job1", 5)).events == []
    nothing = await bus.replay("never-published", 0)
    assert (nothing.events, nothing.first_seq, nothing.last_seq, nothing.owner) == (
        [],
        None,
        0,
        None,
    )


async def test_replay_buffer_is_bounded(make_bus: BusFactory) -> None:
    bus = await make_bus(replay_limit=4)
    for i in range(10):
        await bus.publish(draft("j", percent=i))
    replay = await bus.replay("j", 0)
    assert [e.seq for e in replay.events] == [7, 8, 9, 10]
    assert replay.first_seq == 7 and replay.last_seq == 10
    assert replay.truncated_after(3)  # 4..6 are gone
    assert not replay.truncated_after(6)
    assert [e.seq for e in (await bus.replay("j", 8)).events] == [9, 10]


async def test_wire_form_has_no_owner_and_carries_seq(make_bus: BusFactory) -> None:
    bus = await make_bus()
    event = await bus.publish(draft("w", "job.failed", reason="boom", error="boom"))
    (stored,) = (await bus.replay("w", 0)).events
    assert stored.wire == event.wire
    assert '"owner"' not in event.wire
    assert event.wire.startswith('{"type":"job.failed","job_id":"w","seq":1,')


async def test_publish_threadsafe_keeps_call_order(make_bus: BusFactory) -> None:
    bus = await make_bus()
    seen = Collector()
    bus.add_listener(seen)

    def produce() -> None:
        for i in range(50):
            bus.publish_threadsafe(draft("t", percent=i))

    thread = threading.Thread(target=produce)
    thread.start()
    await asyncio.to_thread(thread.join)
    await bus.flush()
    events = await seen.wait_for(50)
    assert [e.data["percent"] for e in events] == list(range(50))
    assert [e.seq for e in events] == list(range(1, 51))


async def test_job_events_from_the_manager_are_adapted(make_bus: BusFactory) -> None:
    bus = await make_bus()
    seen = Collector()
    bus.add_listener(seen)
    ts = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    bus.on_job_event(JobEvent(type="job.completed", job_id="m1", owner="bob", data={}, ts=ts))
    await bus.flush()
    (event,) = await seen.wait_for(1)
    assert event.type == "job.completed" and event.owner == "bob" and event.seq == 1
    assert event.data["result_url"] == "/jobs/m1/result"
    assert event.ts == "2026-01-02T03:04:05.678Z"


def test_drafts_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown job event type"):
        EventDraft(type="job.exploded", job_id="x", owner="o")
    with pytest.raises(ValueError, match="job_id"):
        EventDraft(type="job.queued", job_id="", owner="o")


async def test_memory_bus_forgets_jobs_after_the_ttl() -> None:
    bus = MemoryEventBus(EventSettings(replay_ttl_s=60))
    await bus.start()
    try:
        await bus.publish(draft("old"))
        assert bus.job_count() == 1
        assert bus.sweep() == 0  # fresh
        import time as _time

        assert bus.sweep(now=_time.monotonic() + 30) == 0  # a client away for 30 s misses nothing
        assert (await bus.replay("old", 0)).last_seq == 1
        import time

        assert bus.sweep(now=time.monotonic() + 61) == 1
        assert (await bus.replay("old", 0)).last_seq == 0
    finally:
        await bus.stop()


@pytest.mark.parametrize("make_bus", ["redis"], indirect=True)
async def test_redis_buses_in_two_processes_share_numbers_and_buffers(
    make_bus: BusFactory,
) -> None:
    """Two bus instances stand for two API processes: one sequence, one buffer, both hear all."""
    first = await make_bus()
    second = await make_bus()
    heard_first, heard_second = Collector(), Collector()
    first.add_listener(heard_first)
    second.add_listener(heard_second)
    await first.publish(draft("shared", "job.queued"))
    await second.publish(draft("shared", "job.started"))
    await first.publish(draft("shared", "job.completed"))
    for heard in (heard_first, heard_second):
        events = await heard.wait_for(3)
        assert [(e.seq, e.type) for e in events] == [
            (1, "job.queued"), (2, "job.started"), (3, "job.completed")
        ]  # fmt: skip
    replay = await second.replay("shared", 1)
    assert [e.type for e in replay.events] == ["job.started", "job.completed"]


@pytest.mark.parametrize("make_bus", ["redis"], indirect=True)
async def test_redis_keys_expire_with_the_ttl(make_bus: BusFactory) -> None:
    bus = await make_bus(replay_ttl_s=30)
    assert isinstance(bus, RedisEventBus)
    await bus.publish(draft("ttl"))
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(bus.settings.redis_url)
    try:
        seq_key, log_key = bus._keys("ttl")
        for key in (seq_key, log_key):
            ttl = await client.ttl(key)
            assert 0 < ttl <= 30
    finally:
        await client.aclose()


def test_create_bus_picks_the_backend() -> None:
    assert isinstance(create_bus(EventSettings(backend="memory")), MemoryEventBus)
    assert isinstance(create_bus(EventSettings(backend="redis")), RedisEventBus)


async def test_redis_bus_start_fails_clearly_when_unreachable() -> None:
    bus = RedisEventBus(EventSettings(backend="redis", redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(Exception, match=r"(?i)connect"):
        await bus.start()
    assert not bus.running


@pytest.mark.parametrize("make_bus", ["redis"], indirect=True)
async def test_redis_bus_resubscribes_and_asks_for_a_resync_after_a_lost_connection(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    assert isinstance(bus, RedisEventBus)
    resyncs = asyncio.Event()
    bus.add_resync_listener(resyncs.set)
    seen = Collector()
    bus.add_listener(seen)
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(bus.settings.redis_url)
    try:
        clients = await admin.client_list(_type="pubsub")
        ours = [c["id"] for c in clients if c.get("name") == bus.client_name]
        assert ours, clients
        for client_id in ours:
            await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()
    await asyncio.wait_for(resyncs.wait(), 10)
    await bus.publish(draft("after", "job.queued"))
    (event,) = await seen.wait_for(1)
    assert (event.job_id, event.seq) == ("after", 1)


def test_event_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from callannotate.config import Settings

    monkeypatch.setenv("CALLANNOTATE_EVENTS__BACKEND", "redis")
    monkeypatch.setenv("CALLANNOTATE_EVENTS__REPLAY_LIMIT", "50")
    monkeypatch.setenv("CALLANNOTATE_EVENTS__PING_INTERVAL_S", "5")
    events = Settings().events
    assert (events.backend, events.replay_limit, events.ping_interval_s) == ("redis", 50, 5.0)
    monkeypatch.setenv("CALLANNOTATE_EVENTS__BACKEND", "kafka")
    with pytest.raises(ValueError, match="backend"):
        Settings()
