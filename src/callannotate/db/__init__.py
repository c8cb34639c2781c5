"""The relational store: SQLAlchemy 2 models and Alembic migrations shipped in the package.

SQLite in ``data_dir/callannotate.db`` by default (nothing to install); PostgreSQL when
``database.url`` (``CALLANNOTATE_DATABASE__URL`` or ``CALLANNOTATE_DATABASE_URL``) is set.
The engine is synchronous: every query here is a small lookup by key, the CLI and Alembic are
synchronous, and the API runs these calls through ``anyio.to_thread``.

``upgrade(settings)`` brings the schema to the newest migration; ``serve`` and ``worker``
call it on start and ``callannotate db upgrade`` runs it by hand.
"""

from __future__ import annotations

from typing import Any

from callannotate.db.engine import Database, database_url

__all__ = ["Database", "current_revision", "database_url", "head_revision", "upgrade"]

_MIGRATE = {"current_revision", "head_revision", "upgrade"}


def __getattr__(name: str) -> Any:
    """``upgrade`` and friends import Alembic, so they load on first use only."""
    if name in _MIGRATE:
        from callannotate.db import migrate

        return getattr(migrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
