"""Token-bucket rate limits: each principal's budgets (a client address's when anonymous).

A *bucket* holds at most ``burst`` tokens and gains ``per_second`` tokens per second; a request
takes one token or is refused with the time until one is back. Every caller has one bucket per
*budget* (:class:`Budget`): uploads, reads, WebSocket connects, WebSocket messages, and logins
(per client address). The sizes come from ``settings.rate_limits`` by role (``admin``,
``user``, ``anonymous``).

The algorithm and its storage come from `throttled-py <https://pypi.org/project/throttled-py/>`_
(MIT, maintained): its **GCRA** limiter, which is the token bucket written with one timestamp
per key (the "theoretical arrival time"; ITU-T I.371 shows the two are the same meter): a bucket
of ``burst`` tokens refilled continuously at ``per_second``. Its state is updated atomically: a
lock in memory, one Lua script per check in Redis (``EVALSHA``, clock from Redis ``TIME`` so
processes on several hosts agree). We do not use throttled-py's limiter named "token bucket":
it counts whole seconds and resets its refill time on every request, so a rate below one per
second loses the partial token each time (a client calling every 3 s against 0.2/s got 51
requests in 300 s instead of 63; GCRA gives 62, the 63rd being due at the end). See
docs/security.md "Rate limits".

Backends: :class:`MemoryBackend` (one process; an LRU of at most ``memory_max_keys`` buckets)
and :class:`RedisBackend` (shared by every API process). Nothing here knows about HTTP: the
API glue is :mod:`callannotate.api.ratelimit`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from throttled.rate_limiter import GCRARateLimiter, Quota, Rate
from throttled.store import MemoryStore

from callannotate.config import BucketSettings, RateLimitSettings, RoleRateLimits, Settings
from callannotate.errors import CallAnnotateError, ServiceUnavailable
from callannotate.observability.metrics import observe_rate_limit_rejection
from callannotate.security.principal import ADMIN_ROLE, USER_ROLE, Principal

if TYPE_CHECKING:
    from throttled.asyncio.rate_limiter import GCRARateLimiter as AsyncGCRARateLimiter
    from throttled.asyncio.store import RedisStore

log = logging.getLogger(__name__)

ANONYMOUS_ROLE = "anonymous"
ROLES = (ADMIN_ROLE, USER_ROLE, ANONYMOUS_ROLE)
#: Rates are stored as whole tokens per this period (throttled-py's quota is an integer count
#: per whole seconds): one hour gives a resolution of 1/3600 token per second.
RATE_PERIOD_S = 3600
#: Redis socket timeouts: a slow Redis must not hold requests for long.
REDIS_TIMEOUT_S = 1.0
#: After a Redis failure, seconds during which checks skip Redis (no timeout per request).
BACKEND_RETRY_S = 5.0


class Budget(StrEnum):
    UPLOADS = "uploads"
    READS = "reads"
    WS_CONNECT = "ws_connect"
    WS_MESSAGES = "ws_messages"
    LOGIN = "login"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check against one bucket."""

    allowed: bool
    budget: str
    limit: int
    """The bucket size (``burst``)."""
    remaining: int
    """Whole tokens left after this request."""
    reset_after: float
    """Seconds until the bucket is full again."""
    retry_after: float
    """Seconds until the next request would be allowed (0 when allowed)."""
    per_second: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` fields (IETF draft-ietf-httpapi-ratelimit-headers), plus
        ``Retry-After`` when refused. Seconds are rounded up, never down."""
        window = max(1, math.ceil(self.limit / self.per_second))
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_after))),
            "RateLimit-Policy": f'{self.limit};w={window};comment="{self.budget}"',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as raw ASGI header pairs (lower-case names)."""
        return [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers().items()
        ]


class RateLimited(CallAnnotateError):
    """Over a budget: 429 with ``Retry-After`` and ``RateLimit-*`` headers."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, decision: Decision) -> None:
        wait = max(1, math.ceil(decision.retry_after))
        super().__init__(
            f"too many requests ({decision.budget}: {decision.limit} at once, "
            f"{decision.per_second:g} per second); retry after {wait} s"
        )
        self.decision = decision
        self.headers = decision.headers()


class BackendUnavailable(Exception):
    """The shared store (Redis) did not answer."""


def quota_of(bucket: BucketSettings) -> Quota:
    """throttled-py's quota for ``bucket``: ``per_second`` as whole tokens per hour."""
    per_period = max(1, round(bucket.per_second * RATE_PERIOD_S))
    return Quota(
        Rate(period=timedelta(seconds=RATE_PERIOD_S), limit=per_period), burst=bucket.burst
    )


def _decision(
    budget: str, bucket: BucketSettings, limited: bool, state: tuple[int, int, float, float]
) -> Decision:
    limit, remaining, reset_after, retry_after = state
    return Decision(
        allowed=not limited,
        budget=budget,
        limit=limit,
        remaining=remaining,
        reset_after=reset_after,
        retry_after=retry_after,
        per_second=bucket.per_second,
    )


class LimiterBackend(Protocol):
    """Where the buckets live."""

    name: str

    async def hit(self, budget: str, key: str, bucket: BucketSettings, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s ``budget`` bucket (sized ``bucket``)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryBackend:
    """Buckets in this process: throttled-py's ``MemoryStore`` (an LRU guarded by a lock).

    Its clock is ``throttled.utils.now_mono_f`` (monotonic); unit tests replace that function
    to move time by hand. A bucket that refilled completely expires from the store, so idle
    callers cost nothing; past ``max_keys`` the least recently used bucket is dropped (it
    starts full again if that caller comes back).
    """

    name = "memory"

    def __init__(self, max_keys: int = 100_000, key_prefix: str = "callannotate:ratelimit") -> None:
        self._store = MemoryStore(options={"MAX_SIZE": max_keys})
        self._prefix = key_prefix
        self._limiters: dict[tuple[int, float], GCRARateLimiter] = {}

    def _limiter(self, bucket: BucketSettings) -> GCRARateLimiter:
        spec = (bucket.burst, bucket.per_second)
        limiter = self._limiters.get(spec)
        if limiter is None:
            limiter = GCRARateLimiter(quota_of(bucket), self._store, key_prefix=self._prefix)
            self._limiters[spec] = limiter
        return limiter

    def hit_now(self, budget: str, key: str, bucket: BucketSettings, cost: int = 1) -> Decision:
        """:meth:`hit` without the coroutine (it never waits)."""
        result = self._limiter(bucket).limit(f"{budget}:{key}", cost)
        state = result.state
        return _decision(
            budget,
            bucket,
            result.limited,
            (state.limit, state.remaining, state.reset_after, state.retry_after),
        )

    async def hit(self, budget: str, key: str, bucket: BucketSettings, cost: int = 1) -> Decision:
        return self.hit_now(budget, key, bucket, cost)

    async def close(self) -> None:
        return None


class RedisBackend:
    """Buckets in Redis, shared by every process that uses the same URL and prefix.

    One ``EVALSHA`` round trip per check (throttled-py's GCRA Lua script). The asyncio client
    belongs to the event loop that first used it; a check from another loop (a test client
    started twice) builds a new one.
    """

    name = "redis"

    def __init__(self, url: str, key_prefix: str = "callannotate:ratelimit") -> None:
        self.url = url
        self._prefix = key_prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: RedisStore | None = None
        self._limiters: dict[tuple[int, float], AsyncGCRARateLimiter] = {}

    def _current_store(self) -> RedisStore:
        from throttled.asyncio.store import RedisStore

        loop = asyncio.get_running_loop()
        if self._store is None or self._loop is not loop:
            self._store = RedisStore(
                server=self.url,
                options={
                    "SOCKET_TIMEOUT": REDIS_TIMEOUT_S,
                    "SOCKET_CONNECT_TIMEOUT": REDIS_TIMEOUT_S,
                },
            )
            self._loop = loop
            self._limiters = {}
        return self._store

    def _limiter(self, bucket: BucketSettings) -> AsyncGCRARateLimiter:
        from throttled.asyncio.rate_limiter import GCRARateLimiter as AsyncGCRA

        store = self._current_store()
        spec = (bucket.burst, bucket.per_second)
        limiter = self._limiters.get(spec)
        if limiter is None:
            limiter = AsyncGCRA(quota_of(bucket), store, key_prefix=self._prefix)
            self._limiters[spec] = limiter
        return limiter

    async def hit(self, budget: str, key: str, bucket: BucketSettings, cost: int = 1) -> Decision:
        from redis.exceptions import RedisError
        from throttled.exceptions import StoreUnavailableError

        limiter = self._limiter(bucket)
        try:
            result = await limiter.limit(f"{budget}:{key}", cost)
        except (StoreUnavailableError, RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        state = result.state
        return _decision(
            budget,
            bucket,
            result.limited,
            (state.limit, state.remaining, state.reset_after, state.retry_after),
        )

    async def close(self) -> None:
        store, self._store, self._limiters = self._store, None, {}
        if store is None or self._loop is not asyncio.get_running_loop():
            return
        # throttled-py keeps the client on its backend; it has no close of its own.
        client: Any = store._backend.get_client()
        await client.aclose()


def role_of(principal: Principal | None) -> str:
    """The rate-limit role: ``admin``, ``user`` (any other authenticated caller) or
    ``anonymous``."""
    if principal is None:
        return ANONYMOUS_ROLE
    return ADMIN_ROLE if principal.is_admin else USER_ROLE


def principal_key(principal: Principal) -> str:
    return f"p:{principal.id}"


def client_key(host: str | None) -> str:
    """The bucket key of a client address; an IPv6 address counts by its /64 (one host
    usually holds a whole /64, so per-address keys would be free to multiply)."""
    if not host:
        return "ip:unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"ip:{host[:64]}"
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return f"ip:{mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


class RateLimiter:
    """Checks callers against the configured budgets, on one backend."""

    def __init__(
        self,
        settings: RateLimitSettings,
        backend: LimiterBackend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self._clock = clock
        self._down_until = 0.0
        self._last_warning = -math.inf
        #: (method, route template) -> its budgets, ``None`` when exempt (api.ratelimit fills it)
        self.route_plans: dict[tuple[str, str], tuple[Budget, ...] | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        rl = settings.rate_limits
        use_redis = rl.backend == "redis" or (
            rl.backend == "auto" and settings.events.backend == "redis"
        )
        prefix = f"{settings.events.redis_prefix.strip(':') or 'callannotate'}:ratelimit"
        backend: LimiterBackend
        if use_redis:
            backend = RedisBackend(rl.redis_url or settings.events.redis_url, key_prefix=prefix)
        else:
            backend = MemoryBackend(rl.memory_max_keys, key_prefix=prefix)
        return cls(rl, backend)

    def role_limits(self, role: str) -> RoleRateLimits:
        roles = self.settings.roles
        if role == ADMIN_ROLE:
            return roles.admin
        if role == USER_ROLE:
            return roles.user
        return roles.anonymous

    def bucket(self, budget: Budget, role: str) -> BucketSettings:
        if budget is Budget.LOGIN:
            return self.settings.login
        limits = self.role_limits(role)
        if budget is Budget.UPLOADS:
            return limits.uploads
        if budget is Budget.READS:
            return limits.reads
        if budget is Budget.WS_CONNECT:
            return limits.ws_connect
        return limits.ws_messages

    async def hit(self, budget: Budget, role: str, key: str, cost: int = 1) -> Decision | None:
        """Take ``cost`` tokens from ``key``'s bucket; ``None`` when the backend is down and
        ``fail_open`` lets the request through (a 503 :class:`ServiceUnavailable` otherwise).

        Every refused decision refuses a call (429, a WebSocket closed, a message dropped), so
        it is counted here in ``callannotate_rate_limit_rejections_total{scope=<budget>}``."""
        bucket = self.bucket(budget, role)
        if self._down_until and self._clock() < self._down_until:
            self._unavailable("still unreachable")
            return None
        try:
            decision = await self.backend.hit(budget.value, key, bucket, cost)
        except BackendUnavailable as exc:
            self._down_until = self._clock() + BACKEND_RETRY_S
            self._unavailable(str(exc))
            return None
        self._down_until = 0.0
        if not decision.allowed:
            observe_rate_limit_rejection(budget.value)
        return decision

    async def check(self, budget: Budget, role: str, key: str, cost: int = 1) -> Decision | None:
        """:meth:`hit`, raising :class:`RateLimited` when the bucket is empty."""
        decision = await self.hit(budget, role, key, cost)
        if decision is not None and not decision.allowed:
            raise RateLimited(decision)
        return decision

    def _unavailable(self, reason: str) -> None:
        now = self._clock()
        if now - self._last_warning >= 30.0:
            self._last_warning = now
            log.warning(
                "rate limiter backend %s unavailable (%s); requests are %s",
                self.backend.name,
                reason,
                "allowed" if self.settings.fail_open else "refused with 503",
            )
        if not self.settings.fail_open:
            raise ServiceUnavailable("rate limiter unavailable; retry later")

    async def close(self) -> None:
        await self.backend.close()
