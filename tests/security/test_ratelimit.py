"""Token buckets (security/ratelimit.py): the maths with a hand-moved clock, per-role budgets,
keys, headers, fail-open/closed, and the Redis backend shared by two limiter instances against
the real Redis (skipped with the reason when none answers; required when CI=true)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from callannotate.config import (
    BucketSettings,
    EventSettings,
    RateLimitSettings,
    RoleRateLimitTable,
    Settings,
    UserRateLimits,
)
from callannotate.errors import ServiceUnavailable
from callannotate.security.principal import ADMIN_ROLE, USER_ROLE, Principal
from callannotate.security.ratelimit import (
    ANONYMOUS_ROLE,
    BackendUnavailable,
    Budget,
    Decision,
    MemoryBackend,
    RateLimited,
    RateLimiter,
    RedisBackend,
    client_key,
    principal_key,
    quota_of,
    role_of,
)

REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class Clock:
    """The clock throttled-py's memory store reads (``throttled.utils.now_mono_f``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import throttled.utils

    fake = Clock()
    monkeypatch.setattr(throttled.utils, "now_mono_f", fake)
    return fake


def bucket(burst: int, per_second: float) -> BucketSettings:
    return BucketSettings(burst=burst, per_second=per_second)


async def hits(backend: MemoryBackend, key: str, spec: BucketSettings, n: int) -> list[Decision]:
    return [await backend.hit("reads", key, spec) for _ in range(n)]


async def test_burst_then_refused_with_the_wait(clock: Clock) -> None:
    backend = MemoryBackend()
    spec = bucket(3, 2.0)  # 3 at once, one more every 0.5 s
    first = await hits(backend, "k", spec, 3)
    assert [d.allowed for d in first] == [True, True, True]
    assert [d.remaining for d in first] == [2, 1, 0]
    assert first[-1].reset_after == pytest.approx(1.5)  # 3 tokens at 2/s until full
    refused = await backend.hit("reads", "k", spec)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.limit == 3


async def test_refill_gives_back_tokens_at_the_rate_up_to_the_burst(clock: Clock) -> None:
    backend = MemoryBackend()
    spec = bucket(3, 2.0)
    await hits(backend, "k", spec, 3)
    clock.advance(0.49)
    assert not (await backend.hit("reads", "k", spec)).allowed
    clock.advance(0.01)  # 0.5 s: one token back
    assert (await backend.hit("reads", "k", spec)).allowed
    assert not (await backend.hit("reads", "k", spec)).allowed
    clock.advance(3600)  # a long pause refills to the burst, not beyond
    after_pause = await hits(backend, "k", spec, 4)
    assert [d.allowed for d in after_pause] == [True, True, True, False]


async def test_slow_rates_keep_partial_tokens(clock: Clock) -> None:
    """0.2/s with a client every 3 s: burst 3 plus one per 5 s (throttled-py's own "token
    bucket" gets 51 here: it drops the partial token on every request)."""
    backend = MemoryBackend()
    spec = bucket(3, 0.2)
    allowed = 0
    for _ in range(100):  # 300 s
        allowed += (await backend.hit("uploads", "k", spec)).allowed
        clock.advance(3.0)
    assert allowed == 62  # 3 + 297 s * 0.2 = 62.4


async def test_keys_and_budgets_are_separate_buckets(clock: Clock) -> None:
    backend = MemoryBackend()
    spec = bucket(1, 1.0)
    assert (await backend.hit("reads", "a", spec)).allowed
    assert not (await backend.hit("reads", "a", spec)).allowed
    assert (await backend.hit("reads", "b", spec)).allowed
    assert (await backend.hit("uploads", "a", spec)).allowed


async def test_cost_takes_several_tokens(clock: Clock) -> None:
    backend = MemoryBackend()
    spec = bucket(5, 1.0)
    assert (await backend.hit("reads", "k", spec, cost=4)).remaining == 1
    assert not (await backend.hit("reads", "k", spec, cost=2)).allowed


def test_rates_are_kept_to_a_token_per_hour() -> None:
    assert quota_of(bucket(10, 0.1)).emission_interval == pytest.approx(10.0)
    assert quota_of(bucket(10, 250.0)).emission_interval == pytest.approx(0.004)
    assert quota_of(bucket(7, 1 / 3600)).burst == 7


