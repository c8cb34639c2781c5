"""The audit log: who did what, from where, with which outcome, in a tamper-evident chain.

A record (:class:`AuditEntry`) names an actor (``principal_id``), where the call came from
(``client_ip``, ``user_agent``, ``request_id``), an action (``verb`` on ``resource_type`` /
``resource_id``, e.g. ``job.delete``), an ``outcome`` (``ok``, ``denied``, ``failed``), the HTTP
``status`` when there is one, and a small JSON ``detail``.

Records are appended to the ``audit_events`` table by :class:`AuditLog`. Each stored record
gets the next sequence number and ``hash = sha256(canonical JSON of its fields + prev_hash)``,
where ``prev_hash`` is the previous record's hash (:data:`GENESIS_HASH` for the first): editing,
deleting or inserting a row breaks the chain at that row, which
:func:`callannotate.security.audit_store.verify_chain` reports. Writers in several processes keep
one chain because appending takes a PostgreSQL advisory lock (SQLite: the database write lock).

:class:`AuditLog` writes from a background thread through a bounded queue, so the event loop
never waits on the database; a full queue makes the *recording* caller wait (in a thread when it
is async) rather than drop a record, and :meth:`AuditLog.close` (also run at interpreter exit)
writes everything still queued. After a record is stored it is also logged as one ECS line
(``event.action``, ``event.outcome``, ``user.id``, ``client.ip``, ...) on the
``callannotate.audit`` logger.

Inside a request, :data:`audit_request_var` holds the caller's address, user agent, request id
and (once authenticated) principal, so services can record events without seeing HTTP.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio

from callannotate.config import AuditSettings
from callannotate.db.types import utcnow
from callannotate.observability.logging import request_id_var

if TYPE_CHECKING:
    from callannotate.db.engine import Database
    from callannotate.db.models import AuditEvent

logger = logging.getLogger(__name__)
record_logger = logging.getLogger("callannotate.audit")

Outcome = Literal["ok", "denied", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "denied", "failed")
GENESIS_HASH = "0" * 64

# Column widths (models.AuditEvent): longer values are cut before hashing, so what is stored
# is exactly what was hashed.
_LIMITS = {
    "principal_id": 64,
    "client_ip": 64,
    "user_agent": 512,
    "request_id": 128,
    "verb": 32,
    "resource_type": 32,
    "resource_id": 128,
}
_DETAIL_MAX_CHARS = 4000


def outcome_for_status(status: int | None) -> Outcome:
    """``ok`` below 400; ``denied`` for 401, 403 and 429; ``failed`` otherwise."""
    if status is None:
        return "failed"
    if status < 400:
        return "ok"
    if status in (401, 403, 429):
        return "denied"
    return "failed"


#: What stands for a NUL character: PostgreSQL refuses NUL in text and JSON, and one record
#: holding it (``DELETE /voices/%00``) failed its whole batch, other callers' records too.
NUL_STANDIN = "\ufffd"
#: ``\u0000`` in JSON text, not preceded by an escaping backslash.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _cut(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return value[: _LIMITS[name]].replace("\x00", NUL_STANDIN)


def _json_safe(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain JSON object that survives a database round trip unchanged (for the hash)."""
    if not detail:
        return {}
    text = json.dumps(dict(detail), default=str, ensure_ascii=False, sort_keys=True)
    text = _JSON_NUL.sub(lambda m: m.group(1) + NUL_STANDIN, text)
    if len(text) > _DETAIL_MAX_CHARS:
        return {"truncated": text[:_DETAIL_MAX_CHARS]}
    loaded = json.loads(text)
    assert isinstance(loaded, dict)
    return loaded


