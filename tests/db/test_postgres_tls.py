"""The relational store over real TLS: a private PostgreSQL server with a ``trustme``
certificate, reached with ``sslmode=verify-full``.

The module starts its own server (Debian's binaries under ``/usr/lib/postgresql/*/bin``):
``initdb`` into a temporary folder, ``ssl=on`` with a certificate for 127.0.0.1 signed by a
throwaway CA, a free port on 127.0.0.1, and a ``pg_hba.conf`` that accepts TLS connections
only. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(the folder is handed to it). It is stopped by its pid when the module ends, also on failure.

Proven here: the service's store, configured only through ``CALLANNOTATE_DATABASE_URL``, runs
its migrations and works over an encrypted session (``pg_stat_ssl``); a client trusting
another CA is refused with libpq's "certificate verify failed"; a client without TLS is
refused by the server. Without the binaries the module skips, except under ``CI=true``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from local_servers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callannotate.config import Settings
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.security.service import AuthService
from tls_certs import make_certs

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
SUPERUSER = "callannotate"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL TLS test cannot run on CI: {reason}")
    pytest.skip(reason)


def _pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and postgres."""
    found = []
    for folder in Path("/usr/lib/postgresql").glob("*/bin"):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            version = folder.parent.name
            found.append((int(version) if version.isdigit() else 0, folder))
    return max(found)[1] if found else None


def _run_as() -> dict[str, Any]:
    """``Popen`` arguments that drop root to the ``postgres`` user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run the server as")
        raise AssertionError("unreachable") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the server's certificate

    def url(self, **query: str) -> str:
        options = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres?{options}"

    def verified_url(self, ca_file: Path | None = None) -> str:
        return self.url(sslmode="verify-full", sslrootcert=str(ca_file or self.ca_file))


def _wait_until_ready(process: subprocess.Popen[bytes], server: TlsPostgres, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    conninfo = (
        f"host=127.0.0.1 port={server.port} user={SUPERUSER} dbname=postgres "
        f"sslmode=verify-full sslrootcert={server.ca_file} connect_timeout=2"
    )
    while True:
        if process.poll() is not None:
            pytest.fail(f"the PostgreSQL server exited at start: {log.read_text()[-2000:]}")
        try:
            with psycopg.connect(conninfo):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not accept TLS connections in time: {exc}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown by pid (SIGINT), then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        _unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        return
    run_as = _run_as()
    # not pytest's tmp_path: that folder is private to root, the server's user must enter it
    root = Path(tempfile.mkdtemp(prefix="callannotate-pgtls-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        root.chmod(0o755)
        certs = make_certs(root / "certs")
        other = make_certs(root / "other-ca")
        data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
        sockets.mkdir()
        if run_as:  # the server's files belong to its user; the key must not be readable
            for path in (root, root / "certs", certs.cert_file, certs.key_file, sockets):
                os.chown(path, run_as["user"], run_as["group"])
        initdb = subprocess.run(
            [str(pg_bin / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            cwd=root,
            **run_as,
        )
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed: {initdb.stderr[-2000:]}")
        # TLS connections only: a client without TLS finds no matching line and is refused
        (data / "pg_hba.conf").write_text(
            f"hostssl all {SUPERUSER} 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
        )
        server = TlsPostgres(free_port(), certs.ca_file, other.ca_file)
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(server.port),
            "unix_socket_directories": str(sockets),
            "ssl": "on",
            "ssl_cert_file": str(certs.cert_file),
            "ssl_key_file": str(certs.key_file),
            "fsync": "off",
            "max_connections": "20",
            "shared_buffers": "16MB",
        }
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(pg_bin / "postgres"), "-D", str(data)]
                + [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=root,
                **run_as,
            )
        _wait_until_ready(process, server, log)
        yield server
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def test_the_store_migrates_and_works_over_verified_tls(
    tls_postgres: TlsPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATABASE_URL", tls_postgres.verified_url())
    settings = Settings(data_dir=tmp_path / "data")
    db = Database.from_settings(settings)
    try:
        assert db.dialect == "postgresql"
        assert upgrade_database(db) is not None  # the migrations ran over TLS
        with db.engine.connect() as conn:
            ssl_on, version = conn.execute(
                text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).one()
        assert ssl_on is True
        assert version.startswith("TLS")
        # the service's store on it: an account is written and read back
        service = AuthService(settings, db)
        user = service.create_user("tls-user", "correct horse battery")
        assert service.store.get_user(user.id) is not None
    finally:
        db.dispose()


def test_a_server_certificate_from_another_ca_is_refused(
    tls_postgres: TlsPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CALLANNOTATE_DATABASE_URL", tls_postgres.verified_url(tls_postgres.other_ca_file)
    )
    db = Database.from_settings(Settings(data_dir=tmp_path / "data"))
    try:
        with pytest.raises(OperationalError, match="certificate verify failed"):
            upgrade_database(db)
    finally:
        db.dispose()


def test_a_client_without_tls_is_refused(tls_postgres: TlsPostgres, tmp_path: Path) -> None:
    db = Database.from_settings(
        Settings(data_dir=tmp_path / "data", database_url=tls_postgres.url(sslmode="disable"))
    )
    try:
        with pytest.raises(OperationalError, match="no encryption"), db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        db.dispose()
