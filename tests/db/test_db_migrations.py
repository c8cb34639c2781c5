"""The schema: migrations build exactly the models (no drift), the file is private, the
URL setting and ``callannotate db`` work, concurrent starts do not trip over each other."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from callannotate.cli import main
from callannotate.config import DatabaseSettings, Settings
from callannotate.db import Database, current_revision, database_url, head_revision, upgrade
from callannotate.db.migrate import upgrade_database
from callannotate.db.models import Base
from callannotate.db.testing import temporary_postgres_database

TABLES = {"users", "api_keys", "oauth_clients", "refresh_tokens", "audit_events"}
TABLES |= {"contact_accounts", "contact_books", "contacts", "contact_phones", "contact_outbox"}
TABLES |= {"contact_conflicts", "alert_states"}


def _drift(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'drift.db'}")
    try:
        assert current_revision(db) is None
        assert upgrade_database(db) == head_revision()
        assert set(inspect(db.engine).get_table_names()) >= TABLES
        assert _drift(db) == []
    finally:
        db.dispose()


def test_postgres_migrations_match_models(postgres_admin: str) -> None:
    with temporary_postgres_database(postgres_admin) as url:
        db = Database(url)
        try:
            assert upgrade_database(db) == head_revision()
            assert _drift(db) == []
            # down to nothing and up again: the downgrade path works too
            upgrade_database(db, "head")
            from alembic import command

            from callannotate.db.migrate import alembic_config

            with db.engine.begin() as connection:
                command.downgrade(alembic_config(connection), "base")
            assert not TABLES & set(inspect(db.engine).get_table_names())
            assert upgrade_database(db) == head_revision()
        finally:
            db.dispose()


def test_default_is_private_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert database_url(settings) == f"sqlite:///{(tmp_path / 'data' / 'callannotate.db')}"
    assert upgrade(settings) == head_revision()
    path = tmp_path / "data" / "callannotate.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert upgrade(settings) == head_revision()  # idempotent


def test_database_url_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATABASE_URL", "postgresql+psycopg://a@h/one")
    assert database_url(Settings(data_dir=tmp_path)) == "postgresql+psycopg://a@h/one"
    monkeypatch.setenv("CALLANNOTATE_DATABASE__URL", "postgresql+psycopg://a@h/two")
    assert database_url(Settings(data_dir=tmp_path)) == "postgresql+psycopg://a@h/two"
    explicit = Settings(data_dir=tmp_path, database=DatabaseSettings(url="sqlite:///x.db"))
    assert database_url(explicit) == "sqlite:///x.db"


def test_concurrent_upgrades_of_a_fresh_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(upgrade(settings))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [head_revision()] * 3


def test_postgres_concurrent_upgrades(postgres_admin: str) -> None:
    with temporary_postgres_database(postgres_admin) as url:
        settings = Settings(database=DatabaseSettings(url=url))
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(upgrade(settings))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [head_revision()] * 3


def test_db_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["db", "--data-dir", data, "current"]) == 1
    assert "(empty)" in capsys.readouterr().out
    assert main(["db", "--data-dir", data, "upgrade"]) == 0
    assert head_revision() in capsys.readouterr().out
    assert main(["db", "--data-dir", data, "current"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "data" / "callannotate.db")
