"""Databases for the security tests (same as tests/db): SQLite, and PostgreSQL when it answers.

PostgreSQL gets one throw-away database per test session (dropped afterwards); every test
starts from empty tables. Under ``CI=true`` an unreachable PostgreSQL fails the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from callannotate.config import AuthSettings, Settings
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.db.models import Base
from callannotate.db.testing import (
    postgres_admin_url,
    postgres_required,
    temporary_postgres_database,
)
from callannotate.security.service import AuthService


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    url, why = postgres_admin_url()
    if url is None:
        if postgres_required():
            pytest.fail(f"CI=true needs PostgreSQL: {why}")
        pytest.skip(why)
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_admin: str) -> Iterator[str]:
    with temporary_postgres_database(postgres_admin) as url:
        db = Database(url)
        upgrade_database(db)
        db.dispose()
        yield url


def empty_tables(db: Database) -> None:
    with db.session() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(delete(table))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'callannotate.db'}")
        upgrade_database(db)
    else:
        db = Database(request.getfixturevalue("postgres_url"))
        empty_tables(db)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a temporary data folder with a cheap argon2 (tests only)."""
    return Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024),
    )


@pytest.fixture
def service(settings: Settings, database: Database) -> AuthService:
    return AuthService(settings, database)
