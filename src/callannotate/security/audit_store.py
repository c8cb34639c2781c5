"""The ``audit_events`` table: append under one lock, query with filters, verify the chain.

Appending reads the newest record (sequence number and hash) and inserts the new ones inside a
single transaction that holds the chain lock: ``pg_advisory_xact_lock`` on PostgreSQL (released
at commit, so every process and connection queues on it), ``BEGIN IMMEDIATE`` on SQLite (the
database's write lock). Nothing here updates or deletes a row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from callannotate.db.engine import Database
from callannotate.db.models import AuditEvent
from callannotate.security.audit import (
    GENESIS_HASH,
    AuditEntry,
    chain_hash,
    hashed_fields,
)

PG_CHAIN_LOCK_KEY = 0x41554454  # "AUDT": the advisory lock every audit writer takes
_TABLE = AuditEvent.__table__


@dataclass(frozen=True)
class AuditFilter:
    """What ``GET /audit`` and ``callannotate audit list`` may filter on (all optional)."""

    principal_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.principal_id is not None:
            query = query.where(AuditEvent.principal_id == self.principal_id)
        if self.action is not None:
            if self.action.endswith(".*"):
                query = query.where(AuditEvent.resource_type == self.action[:-2])
            else:
                query = query.where(AuditEvent.action == self.action)
        if self.resource_type is not None:
            query = query.where(AuditEvent.resource_type == self.resource_type)
        if self.resource_id is not None:
            query = query.where(AuditEvent.resource_id == self.resource_id)
        if self.outcome is not None:
            query = query.where(AuditEvent.outcome == self.outcome)
        if self.since is not None:
            query = query.where(AuditEvent.time >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.time < self.until)
        return query


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found. ``broken_seq`` is the first bad record (or ``None``)."""

    checked: int
    head_seq: int | None
    head_hash: str | None
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


class AuditStore:
    """Reads and appends audit records on one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _lock(self, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_CHAIN_LOCK_KEY}
            )
        elif connection.dialect.name == "sqlite":
            # The driver has not begun a transaction yet: take the write lock now, before
            # reading the head, so no other writer can append between our read and insert.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def append(self, entries: Sequence[AuditEntry]) -> list[AuditEvent]:
        """Store ``entries`` (already normalised) at the end of the chain, in order."""
        if not entries:
            return []
        for attempt in range(5):
            try:
                return self._append_once(entries)
            except (IntegrityError, OperationalError):
                # only without a lock (another dialect), or SQLite busy beyond its timeout
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _append_once(self, entries: Sequence[AuditEntry]) -> list[AuditEvent]:
        rows: list[AuditEvent] = []
        with self.db.engine.connect() as connection:
            self._lock(connection)
            head = connection.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            ).first()
            seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            values: list[dict[str, Any]] = []
            for entry in entries:
                seq += 1
                fields = hashed_fields(seq, entry)
                digest = chain_hash(fields, prev)
                row = dict(fields, time=entry.time, prev_hash=prev, hash=digest)
                values.append(row)
                rows.append(AuditEvent(**row))
                prev = digest
            connection.execute(insert(_TABLE), values)  # type: ignore[arg-type]
            connection.commit()
        return rows

    # ---------------------------------------------------------------- reading

    def query(
        self, where: AuditFilter, *, offset: int = 0, limit: int = 100
    ) -> tuple[list[AuditEvent], int]:
        """Matching records newest first, and how many match in all."""
        with self.db.session() as s:
            total = s.scalar(where.apply(select(func.count()).select_from(AuditEvent))) or 0
            rows = s.scalars(
                where.apply(select(AuditEvent))
                .order_by(AuditEvent.seq.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return list(rows), int(total)

    def iter_matching(self, where: AuditFilter, batch: int = 1000) -> Iterator[AuditEvent]:
        """Every matching record, oldest first, read in batches (for CSV export)."""
        after = 0
        while True:
            with self.db.session() as s:
                rows = s.scalars(
                    where.apply(select(AuditEvent))
                    .where(AuditEvent.seq > after)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                ).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def head(self) -> tuple[int, str] | None:
        with self.db.session() as s:
            row = s.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            ).first()
            return (int(row[0]), str(row[1])) if row else None


def verify_chain(
    store: AuditStore, *, batch: int = 1000, anchor: tuple[int, str] | None = None
) -> ChainReport:
    """Walk the whole chain oldest first and report the first record that does not fit.

    A record is broken when its sequence number is not the previous one plus one (a record
    before it was deleted), when its ``prev_hash`` is not the previous record's hash (a record
    was removed or put in before it), or when its own hash does not match its content (it was
    edited, or inserted with a made-up hash). ``anchor`` (seq, hash), e.g. from an earlier
    ``audit verify`` or from the ECS log line of that record, must match too: that catches a
    chain rewritten from some point on and records cut off the end.
    """
    expected_seq = 1
    prev = GENESIS_HASH
    checked = 0
    head: tuple[int, str] | None = None
    anchor_seen = anchor is None
    after = 0
    while True:
        with store.db.session() as s:
            rows = s.scalars(
                select(AuditEvent)
                .where(AuditEvent.seq > after)
                .order_by(AuditEvent.seq)
                .limit(batch)
            ).all()
        if not rows:
            break
        for row in rows:
            problem = _check(row, expected_seq, prev)
            if problem is not None:
                return ChainReport(
                    checked, head[0] if head else None, head[1] if head else None, row.seq, problem
                )
            if anchor is not None and row.seq == anchor[0]:
                anchor_seen = True
                if row.hash != anchor[1]:
                    return ChainReport(
                        checked,
                        row.seq,
                        row.hash,
                        row.seq,
                        "hash differs from the anchor (chain rewritten)",
                    )
            checked += 1
            expected_seq = row.seq + 1
            prev = row.hash
            head = (row.seq, row.hash)
        after = rows[-1].seq
    head_seq, head_hash = (head[0], head[1]) if head else (None, None)
    if not anchor_seen:
        assert anchor is not None
        return ChainReport(
            checked,
            head_seq,
            head_hash,
            anchor[0],
            "anchored record is missing (records removed from the end)",
        )
    return ChainReport(checked, head_seq, head_hash)


def _check(row: AuditEvent, expected_seq: int, prev: str) -> str | None:
    if row.seq != expected_seq:
        missing = (
            f"record {expected_seq}"
            if row.seq == expected_seq + 1
            else f"records {expected_seq}..{row.seq - 1}"
        )
        if row.seq < expected_seq:
            return f"sequence number {row.seq} out of order (expected {expected_seq})"
        return f"{missing} missing before it (deleted)"
    if row.prev_hash != prev:
        return "prev_hash does not match the previous record's hash (record removed or inserted)"
    digest = chain_hash(hashed_fields(row.seq, row, action=row.action), row.prev_hash)
    if digest != row.hash:
        return "content does not match its hash (edited or forged)"
    return None