@dataclass(frozen=True)
class AuditEntry:
    """One record before it is stored (no sequence number or hash yet)."""

    verb: str
    resource_type: str
    resource_id: str | None = None
    outcome: Outcome = "ok"
    status: int | None = None
    principal_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=utcnow)

    @property
    def action(self) -> str:
        """``<resource_type>.<verb>``, e.g. ``job.delete`` or ``auth.login``."""
        return f"{self.resource_type}.{self.verb}"

    def normalized(self) -> AuditEntry:
        """Values cut to the column widths, detail made plain JSON, time in UTC microseconds."""
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        when = self.time.astimezone(UTC)
        return AuditEntry(
            verb=_cut("verb", self.verb) or "",
            resource_type=_cut("resource_type", self.resource_type) or "",
            resource_id=_cut("resource_id", self.resource_id),
            outcome=self.outcome,
            status=self.status,
            principal_id=_cut("principal_id", self.principal_id),
            client_ip=_cut("client_ip", self.client_ip),
            user_agent=_cut("user_agent", self.user_agent),
            request_id=_cut("request_id", self.request_id),
            detail=_json_safe(self.detail),
            time=when,
        )


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hashed_fields(
    seq: int, entry: AuditEntry | AuditEvent, action: str | None = None
) -> dict[str, Any]:
    """The fields a record's hash covers (everything but the hash itself)."""
    return {
        "seq": seq,
        "time": _timestamp(entry.time),
        "principal_id": entry.principal_id,
        "client_ip": entry.client_ip,
        "user_agent": entry.user_agent,
        "request_id": entry.request_id,
        "action": action if action is not None else entry.action,
        "verb": entry.verb,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "outcome": entry.outcome,
        "status": entry.status,
        "detail": dict(entry.detail or {}),
    }


def chain_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    """sha256 over the canonical JSON (sorted keys, no spaces, UTF-8) of fields + prev_hash."""
    doc = dict(fields)
    doc["prev_hash"] = prev_hash
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- request context


@dataclass
class RequestAudit:
    """What the audit log knows about the current request or command (mutable on purpose)."""

    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    principal_id: str | None = None
    recorded: int = 0  # records added for this request by services (the middleware then skips)
    state: dict[str, Any] | None = None  # the ASGI scope's state (``conn.state.principal``)

    def actor(self) -> str | None:
        """The authenticated caller's id: ``conn.state.principal``, else ``principal_id``."""
        principal = self.state.get("principal") if self.state else None
        principal_id = getattr(principal, "id", None)
        return principal_id if isinstance(principal_id, str) else self.principal_id


audit_request_var: ContextVar[RequestAudit | None] = ContextVar(
    "callannotate_audit_request", default=None
)


@contextmanager
def audit_context(**values: Any) -> Iterator[RequestAudit]:
    """Run the block with a :class:`RequestAudit` (the CLI uses it for its commands)."""
    ctx = RequestAudit(**values)
    token = audit_request_var.set(ctx)
    try:
        yield ctx
    finally:
        audit_request_var.reset(token)


def current_actor() -> str | None:
    """The authenticated caller of the current request or command, if known."""
    ctx = audit_request_var.get()
    return ctx.actor() if ctx is not None else None


