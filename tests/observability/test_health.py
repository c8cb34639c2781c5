"""Dependency checks of /ready and ``callannotate healthcheck``, against real dependencies
(the data folder's filesystem, SQLite and PostgreSQL, Redis) and a real HTTP server."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from callannotate import cli
from callannotate.api.app import create_app
from callannotate.config import (
    ApiSettings,
    DatabaseSettings,
    EventSettings,
    QueueSettings,
    Settings,
)
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability.health import dependency_checks, dependency_outcomes
from local_servers import free_port

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def need(port: int, what: str) -> None:
    if not reachable(port):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} on 127.0.0.1:{port} is required under CI=true")
        pytest.skip(f"{what} not running on 127.0.0.1:{port}")


def queue_of(settings: Settings) -> FileQueue:
    return FileQueue(settings.queue_dir, settings.queue)


def test_default_checks_are_disk_and_heartbeat(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    results = {r.name: r for r in dependency_checks(settings, queue_of(settings))}
    assert set(results) == {"data_dir", "heartbeat"}  # no database file, no Redis configured
    assert all(r.ok for r in results.values())
    assert "GiB free" in results["data_dir"].outcome and results["data_dir"].latency_ms >= 0
    assert results["data_dir"].outcome.startswith("ok (") and " ms)" in results["data_dir"].outcome


def test_too_little_space_for_uploads_is_not_ready(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api=ApiSettings(max_upload_bytes=10**17))
    outcome = dependency_outcomes(settings, queue_of(settings))["data_dir"]
    assert not outcome.startswith("ok") and "need" in outcome


def test_a_stale_lease_fails_the_heartbeat_check(tmp_path: Path) -> None:
    from queue_testing_local import submit_and_claim

    settings = Settings(data_dir=tmp_path / "data", queue=QueueSettings(lease_seconds=10))
    queue = queue_of(settings)
    lock = submit_and_claim(queue) / ".lock"
    lease = json.loads(lock.read_text())
    lease["expires_at"] = "2000-01-01T00:00:00+00:00"
    lock.write_text(json.dumps(lease))
    outcome = dependency_outcomes(settings, queue)["heartbeat"]
    assert not outcome.startswith("ok") and "renewed" in outcome


def test_sqlite_database_once_it_exists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=url))
    outcome = dependency_outcomes(settings, queue_of(settings))["database"]
    assert outcome.startswith("ok (sqlite"), outcome


def test_postgresql_database(tmp_path: Path) -> None:
    need(5432, "PostgreSQL")
    settings = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=PG_URL))
    outcome = dependency_outcomes(settings, queue_of(settings))["database"]
    assert outcome.startswith("ok (postgresql"), outcome


def test_an_unreachable_database_is_named(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    settings = Settings(
        data_dir=tmp_path / "data", database=DatabaseSettings(url=url, connect_timeout_s=2)
    )
    outcome = dependency_outcomes(settings, queue_of(settings))["database"]
    assert not outcome.startswith("ok") and "OperationalError" in outcome


def test_redis_when_the_bus_uses_it(tmp_path: Path) -> None:
    need(6379, "Redis")
    settings = Settings(data_dir=tmp_path / "data", events=EventSettings(backend="redis"))
    assert dependency_outcomes(settings, queue_of(settings))["redis"].startswith("ok (ping")
    dead = EventSettings(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    settings = Settings(data_dir=tmp_path / "data", events=dead)
    assert not dependency_outcomes(settings, queue_of(settings))["redis"].startswith("ok")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    settings = Settings(data_dir=tmp_path / "data", api=ApiSettings(embedded_workers=False))
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        srv.should_exit = True
        thread.join(30)


def test_ready_lists_the_dependency_checks(server: str) -> None:
    r = httpx.get(f"{server}/ready")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["data_dir"].startswith("ok") and checks["heartbeat"].startswith("ok")


def test_healthcheck_command_against_a_server(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["healthcheck", "--url", server]) == 0
    assert capsys.readouterr().out.strip() == "ready"
    assert cli.main(["healthcheck", "--url", server, "--live"]) == 0
    assert capsys.readouterr().out.strip() == "alive"
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["healthcheck", "--url", dead, "--timeout", "2"]) == 1
    assert capsys.readouterr().out.startswith("not ready:")


def test_healthcheck_of_a_malformed_url_is_unhealthy_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["healthcheck", "--url", "http://[::1"]) == 1
    assert capsys.readouterr().out == (
        "not ready: http://[::1/ready: InvalidURL: Invalid port: ':1'\n"
    )


def test_healthcheck_local_for_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["healthcheck", "--local"]) == 0
    assert "data_dir: ok" in capsys.readouterr().out
    monkeypatch.setenv("CALLANNOTATE_API__MAX_UPLOAD_BYTES", str(10**17))
    assert cli.main(["healthcheck", "--local"]) == 1
    assert "data_dir" in capsys.readouterr().out
