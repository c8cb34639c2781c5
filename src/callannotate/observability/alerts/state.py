"""Which built-in alerts are open, kept in the relational store so it outlives the process.

An alert is *open* from its ``firing`` notice until its ``resolved`` notice. The row
(``alert_states``, :class:`~callannotate.db.alert_models.AlertStateRow`) holds when it was
first seen firing, when the last firing notice went out and how many went out, and which
watcher last saw it firing and when. A watcher that starts after a restart reads it, so a
still-firing alert is not announced again before ``alerts.repeat_interval_s`` and an alert
that cleared meanwhile gets its recovery notice.

Several watching processes (an API and ``callannotate worker`` processes on one database)
share the rows. Every change is conditional on the row's ``version`` (an insert on the
primary key, an update or delete ``WHERE version = <read>``), so when two of them decide the
same notice at once only the one whose change lands sends it.

:class:`MemoryAlertStore` has the same behaviour in the process's memory: the watcher falls
back to it while the database cannot be reached (the notices go out; their state is then
lost at a restart).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from callannotate.config import Settings
from callannotate.db.alert_models import AlertStateRow
from callannotate.db.engine import Database


@dataclass(frozen=True)
class OpenAlert:
    """An open alert; times are Unix seconds."""

    alert: str
    severity: str
    started_at: float
    last_notified_at: float
    sequence: int
    seen_at: float
    seen_by: str
    version: int = 1


class AlertStore(Protocol):
    def load(self) -> dict[str, OpenAlert]:
        """Every open alert."""
        ...

    def open(self, row: OpenAlert) -> bool:
        """Record a newly open alert; False when it is open already (another watcher)."""
        ...

    def update(self, old: OpenAlert, new: OpenAlert) -> bool:
        """Replace ``old`` by ``new``; False when the stored row is no longer ``old``."""
        ...

    def close(self, old: OpenAlert) -> bool:
        """Forget ``old`` (resolved); False when the stored row is no longer ``old``."""
        ...

    def dispose(self) -> None: ...


class MemoryAlertStore:
    """The state in this process only (the fallback, and unit tests)."""

    def __init__(self) -> None:
        self._rows: dict[str, OpenAlert] = {}
        self._lock = threading.Lock()

    def load(self) -> dict[str, OpenAlert]:
        with self._lock:
            return dict(self._rows)

    def replace(self, rows: dict[str, OpenAlert]) -> None:
        with self._lock:
            self._rows = dict(rows)

    def open(self, row: OpenAlert) -> bool:
        with self._lock:
            if row.alert in self._rows:
                return False
            self._rows[row.alert] = row
            return True

    def update(self, old: OpenAlert, new: OpenAlert) -> bool:
        with self._lock:
            if self._rows.get(old.alert) != old:
                return False
            self._rows[old.alert] = new
            return True

    def close(self, old: OpenAlert) -> bool:
        with self._lock:
            if self._rows.get(old.alert) != old:
                return False
            del self._rows[old.alert]
            return True

    def dispose(self) -> None:
        return None


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class DatabaseAlertStore:
    """The state in the configured database (``database.url``, else SQLite in data_dir).

    The schema is brought to the newest migration on first use (a ``callannotate worker``
    may be the first process to open the database). Blocking: call it from a thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._lock = threading.Lock()

    def _database(self) -> Database:
        from callannotate.db.migrate import upgrade_database  # Alembic: loaded on first use

        with self._lock:
            if self._db is None:
                db = Database.from_settings(self.settings)
                try:
                    upgrade_database(db)
                except Exception:
                    db.dispose()
                    raise
                self._db = db
            return self._db

    def load(self) -> dict[str, OpenAlert]:
        with self._database().session() as session:
            rows = session.scalars(select(AlertStateRow))
            return {r.alert: _from_row(r) for r in rows}

    def open(self, row: OpenAlert) -> bool:
        try:
            with self._database().session() as session:
                session.add(
                    AlertStateRow(
                        alert=row.alert,
                        severity=row.severity,
                        started_at=_dt(row.started_at),
                        last_notified_at=_dt(row.last_notified_at),
                        sequence=row.sequence,
                        seen_at=_dt(row.seen_at),
                        seen_by=row.seen_by,
                        version=row.version,
                    )
                )
        except IntegrityError:  # another watcher opened it first
            return False
        return True

    def update(self, old: OpenAlert, new: OpenAlert) -> bool:
        with self._database().session() as session:
            result = session.execute(
                update(AlertStateRow)
                .where(AlertStateRow.alert == old.alert, AlertStateRow.version == old.version)
                .values(
                    last_notified_at=_dt(new.last_notified_at),
                    sequence=new.sequence,
                    seen_at=_dt(new.seen_at),
                    seen_by=new.seen_by,
                    version=new.version,
                )
            )
            return _rowcount(result) == 1

    def close(self, old: OpenAlert) -> bool:
        with self._database().session() as session:
            result = session.execute(
                delete(AlertStateRow).where(
                    AlertStateRow.alert == old.alert, AlertStateRow.version == old.version
                )
            )
            return _rowcount(result) == 1

    def dispose(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.dispose()


def _rowcount(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


def _from_row(row: AlertStateRow) -> OpenAlert:
    return OpenAlert(
        alert=row.alert,
        severity=row.severity,
        started_at=row.started_at.timestamp(),
        last_notified_at=row.last_notified_at.timestamp(),
        sequence=row.sequence,
        seen_at=row.seen_at.timestamp(),
        seen_by=row.seen_by,
        version=row.version,
    )
