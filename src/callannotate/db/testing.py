"""Helpers for tests that need a real PostgreSQL: a throw-away database per test run; and
:func:`dispose_app_databases` for tests that drive an app without its lifespan.

``CALLANNOTATE_TEST_POSTGRES_URL`` names the server (default: the local one with trust auth,
database ``test``). Under ``CI=true`` an unreachable server is an error, not a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


def _reachable(url: str) -> str | None:
    """``None`` when ``url`` answers, else why not."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # any driver error means "not usable here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        engine.dispose()


def postgres_admin_url() -> tuple[str | None, str]:
    """A PostgreSQL URL that may create databases, or ``None`` and the reason."""
    configured = os.environ.get("CALLANNOTATE_TEST_POSTGRES_URL")
    candidates = (configured,) if configured else DEFAULT_ADMIN_URLS
    reasons = []
    for url in candidates:
        problem = _reachable(url)
        if problem is None:
            return url, ""
        reasons.append(problem)
    return None, "PostgreSQL not reachable: " + "; ".join(reasons)


def postgres_required() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@contextmanager
def temporary_postgres_database(admin_url: str) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    name = f"callannotate_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def dispose_app_databases(app: object) -> None:
    """Close the connection pools of the services an app made on first use (auth,
    contacts); a test that drives the app without its lifespan has nothing else to do it."""
    state = getattr(app, "state", None)
    for name in ("auth_service", "contacts_service"):
        service = getattr(state, name, None)
        if service is not None:
            service.db.dispose()
