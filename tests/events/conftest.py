"""Shared fixtures for the event tests: a real Redis when one is reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from callannotate.config import EventSettings
from callannotate.events.bus import EventBus, MemoryEventBus, RedisEventBus

REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def _redis_reachable(url: str) -> str | None:
    """``None`` when Redis answers PING, else the reason it does not."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


async def require_redis(url: str = REDIS_URL) -> None:
    """Skip (fail when CI=true) unless a Redis server answers at ``url``."""
    reason = await _redis_reachable(url)
    if reason is None:
        return
    message = f"Redis not reachable at {url} ({reason}); start redis-server to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI requires Redis: {message}")
    pytest.skip(message)


async def _delete_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


BusFactory = Callable[..., Awaitable[EventBus]]


@pytest.fixture
async def redis_url() -> str:
    """The test Redis URL; skips (fails when CI=true) when no Redis answers there."""
    await require_redis()
    return REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Build started buses of one backend; every bus made by one test shares its Redis prefix.

    ``make_bus(replay_limit=5, ...)`` returns a started bus; all are stopped afterwards.
    """
    backend: str = request.param
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    if backend == "redis":
        await require_redis()
    buses: list[EventBus] = []

    async def make(**overrides: object) -> EventBus:
        settings = EventSettings.model_validate(
            {"backend": backend, "redis_url": REDIS_URL, "redis_prefix": prefix, **overrides}
        )
        bus: EventBus = RedisEventBus(settings) if backend == "redis" else MemoryEventBus(settings)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.stop()
    if backend == "redis":
        await _delete_prefix(REDIS_URL, prefix)
