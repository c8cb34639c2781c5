"""Audit log figures: the middleware's cost on a call it does not record, append throughput
(background writer and inline) and chain verification speed, on SQLite (a file in a temporary
folder) and on PostgreSQL when it answers.

    .venv/bin/python benchmarks/audit_log.py [--records 5000]

Prints one line per figure; no pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.db.testing import postgres_admin_url, temporary_postgres_database
from callannotate.security.audit import AuditEntry, AuditLog
from callannotate.security.audit_store import AuditStore, verify_chain


def _entry(i: int) -> AuditEntry:
    return AuditEntry(
        verb="read_audio",
        resource_type="job",
        resource_id=f"j-{i:016x}",
        principal_id="0f3c2a9e5b7d4c1a8e6f0b2d4a6c8e0f",
        client_ip="203.0.113.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) benchmark",
        request_id=f"{i:032x}",
        status=206,
        detail={"method": "GET", "path": f"/jobs/j-{i:016x}/audio", "range": "bytes=0-"},
    )


def _databases() -> Iterator[tuple[str, Database]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(db)
        yield "sqlite", db
        db.dispose()
    url, why = postgres_admin_url()
    if url is None:
        print(f"postgresql: skipped ({why})")
        return
    with temporary_postgres_database(url) as pg_url:
        db = Database(pg_url)
        upgrade_database(db)
        yield "postgresql", db
        db.dispose()


def run(records: int) -> None:
    for name, db in _databases():
        log = AuditLog(db, background=True)
        log.settings.log_records = False  # the figure is the table write, not stderr
        started = time.perf_counter()
        for i in range(records):
            log.record(_entry(i))
        queued = time.perf_counter() - started
        log.close()
        total = time.perf_counter() - started
        print(
            f"{name}: background writer {records} records: {records / total:,.0f} records/s "
            f"stored; record() call {queued / records * 1e6:.1f} µs each"
        )
        inline = AuditLog(db, background=False)
        inline.settings.log_records = False
        times = []
        for i in range(200):
            t0 = time.perf_counter()
            inline.record(_entry(records + i))
            times.append(time.perf_counter() - t0)
        times.sort()
        p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
        print(
            f"{name}: inline write, one record per transaction: "
            f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"
        )
        t0 = time.perf_counter()
        report = verify_chain(AuditStore(db))
        elapsed = time.perf_counter() - t0
        assert report.ok
        print(
            f"{name}: verify {report.checked} records in {elapsed:.2f} s "
            f"({report.checked / elapsed:,.0f} records/s)"
        )


def middleware_cost(requests: int = 50_000) -> None:
    """Time per request that AuditMiddleware adds to a call it does not record (a status
    poll, ``GET /jobs/{id}``): a bare ASGI app answering 200, with and without it."""
    import asyncio
    from types import SimpleNamespace

    from callannotate.api.audit_middleware import AuditMiddleware

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app_state = SimpleNamespace(state=SimpleNamespace())
    headers = [(b"host", b"t"), (b"user-agent", b"bench"), (b"authorization", b"Bearer x")]

    async def drive(app: Any) -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            return None

        started = time.perf_counter()
        for _ in range(requests):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/jobs/j-1",
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "app": app_state,
            }
            await app(scope, receive, send)
        return (time.perf_counter() - started) / requests

    without = asyncio.run(drive(bare))
    with_mw = asyncio.run(drive(AuditMiddleware(bare)))
    print(
        f"AuditMiddleware on an unrecorded GET: {(with_mw - without) * 1e6:.1f} µs per request "
        f"({without * 1e6:.1f} µs bare app, {with_mw * 1e6:.1f} µs with it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args()
    middleware_cost()
    run(args.records)


if __name__ == "__main__":
    main()