def test_headers_follow_the_ietf_draft() -> None:
    allowed = Decision(True, "reads", 10, 7, 1.2, 0.0, 2.5)
    assert allowed.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "7",
        "RateLimit-Reset": "2",
        "RateLimit-Policy": '10;w=4;comment="reads"',
    }
    refused = Decision(False, "uploads", 2, 0, 9.1, 0.2, 0.25)
    headers = refused.headers()
    assert headers["Retry-After"] == "1"  # rounded up, never 0
    assert headers["RateLimit-Reset"] == "10"
    error = RateLimited(refused)
    assert error.status_code == 429 and error.code == "rate_limited"
    assert error.headers["Retry-After"] == "1"
    assert "uploads" in error.detail and "retry after 1 s" in error.detail


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "ip:192.0.2.7"
    # one host holds a whole IPv6 /64: its addresses share a bucket
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "ip:2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "ip:192.0.2.7"
    assert client_key(None) == "ip:unknown"
    assert client_key("testclient") == "ip:testclient"


def test_roles_and_principal_keys() -> None:
    admin = Principal(id="u1", roles=frozenset({ADMIN_ROLE}))
    user = Principal(id="u2", roles=frozenset({USER_ROLE}))
    assert role_of(admin) == ADMIN_ROLE
    assert role_of(user) == USER_ROLE
    assert role_of(Principal(id="svc")) == USER_ROLE  # no role: the user budgets
    assert role_of(None) == ANONYMOUS_ROLE
    assert principal_key(user) == "p:u2"


async def test_each_role_has_its_own_budgets(clock: Clock) -> None:
    settings = RateLimitSettings(
        roles=RoleRateLimitTable(user=UserRateLimits(reads=bucket(2, 1.0))),
        login=bucket(1, 1.0),
    )
    limiter = RateLimiter(settings, MemoryBackend())
    assert limiter.bucket(Budget.READS, USER_ROLE).burst == 2
    assert limiter.bucket(Budget.READS, ADMIN_ROLE).burst == 1200
    assert limiter.bucket(Budget.READS, ANONYMOUS_ROLE).burst == 120
    assert limiter.bucket(Budget.LOGIN, ANONYMOUS_ROLE).burst == 1
    assert limiter.bucket(Budget.UPLOADS, USER_ROLE).per_second == 0.5
    await limiter.check(Budget.READS, USER_ROLE, "p:u")
    await limiter.check(Budget.READS, USER_ROLE, "p:u")
    with pytest.raises(RateLimited) as caught:
        await limiter.check(Budget.READS, USER_ROLE, "p:u")
    assert caught.value.headers["RateLimit-Limit"] == "2"
    assert caught.value.headers["Retry-After"] == "1"
    # same key, admin budget: a separate, larger bucket size (the key's state is shared)
    assert (await limiter.check(Budget.UPLOADS, ADMIN_ROLE, "p:u")) is not None


def _rejections(scope: str) -> float:
    value = REGISTRY.get_sample_value("callannotate_rate_limit_rejections_total", {"scope": scope})
    return value or 0.0


async def test_rejections_are_counted_by_budget(clock: Clock) -> None:
    reads = bucket(1, 1.0)
    settings = RateLimitSettings(roles=RoleRateLimitTable(user=UserRateLimits(reads=reads)))
    limiter = RateLimiter(settings, MemoryBackend())
    before = {scope: _rejections(scope) for scope in ("reads", "uploads", "login")}
    key = f"p:{uuid.uuid4().hex}"
    assert (await limiter.hit(Budget.READS, USER_ROLE, key)).allowed  # type: ignore[union-attr]
    for _ in range(3):
        with pytest.raises(RateLimited):
            await limiter.check(Budget.READS, USER_ROLE, key)
    assert _rejections("reads") == before["reads"] + 3
    assert _rejections("uploads") == before["uploads"]  # allowed calls count nothing
    await limiter.check(Budget.UPLOADS, USER_ROLE, key)
    assert _rejections("uploads") == before["uploads"]


class DownBackend:
    """A backend whose store never answers (unit stub; the real Redis is tested below)."""

    name = "redis"

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, budget: str, key: str, spec: BucketSettings, cost: int = 1) -> Decision:
        self.calls += 1
        raise BackendUnavailable("ConnectionError: refused")

    async def close(self) -> None:
        return None


async def test_an_unreachable_store_fails_open_and_is_not_retried_every_request() -> None:
    now = [0.0]
    backend = DownBackend()
    limiter = RateLimiter(RateLimitSettings(), backend, clock=lambda: now[0])
    assert await limiter.check(Budget.READS, USER_ROLE, "p:u") is None
    assert await limiter.check(Budget.READS, USER_ROLE, "p:u") is None
    assert backend.calls == 1  # the second check skipped the store
    now[0] += 10
    assert await limiter.check(Budget.READS, USER_ROLE, "p:u") is None
    assert backend.calls == 2


