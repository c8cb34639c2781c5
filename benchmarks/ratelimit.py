"""What the rate limiter costs per request.

1. One check, in microseconds: the memory backend (throttled-py's GCRA under a lock), called
   directly and through :meth:`RateLimiter.check` on an event loop; the Redis backend (one
   ``EVALSHA`` round trip), one check at a time and 50 at a time.
2. ``GET /jobs/{id}`` requests per second through the whole app (httpx ``ASGITransport``, in
   this process, so the figure is server CPU per request): limits off, memory, Redis.

    .venv/bin/python benchmarks/ratelimit.py [--checks 200000] [--requests 3000]

Redis is ``$CALLANNOTATE_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15); its part is
skipped with a note when it does not answer. Budgets are set high enough that nothing is
refused: the figures are the cost of counting, not of refusing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
import wave
from pathlib import Path

import httpx
import numpy as np

from callannotate.config import (
    AdminRateLimits,
    ApiSettings,
    AuthSettings,
    BucketSettings,
    EventSettings,
    RateLimitSettings,
    RoleRateLimitTable,
    Settings,
    UserRateLimits,
)
from callannotate.security.principal import USER_ROLE
from callannotate.security.ratelimit import Budget, MemoryBackend, RateLimiter, RedisBackend

REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BIG = BucketSettings(burst=10**9, per_second=10**6)
KEYS = [f"p:user{i}" for i in range(1000)]


def us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def bench_memory(n: int) -> None:
    backend = MemoryBackend()
    t0 = time.perf_counter()
    for i in range(n):
        backend.hit_now("reads", KEYS[i % len(KEYS)], BIG)
    direct = time.perf_counter() - t0
    print(f"memory backend, direct:            {us(direct, n):7.2f} µs/check ({n} checks)")

    limits = RateLimitSettings(roles=RoleRateLimitTable(user=UserRateLimits(reads=BIG)))
    limiter = RateLimiter(limits, MemoryBackend())

    async def through_limiter() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await limiter.check(Budget.READS, USER_ROLE, KEYS[i % len(KEYS)])
        return time.perf_counter() - t0

    wrapped = asyncio.run(through_limiter())
    print(f"memory, RateLimiter.check (async): {us(wrapped, n):7.2f} µs/check")


async def redis_ok() -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


async def cleanup(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def bench_redis(n: int) -> None:
    prefix = f"bench-rl-{uuid.uuid4().hex[:8]}"
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(REDIS_URL)
    await raw.ping()
    t0 = time.perf_counter()
    for _ in range(n):
        await raw.ping()
    ping = time.perf_counter() - t0
    await raw.aclose()
    print(f"redis PING round trip (baseline):  {us(ping, n):7.1f} µs")
    backend = RedisBackend(REDIS_URL, key_prefix=prefix)
    try:
        await backend.hit("reads", "warm", BIG)
        t0 = time.perf_counter()
        for i in range(n):
            await backend.hit("reads", KEYS[i % len(KEYS)], BIG)
        serial = time.perf_counter() - t0
        print(f"redis backend, one at a time:      {us(serial, n):7.1f} µs/check ({n} checks)")
        batch = 50
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            await asyncio.gather(
                *(backend.hit("reads", KEYS[(start + j) % len(KEYS)], BIG) for j in range(batch))
            )
        concurrent = time.perf_counter() - t0
        print(
            f"redis backend, {batch} concurrent:       {us(concurrent, n):7.1f} µs/check "
            f"({n / concurrent:,.0f} checks/s)"
        )
    finally:
        await backend.close()
        await cleanup(prefix)


def tone(path: Path) -> Path:
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


def app_settings(data_dir: Path, mode: str, prefix: str) -> Settings:
    big = AdminRateLimits(uploads=BIG, reads=BIG, ws_connect=BIG, ws_messages=BIG)
    limits = RateLimitSettings(
        enabled=mode != "off",
        backend="redis" if mode == "redis" else "memory",
        roles=RoleRateLimitTable(admin=big),
    )
    return Settings(
        data_dir=data_dir,
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=False),  # the limiter's cost alone (auth: api_throughput.py)
        rate_limits=limits,
        events=EventSettings(redis_url=REDIS_URL, redis_prefix=prefix),
    )


async def bench_requests(requests: int, clients: int, rounds: int, with_redis: bool) -> None:
    """The apps run side by side and their rounds alternate, so a change of machine load
    during the run hits every mode alike; the median round of each mode is reported."""
    from callannotate.api.app import create_app

    modes = ["off", "memory"] + (["redis"] if with_redis else [])
    prefix = f"bench-rl-app-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wav = tone(folder / "tone.wav").read_bytes()
        apps = {mode: create_app(app_settings(folder / mode, mode, prefix)) for mode in modes}
        async with contextlib.AsyncExitStack() as stack:
            urls: dict[str, tuple[httpx.AsyncClient, str]] = {}
            for mode, app in apps.items():
                await stack.enter_async_context(app.router.lifespan_context(app))
                client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app), base_url="http://bench"
                    )
                )
                r = await client.post("/jobs", files={"file": ("a.wav", wav, "audio/wav")})
                r.raise_for_status()
                urls[mode] = (client, f"/jobs/{r.json()['id']}")
                for _ in range(200):  # warm up
                    (await client.get(urls[mode][1])).raise_for_status()

            async def worker(mode: str, count: int) -> None:
                client, url = urls[mode]
                for _ in range(count):
                    response = await client.get(url)
                    if response.status_code != 200:
                        raise RuntimeError(f"{mode}: {response.status_code} {response.text}")

            results: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(rounds):
                for mode in modes:
                    t0 = time.perf_counter()
                    await asyncio.gather(
                        *(worker(mode, requests // clients) for _ in range(clients))
                    )
                    results[mode].append(requests / (time.perf_counter() - t0))
            for app in apps.values():
                limiter = getattr(app.state, "rate_limiter", None)
                if limiter is not None:
                    await limiter.close()
        if with_redis:
            await cleanup(prefix)
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    base = medians["off"]
    print(
        f"\nGET /jobs/{{id}} through the app (ASGITransport, {clients} concurrent clients, "
        f"median of {rounds} alternating rounds of {requests}):"
    )
    for mode, rps in medians.items():
        line = f"  limits {mode:<6} {rps:8,.0f} req/s"
        if mode != "off":
            line += (
                f"  ({(base - rps) / base * 100:+.1f} % throughput cost, "
                f"{(1 / rps - 1 / base) * 1e6:+.0f} µs/request)"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200_000, help="checks per memory figure")
    parser.add_argument("--redis-checks", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=3000, help="GETs per app round")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.1f}")
    bench_memory(args.checks)
    why = asyncio.run(redis_ok())
    if why is None:
        asyncio.run(bench_redis(args.redis_checks))
    else:
        print(f"redis: skipped ({REDIS_URL}: {why})")
    asyncio.run(bench_requests(args.requests, args.clients, args.rounds, with_redis=why is None))


if __name__ == "__main__":
    main()
