"""Fixtures: either real CardDAV server (``radicale`` / ``xandikos``, tests/conftest.py), a
database, a contacts service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from carddav_servers import DavServer, make_settings

from callannotate.contacts.service import ContactsService
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.db.testing import temporary_postgres_database


@pytest.fixture(params=["radicale", "xandikos"])
def dav_server(request: pytest.FixtureRequest) -> DavServer:
    server: DavServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The cache on SQLite and on the local PostgreSQL (skipped without it, unless CI=true)."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'contacts.db'}")
        upgrade_database(database)
        try:
            yield database
        finally:
            database.dispose()
        return
    admin: str = request.getfixturevalue("postgres_admin")  # skips, or fails under CI=true
    with temporary_postgres_database(admin) as url:
        database = Database(url)
        upgrade_database(database)
        try:
            yield database
        finally:
            database.dispose()


@pytest.fixture
def service(tmp_path: Path, db: Database) -> ContactsService:
    return ContactsService(make_settings(tmp_path), db)
