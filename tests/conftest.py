"""Root fixtures shared by every test folder.

Authentication is on by default (``auth.enabled``). Tests written before it, or about
something else, run with it off: this file sets ``CALLANNOTATE_AUTH__ENABLED=false`` for every
test unless the test opts in with ``@pytest.mark.auth`` (or the ``auth_enabled`` fixture).
Server subprocesses started by tests inherit the environment, so they run with auth off too.

Settings built with an explicit ``auth=AuthSettings(...)`` are not affected by the variable
(constructor arguments win over the environment): such a test has authentication on unless
it passes ``enabled=False`` itself.

``database`` is the relational store on each backend: SQLite always, the local PostgreSQL
when it answers (one throw-away database per test session, dropped afterwards; every test
starts from empty tables). Under ``CI=true`` an unreachable PostgreSQL fails the run.

``radicale`` and ``xandikos`` are real CardDAV servers (tests/contacts/carddav_servers.py) for
the contacts tests and the ``/ready`` contacts probe: bound to 127.0.0.1, a bounded wait for
them to answer, stopped by their pid; skipped where the server is not installed, or failing
under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.db.models import Base
from callannotate.db.testing import (
    postgres_admin_url,
    postgres_required,
    temporary_postgres_database,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "contacts"))
from carddav_servers import Radicale, Xandikos, running_radicale, running_xandikos

AUTH_ENV = "CALLANNOTATE_AUTH__ENABLED"


def pytest_configure(config: pytest.Config) -> None:
    # Process-wide as well, for what runs outside a test function: collection-time code and
    # module- or session-scoped fixtures (servers started once per module).
    os.environ[AUTH_ENV] = "false"
    config.addinivalue_line(
        "markers", "auth: run with authentication as configured (default on), not forced off"
    )


@pytest.fixture(autouse=True)
def _auth_off_unless_asked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("auth") or "auth_enabled" in request.fixturenames:
        monkeypatch.delenv(AUTH_ENV, raising=False)
    else:
        monkeypatch.setenv(AUTH_ENV, "false")


@pytest.fixture
def auth_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication as it is by default (on): the variable is removed for this test."""
    monkeypatch.delenv(AUTH_ENV, raising=False)


# ------------------------------------------------------------------ relational store


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


# ------------------------------------------------------------------ CardDAV servers


def _installed_or_skip(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs the {module} CardDAV server installed")
        pytest.skip(f"{module} (a CardDAV server) is not installed")


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[Radicale]:
    """Radicale with htpasswd auth and its user's ``contacts`` address book."""
    _installed_or_skip("radicale")
    with running_radicale(tmp_path / "radicale") as server:
        yield server


@pytest.fixture
def xandikos(tmp_path: Path) -> Iterator[Xandikos]:
    _installed_or_skip("xandikos")
    with running_xandikos(tmp_path / "xandikos") as server:
        yield server
