"""The SQLite engine: a process building a second ``Database`` on a file it already uses
keeps its WAL locks, so another process closing its last connection cannot delete the
``-wal``/``-shm`` files under it."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from callannotate.db.engine import Database

CHILD = """
import sys
from sqlalchemy import text
from callannotate.db.engine import Database
db = Database(sys.argv[1])
with db.session() as s:
    s.execute(text("SELECT count(*) FROM t")).scalar()
db.dispose()
"""


def test_a_second_database_keeps_the_wal_of_open_connections(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    url = f"sqlite:///{path}"
    server = Database(url)  # the API process, its connection kept in the pool
    with server.session() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    second = Database(url)  # the same process opens the file again (e.g. contacts service)
    # another process (a CLI command) opens the file and closes its last connection
    subprocess.run([sys.executable, "-c", CHILD, url], check=True, timeout=60)
    try:
        assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        with server.session() as s:
            s.execute(text("INSERT INTO t VALUES (2)"))
        fresh = Database(url)
        with fresh.session() as s:  # was: OperationalError "disk I/O error"
            assert s.execute(text("SELECT count(*) FROM t")).scalar() == 2
        fresh.dispose()
    finally:
        second.dispose()
        server.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
