"""Readiness checks of the service's dependencies, each with its outcome and latency.

``GET /ready`` adds these to its own checks (models, queue, workers), and
``callannotate healthcheck`` asks ``/ready`` (or ``/health``) for container health checks.
Each outcome starts with ``ok`` when the dependency is usable and names the problem
otherwise; the time the check took is part of the text (``ok (12.1 GiB free, 0.3 ms)``).

* ``data_dir``: the data folder's filesystem has room for two uploads of the largest allowed
  size (``2 x api.max_upload_bytes``: the upload and its staging copy);
* ``database``: ``SELECT 1`` on the configured database (skipped while none is configured
  and the default SQLite file does not exist yet: nothing uses it);
* ``redis``: ``PING`` when the event bus is Redis;
* ``heartbeat``: every running job's lease was renewed within the lease period.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue

GIB = 1024**3


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    latency_ms: float

    @property
    def outcome(self) -> str:
        """The text ``/ready`` shows: ``ok (...)`` or the problem, with the latency."""
        text = f"ok ({self.detail}, " if self.ok else f"{self.detail} ("
        return f"{text}{self.latency_ms:.1f} ms)"


def _timed(name: str, check: Callable[[], tuple[bool, str]]) -> CheckResult:
    start = time.perf_counter()
    try:
        ok, detail = check()
    except Exception as exc:  # a dependency failing in an unexpected way is "not ok"
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    return CheckResult(name, ok, detail, (time.perf_counter() - start) * 1000.0)


def check_data_dir(settings: Settings, queue: FileQueue) -> tuple[bool, str]:
    usage = shutil.disk_usage(queue.root)
    need = 2 * settings.api.max_upload_bytes
    free = f"{usage.free / GIB:.1f} GiB free"
    if usage.free < need:
        return False, f"only {free}; need {need / GIB:.1f} GiB for uploads"
    return True, free


_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()


def check_database(settings: Settings) -> tuple[bool, str] | None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from callannotate.db.engine import database_url, make_engine

    url = database_url(settings)
    parsed = make_url(url)
    configured = bool(settings.database.url or settings.database_url)
    if not configured and parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or not _exists(path):
            return None  # the default SQLite store was never created: nothing uses it
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url, timeout=settings.database.connect_timeout_s, pool_size=1)
            _engines[url] = engine
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return True, parsed.get_backend_name()


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def check_redis(settings: Settings) -> tuple[bool, str] | None:
    if settings.events.backend != "redis":
        return None
    import redis

    client = redis.Redis.from_url(
        settings.events.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    try:
        client.ping()
    finally:
        client.close()
    return True, "ping"


def check_heartbeats(settings: Settings, queue: FileQueue) -> tuple[bool, str]:
    from callannotate.observability.collector import stalest_lease

    age = stalest_lease(queue, time.time())
    limit = settings.queue.lease_seconds
    if age > limit:
        return False, f"a running job's lease was last renewed {age:.0f} s ago (> {limit:g} s)"
    return True, f"stalest lease {age:.0f} s"


def dependency_checks(settings: Settings, queue: FileQueue) -> list[CheckResult]:
    """Run every dependency check that applies to this configuration."""
    results = [
        _timed("data_dir", lambda: check_data_dir(settings, queue)),
        _timed("heartbeat", lambda: check_heartbeats(settings, queue)),
    ]
    optional: list[tuple[str, Callable[[], tuple[bool, str] | None]]] = [
        ("database", lambda: check_database(settings)),
        ("redis", lambda: check_redis(settings)),
    ]
    for name, check in optional:
        start = time.perf_counter()
        try:
            outcome = check()
        except Exception as exc:
            outcome = (False, f"{type(exc).__name__}: {str(exc)[:200]}")
        if outcome is not None:
            results.append(
                CheckResult(name, outcome[0], outcome[1], (time.perf_counter() - start) * 1000)
            )
    return results


def dependency_outcomes(settings: Settings, queue: FileQueue) -> dict[str, str]:
    """``{name: outcome}`` for ``/ready``'s ``checks``."""
    return {r.name: r.outcome for r in dependency_checks(settings, queue)}
