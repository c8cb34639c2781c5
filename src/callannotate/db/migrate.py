"""Run the packaged Alembic migrations programmatically (no ``alembic.ini`` at run time).

Several processes may start at once (``serve`` and ``worker``): PostgreSQL serialises them
with an advisory lock held for the upgrade's transaction, SQLite with a lock file beside the
database.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Connection, text

from callannotate.config import Settings
from callannotate.db.engine import Database, describe_url

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x43414E4E  # "CANN": one advisory lock id for schema upgrades
# Alembic keeps the running migration in module globals (``alembic.context``, ``op``): two
# upgrades in threads of one process, even of different databases, corrupt each other.
_PROCESS_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts, running on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this version."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    """The migration the database is at (``None``: empty database)."""
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _file_lock(db: Database) -> AbstractContextManager[object]:
    database = db.engine.url.database
    if db.dialect != "sqlite" or not database or database == ":memory:":
        return nullcontext()
    return FileLock(f"{database}.migrate.lock", mode=0o600)


def upgrade_database(db: Database, revision: str = "head") -> str | None:
    """Upgrade ``db`` to ``revision``; returns the revision it is at afterwards."""
    with _PROCESS_LOCK, _file_lock(db), db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(alembic_config(connection), revision)
        after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        logger.info("database %s upgraded %s -> %s", describe_url(db.url), before, after)
    return after


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Bring the configured database to ``revision`` (called by ``serve``/``worker`` on start)."""
    db = Database.from_settings(settings)
    try:
        return upgrade_database(db, revision)
    finally:
        db.dispose()
