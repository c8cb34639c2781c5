"""Cost of authentication per operation: argon2 hash/verify, JWT encode/decode, and the
principal lookups the API does per request (JWT with a warm cache, API key warm and cold).

    .venv/bin/python benchmarks/auth.py [--rounds 20] [--jwt-rounds 20000] [--database-url URL]

argon2 runs at the library's default cost (what production uses: t=3, m=64 MiB, p=4) and at
the cheap cost the tests use. Figures are medians (and p99 for the fast paths); on a shared
machine they are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from callannotate.config import AuthSettings, DatabaseSettings, Settings
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.security.keyring import KeyRing
from callannotate.security.passwords import Passwords
from callannotate.security.service import AuthService
from callannotate.security.tokens import TokenCodec


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> None:
    times = sorted(times)
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    unit, scale = ("ms", 1e3) if p50 >= 1e-3 else ("µs", 1e6)
    print(
        f"{name:44} p50 {p50 * scale:9.2f} {unit}   p99 {p99 * scale:9.2f} {unit}   "
        f"({len(times)} runs, {1 / p50:,.0f}/s)"
    )


def bench_argon2(rounds: int) -> None:
    """argon2id hash and verify at the production cost and at the tests' cost (also used by
    api_throughput.py --auth next to the login route's figure)."""
    for label, auth in (
        ("argon2id default (t=3, m=64 MiB, p=4)", AuthSettings()),
        (
            "argon2id test cost (t=1, m=1 MiB, p=1)",
            AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024),
        ),
    ):
        passwords = Passwords(auth)
        hashed = passwords.hash("correct horse battery")
        report(
            f"{label}: hash",
            timed(lambda p=passwords: p.hash("correct horse battery"), rounds),
        )
        report(
            f"{label}: verify",
            timed(lambda p=passwords, h=hashed: p.verify("correct horse battery", h), rounds),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="argon2 runs per figure")
    parser.add_argument("--jwt-rounds", type=int, default=20000, help="fast-path runs")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args()
    bench_argon2(args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database=DatabaseSettings(url=args.database_url),
            auth=AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024),
        )
        codec = TokenCodec(settings.auth, KeyRing.from_settings(settings))
        token, _ = codec.encode("user", frozenset({"read", "write"}))
        report(
            "JWT HS256 encode",
            timed(lambda: codec.encode("user", frozenset({"read"})), args.jwt_rounds),
        )
        report("JWT HS256 decode + verify", timed(lambda: codec.decode(token), args.jwt_rounds))

        db = Database.from_settings(settings)
        upgrade_database(db)
        service = AuthService(settings, db)
        user = service.create_user("bench", "correct horse battery")
        access = service.login("bench", "correct horse battery", None).access_token
        _, key = service.create_api_key(user.id, "bench", None)

        def jwt_principal() -> object:
            claims = service.codec.decode(access)
            return service.cached_principal(claims) or service.principal_from_claims(claims)

        report("JWT -> principal (user cache warm)", timed(jwt_principal, args.jwt_rounds))

        def jwt_cold() -> object:
            service.invalidate()
            return service.principal_from_jwt(access)

        report(f"JWT -> principal (cold, {db.dialect} lookup)", timed(jwt_cold, 500))
        service.principal_from_api_key(key)
        report(
            "API key -> principal (cache warm)",
            timed(lambda: service.cached_api_key(key), args.jwt_rounds),
        )

        def key_cold() -> object:
            service.invalidate()
            return service.principal_from_api_key(key)

        report(f"API key -> principal (cold, {db.dialect} lookup)", timed(key_cold, 500))
        db.dispose()


if __name__ == "__main__":
    main()
