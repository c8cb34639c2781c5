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
* ``heartbeat``: every running job's lease was renewed within the lease period;
* ``contacts``: each connected CardDAV account's server answers a ``PROPFIND`` (depth 0) of
  its address book with the stored credentials (:mod:`callannotate.contacts.probe`; cached
  for a few seconds; skipped while no account is connected).

Contacts are a degradable feature (served from the local cache while the server is away), so
their check is never a reason for 503: a failing one reads ``degraded: ...``
(:func:`is_failing` tells the two apart). ``callannotate healthcheck --local`` runs only the
required checks (:func:`dependency_checks`).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue

if TYPE_CHECKING:
    from callannotate.contacts.probe import ContactsProbe

GIB = 1024**3


DEGRADED = "degraded"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    latency_ms: float
    required: bool = True  # False: a failure degrades a feature, the service stays ready

    @property
    def outcome(self) -> str:
        """The text ``/ready`` shows: ``ok (...)``, ``degraded: ...`` (an optional feature)
        or the problem, with the latency."""
        if self.ok:
            text = f"ok ({self.detail}, "
        elif self.required:
            text = f"{self.detail} ("
        else:
            text = f"{DEGRADED}: {self.detail} ("
        return f"{text}{self.latency_ms:.1f} ms)"


def is_failing(outcome: str) -> bool:
    """Whether a check's outcome makes ``/ready`` 503 (neither ``ok`` nor ``degraded``)."""
    return not outcome.startswith(("ok", f"{DEGRADED}:"))


def public_outcome(outcome: str) -> str:
    """What a caller who may not see details gets for a passing check: ``ok`` or
    ``degraded``, never the detail."""
    return DEGRADED if outcome.startswith(f"{DEGRADED}:") else "ok"


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


def _engine(settings: Settings) -> tuple[str, Any] | None:
    """``(url, engine)`` of the configured database (one engine per URL, kept), or None
    while none is configured and the default SQLite file does not exist."""
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
    return url, engine


def check_database(settings: Settings) -> tuple[bool, str] | None:
    from sqlalchemy import text

    found = _engine(settings)
    if found is None:
        return None
    _, engine = found
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return True, engine.dialect.name


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


_contacts_probe: ContactsProbe | None = None
_contacts_tables: set[str] = set()  # database URLs known to have the contacts tables


def contacts_probe() -> ContactsProbe:
    """The process's :class:`~callannotate.contacts.probe.ContactsProbe` (its cache)."""
    global _contacts_probe
    with _engines_lock:
        if _contacts_probe is None:
            from callannotate.contacts.probe import ContactsProbe

            _contacts_probe = ContactsProbe()
        return _contacts_probe


def check_contacts(settings: Settings) -> tuple[bool, str] | None:
    """Each connected CardDAV account's server (skipped while there is none)."""
    found = _engine(settings)
    if found is None:
        return None
    url, engine = found
    if url not in _contacts_tables:
        from sqlalchemy import inspect

        if not inspect(engine).has_table("contact_accounts"):
            return None  # the store was never migrated this far: no account can exist
        _contacts_tables.add(url)
    results, total = contacts_probe().results(settings, url, engine)
    if not results:
        return None
    bad = [r for r in results if not r.ok]
    servers = len({r.server for r in results})
    slowest = max(r.latency_ms for r in results)
    probed = f"{len(results)} of {total}" if total > len(results) else f"{len(results)}"
    if not bad:
        return True, f"{probed} account(s) on {servers} server(s) answer; slowest {slowest:.0f} ms"
    shown = "; ".join(f"account {r.account_id} on {r.server}: {r.detail}" for r in bad[:5])
    more = f"; {len(bad) - 5} more" if len(bad) > 5 else ""
    return False, f"{len(bad)} of {probed} account(s) failing: {shown}{more}"


def degradable_checks(settings: Settings) -> list[CheckResult]:
    """Checks of optional features: a failure is ``degraded``, never a reason for 503."""
    results = []
    checks: list[tuple[str, Callable[[], tuple[bool, str] | None]]] = [
        ("contacts", lambda: check_contacts(settings)),
    ]
    for name, check in checks:
        start = time.perf_counter()
        try:
            outcome = check()
        except Exception as exc:  # e.g. the database is down (its own check says so)
            outcome = (False, f"{type(exc).__name__}: {str(exc)[:200]}")
        if outcome is not None:
            elapsed = (time.perf_counter() - start) * 1000
            results.append(CheckResult(name, outcome[0], outcome[1], elapsed, required=False))
    return results


def dependency_outcomes(settings: Settings, queue: FileQueue) -> dict[str, str]:
    """``{name: outcome}`` for ``/ready``'s ``checks``: the required checks, then the
    degradable ones."""
    results = [*dependency_checks(settings, queue), *degradable_checks(settings)]
    return {r.name: r.outcome for r in results}
