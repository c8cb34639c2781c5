"""Engine and sessions for the configured database (SQLite file or PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from callannotate.config import Settings

SQLITE_FILENAME = "callannotate.db"


def database_url(settings: Settings) -> str:
    """The effective URL: ``database.url``, else ``database_url``, else SQLite in data_dir;
    ``database.password`` (e.g. from ``database.password_file``) replaces the URL's password."""
    url = settings.database.url or settings.database_url
    password = settings.database.password
    if url and password is not None:
        parsed = make_url(url).set(password=password.get_secret_value())
        return parsed.render_as_string(hide_password=False)
    if url:
        return url
    return f"sqlite:///{(settings.data_dir / SQLITE_FILENAME).absolute()}"


def describe_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def _prepare_sqlite_file(url: URL) -> None:
    """Create the database file (and its folder) private to the service user: 0600 / 0700.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock the process holds on it, including the SQLite connections' WAL locks, and another
    process closing its last connection would then delete the ``-wal``/``-shm`` files under
    this one (its writes go to a deleted file, new connections fail with "disk I/O error").
    """
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")  # -wal/-shm get the database file's mode
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(
    url: str, *, echo: bool = False, pool_size: int = 5, timeout: float = 10.0
) -> Engine:
    """An engine for ``url``; SQLite files are created 0600 with foreign keys and WAL on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_file(parsed)
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, int(timeout))
    return create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


class Database:
    """One engine and a session factory; ``session()`` commits on success, rolls back on error."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 5, timeout: float = 10.0):
        self.url = url
        self.engine = make_engine(url, echo=echo, pool_size=pool_size, timeout=timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        db = settings.database
        return cls(
            database_url(settings),
            echo=db.echo,
            pool_size=db.pool_size,
            timeout=db.connect_timeout_s,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({describe_url(self.url)!r})"
