"""Migration 0002_audit_log on SQLite and PostgreSQL: added to a database that already holds
accounts (which stay), and removed again by its downgrade (only the audit table goes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from callannotate.db.engine import Database
from callannotate.db.migrate import alembic_config, upgrade_database
from callannotate.db.testing import temporary_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database (no schema) on each backend."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield db
        db.dispose()
        return
    with temporary_postgres_database(request.getfixturevalue("postgres_admin")) as url:
        db = Database(url)
        yield db
        db.dispose()


def test_audit_table_added_after_accounts_and_removed_by_downgrade(fresh: Database) -> None:
    assert upgrade_database(fresh, "0001_accounts") == "0001_accounts"
    with fresh.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, disabled, created_at,"
                " updated_at) VALUES ('u1', 'alice', 'h', 'admin', false, :t, :t)"
            ),
            {"t": "2026-12-03 08:00:00.000000"},
        )
    upgrade_database(fresh)
    assert "audit_events" in inspect(fresh.engine).get_table_names()
    indexes = {ix["name"] for ix in inspect(fresh.engine).get_indexes("audit_events")}
    assert {"ix_audit_events_time", "ix_audit_events_action"} <= indexes
    with fresh.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001_accounts")
    names = set(inspect(fresh.engine).get_table_names())
    assert "audit_events" not in names and "users" in names
    with fresh.engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM users")).scalar() == "alice"
