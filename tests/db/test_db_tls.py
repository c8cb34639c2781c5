"""PostgreSQL TLS: ``sslmode`` (and every other libpq parameter) in ``database.url``'s query
reaches psycopg, on the local PostgreSQL.

``sslmode=require`` against a server without TLS must fail rather than fall back to plain
text; against a server with TLS the session must be encrypted (``pg_stat_ssl``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from callannotate.config import DatabaseSettings, Settings
from callannotate.db.engine import Database


def _with_query(url: str, **query: str) -> str:
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def _database(tmp_path: Path, url: str) -> Database:
    return Database.from_settings(
        Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=url))
    )


def _session_ssl(db: Database) -> tuple[bool, str]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT s.ssl, current_setting('application_name') "
                "FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
            )
        ).one()
    return bool(row[0]), str(row[1])


def test_the_url_query_reaches_psycopg(postgres_admin: str, tmp_path: Path) -> None:
    url = _with_query(postgres_admin, sslmode="disable", application_name="ca-tls-test")
    db = _database(tmp_path, url)
    try:
        encrypted, name = _session_ssl(db)
    finally:
        db.dispose()
    assert name == "ca-tls-test"  # a libpq parameter from the URL's query
    assert encrypted is False  # sslmode=disable honoured


def test_sslmode_require_never_falls_back_to_plain_text(
    postgres_admin: str, tmp_path: Path
) -> None:
    probe = _database(tmp_path, postgres_admin)
    try:
        with probe.engine.connect() as conn:
            server_tls = conn.execute(text("SHOW ssl")).scalar_one() == "on"
    finally:
        probe.dispose()
    db = _database(tmp_path, _with_query(postgres_admin, sslmode="require"))
    try:
        if server_tls:
            assert _session_ssl(db)[0] is True
        else:
            with pytest.raises(OperationalError, match=r"(?i)ssl"):
                _session_ssl(db)
    finally:
        db.dispose()