async def test_an_unreachable_store_fails_closed_when_configured() -> None:
    limiter = RateLimiter(RateLimitSettings(fail_open=False), DownBackend())
    with pytest.raises(ServiceUnavailable):
        await limiter.check(Budget.READS, USER_ROLE, "p:u")


def test_backend_choice_follows_the_settings() -> None:
    memory = RateLimiter.from_settings(Settings())
    assert isinstance(memory.backend, MemoryBackend)
    shared = RateLimiter.from_settings(Settings(events=EventSettings(backend="redis")))
    assert isinstance(shared.backend, RedisBackend)
    assert shared.backend.url == EventSettings().redis_url
    explicit = RateLimiter.from_settings(
        Settings(rate_limits=RateLimitSettings(backend="redis", redis_url="redis://h:1/2"))
    )
    assert isinstance(explicit.backend, RedisBackend) and explicit.backend.url == "redis://h:1/2"


# --------------------------------------------------------------------------- real Redis


async def _require_redis() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:
        message = f"Redis not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires Redis: {message}")
        pytest.skip(message)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    await _require_redis()
    prefix = f"test-rl-{uuid.uuid4().hex[:8]}"
    yield prefix
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_two_limiters_share_one_budget_through_redis(redis_prefix: str) -> None:
    settings = RateLimitSettings(
        roles=RoleRateLimitTable(user=UserRateLimits(uploads=bucket(4, 1 / 3600)))
    )
    a = RateLimiter(settings, RedisBackend(REDIS_URL, key_prefix=redis_prefix))
    b = RateLimiter(settings, RedisBackend(REDIS_URL, key_prefix=redis_prefix))
    try:
        taken = [
            await a.hit(Budget.UPLOADS, USER_ROLE, "p:alice"),
            await b.hit(Budget.UPLOADS, USER_ROLE, "p:alice"),
            await a.hit(Budget.UPLOADS, USER_ROLE, "p:alice"),
            await b.hit(Budget.UPLOADS, USER_ROLE, "p:alice"),
        ]
        assert all(d is not None and d.allowed for d in taken)
        assert [d.remaining for d in taken if d] == [3, 2, 1, 0]
        refused = await a.hit(Budget.UPLOADS, USER_ROLE, "p:alice")
        assert refused is not None and not refused.allowed
        assert 3500 < refused.retry_after <= 3600  # one token per hour
        with pytest.raises(RateLimited):
            await b.check(Budget.UPLOADS, USER_ROLE, "p:alice")
        other = await b.hit(Budget.UPLOADS, USER_ROLE, "p:bob")  # another principal
        assert other is not None and other.allowed
    finally:
        await a.close()
        await b.close()


async def test_redis_buckets_refill_at_the_rate(redis_prefix: str) -> None:
    backend = RedisBackend(REDIS_URL, key_prefix=redis_prefix)
    spec = bucket(2, 2.0)  # one token back every 0.5 s
    try:
        first = [await backend.hit("reads", "p:dave", spec) for _ in range(3)]
        assert [d.allowed for d in first] == [True, True, False]
        assert 0 < first[-1].retry_after <= 0.5
        await asyncio.sleep(first[-1].retry_after + 0.05)
        assert (await backend.hit("reads", "p:dave", spec)).allowed
    finally:
        await backend.close()


async def test_concurrent_checks_never_overspend_the_redis_budget(redis_prefix: str) -> None:
    spec = bucket(25, 1 / 3600)  # no refill during the test
    backends = [RedisBackend(REDIS_URL, key_prefix=redis_prefix) for _ in range(4)]
    try:
        allowed = 0
        for _ in range(3):  # waves of 40 concurrent checks, 10 per backend
            results = await asyncio.gather(
                *(backends[i % 4].hit("reads", "p:carol", spec) for i in range(40))
            )
            allowed += sum(d.allowed for d in results)
        assert allowed == 25
    finally:
        for backend in backends:
            await backend.close()


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")  # nothing listens on port 1
    limiter = RateLimiter(RateLimitSettings(), backend)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.hit("reads", "p:u", bucket(1, 1.0))
        assert await limiter.hit(Budget.READS, USER_ROLE, "p:u") is None  # fail open
    finally:
        await limiter.close()