def cli_actor() -> str:
    """The actor of a local command: ``cli:<operating-system user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


# --------------------------------------------------------------------------- ECS log line


def _ecs_outcome(outcome: str) -> str:
    return "success" if outcome == "ok" else "failure"


def log_record(row: AuditEvent | AuditEntry, seq: int | None, digest: str | None) -> None:
    """The record as one structured log line (ECS field names)."""
    extra: dict[str, Any] = {
        "event.kind": "event",
        "event.category": ["authentication"] if row.resource_type == "auth" else ["web"],
        "event.action": f"{row.resource_type}.{row.verb}",
        "event.outcome": _ecs_outcome(row.outcome),
        "event.reason": row.outcome,
        "event.created": _timestamp(row.time),
        "user.id": row.principal_id,
        "client.ip": row.client_ip,
        "user_agent.original": row.user_agent,
        "request_id": row.request_id,  # the formatter writes it as http.request.id
        "http.response.status_code": row.status,
        "callannotate.audit.resource.type": row.resource_type,
        "callannotate.audit.resource.id": row.resource_id,
        "callannotate.audit.detail": dict(row.detail or {}),
    }
    if seq is not None:
        extra["event.sequence"] = seq
        extra["callannotate.audit.hash"] = digest
    extra = {k: v for k, v in extra.items() if v is not None}
    message = f"audit {row.resource_type}.{row.verb} {row.outcome}"
    if seq is None:
        record_logger.error(message + " (NOT STORED in the audit table)", extra=extra)
    else:
        record_logger.info(message, extra=extra)


# --------------------------------------------------------------------------- the writer


_STOP = object()
_WRITE_ATTEMPTS = 5


class AuditLog:
    """Appends records to the audit table, from a background thread (or inline).

    ``background=False`` writes inside :meth:`record` (the CLI, and callers already off the
    event loop that want the record stored before they return). ``migrate=True`` upgrades
    the schema before the first write (the API builds its log lazily).
    """

    def __init__(
        self,
        db: Database,
        settings: AuditSettings | None = None,
        *,
        background: bool = True,
        migrate: bool = False,
    ) -> None:
        from callannotate.security.audit_store import AuditStore

        self.settings = settings or AuditSettings()
        self.db = db
        self.store = AuditStore(db)
        self.background = background
        self._migrate = migrate
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.settings.queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._put_limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        self.written = 0
        self.lost = 0

    # ---------------------------------------------------------------- recording

    def event(
        self,
        verb: str,
        resource_type: str,
        resource_id: str | None = None,
        *,
        outcome: Outcome = "ok",
        principal_id: str | None = None,
        status: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Record an event of the current request/command (its context fills the rest)."""
        ctx = audit_request_var.get()
        entry = AuditEntry(
            verb=verb,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome,
            status=status,
            principal_id=principal_id or (ctx.actor() if ctx else None),
            client_ip=ctx.client_ip if ctx else None,
            user_agent=ctx.user_agent if ctx else None,
            request_id=(ctx.request_id if ctx else None) or request_id_var.get(),
            detail=detail or {},
        )
        if ctx is not None:
            ctx.recorded += 1
        self.record(entry)
        return entry

    def record(self, entry: AuditEntry) -> None:
        """Add a record; may wait while the queue is full (never call it on the event loop)."""
        entry = entry.normalized()
        if self.background and self._ensure_thread():
            self._queue.put(entry)
            return
        self._write_retrying([entry])

    async def arecord(self, entry: AuditEntry) -> None:
        """Add a record from async code: immediate unless the queue is full (then a thread)."""
        entry = entry.normalized()
        if not (self.background and self._ensure_thread()):
            await anyio.to_thread.run_sync(self._write_retrying, [entry])
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            # wait for room in a few threads of our own: callers beyond them wait here
            # asynchronously instead of filling the thread pool the rest of the API shares
            if self._put_limiter is None:
                self._put_limiter = anyio.CapacityLimiter(4)
            await anyio.to_thread.run_sync(self._queue.put, entry, limiter=self._put_limiter)

    # ---------------------------------------------------------------- writer thread

    def _ensure_thread(self) -> bool:
        """Start the writer on first use; ``False`` once closed (then callers write inline)."""
        if self._thread is not None and not self._closed:
            return True
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                thread.start()
                self._thread = thread
                atexit.register(self.close)
            return True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._queue.task_done()
                return
            batch: list[AuditEntry] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < self.settings.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    self._queue.task_done()
                    break
                assert isinstance(item, AuditEntry)
                batch.append(item)
            try:
                self._write_retrying(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _write_retrying(self, batch: list[AuditEntry]) -> None:
        """Write ``batch``, retrying a database error with backoff (5 attempts, ~3 s).

        A batch that still fails is not dropped silently: each record goes to the log as an
        error line with all its fields ("NOT STORED") and :attr:`lost` counts it.
        """
        delay = 0.2
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self._write(batch)
                return
            except Exception:
                logger.exception("audit log write failed (attempt %d)", attempt)
                if attempt < _WRITE_ATTEMPTS:
                    time.sleep(delay)
                    delay *= 2
        for entry in batch:
            log_record(entry, None, None)
        self.lost += len(batch)

    def ensure_schema(self) -> None:
        """Migrate the database once before first use (when built with ``migrate=True``)."""
        if not self._migrate:
            return
        with self._schema_lock:
            if self._migrate:
                from callannotate.db.migrate import upgrade_database

                upgrade_database(self.db)
                self._migrate = False

    def _write(self, batch: Sequence[AuditEntry]) -> None:
        self.ensure_schema()
        rows = self.store.append(batch)
        self.written += len(rows)
        if self.settings.log_records:
            for row in rows:
                log_record(row, row.seq, row.hash)

    # ---------------------------------------------------------------- lifecycle

    def flush(self) -> None:
        """Wait until every record queued so far is stored (or given up on)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Store everything queued, then stop the writer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()
            atexit.unregister(self.close)
        # anything put after the stop marker (a race with close) is written here
        leftovers: list[AuditEntry] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if isinstance(item, AuditEntry):
                leftovers.append(item)
        if leftovers:
            self._write_retrying(leftovers)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)
