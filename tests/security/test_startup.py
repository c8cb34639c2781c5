"""Secure by default: auth on in a fresh ``Settings()``, ``serve`` refusing a public address
with auth off, migrations on start and the first-admin hint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from callannotate.api.app import create_app
from callannotate.cli import main
from callannotate.config import ApiSettings, AuthSettings, Settings
from callannotate.db.engine import Database
from callannotate.security.service import AuthService
from callannotate.security.startup import (
    FIRST_ADMIN_HINT,
    bind_refusal,
    is_loopback_host,
    prepare_store,
)


def test_fresh_settings_have_auth_on(auth_enabled: None) -> None:
    assert Settings().auth.enabled is True
    assert AuthSettings().enabled is True


def test_the_test_suite_runs_with_auth_off_unless_asked() -> None:
    assert Settings().auth.enabled is False  # tests/conftest.py


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.5", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_bind_refusal_only_with_auth_off_on_a_public_address(tmp_path: Path) -> None:
    def settings(host: str, enabled: bool) -> Settings:
        return Settings(
            data_dir=tmp_path, api=ApiSettings(host=host), auth=AuthSettings(enabled=enabled)
        )

    assert bind_refusal(settings("127.0.0.1", False)) is None
    assert bind_refusal(settings("0.0.0.0", True)) is None
    message = bind_refusal(settings("0.0.0.0", False))
    assert message is not None and "'0.0.0.0'" in message and "auth" in message


def test_serve_refuses_a_public_host_with_auth_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--host", "0.0.0.0", "--no-workers"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on '0.0.0.0' with authentication off" in err
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_prepare_store_migrates_and_counts_accounts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert prepare_store(settings) is False
    db = Database.from_settings(settings)
    try:
        AuthService(
            settings.model_copy(
                update={"auth": AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024)}
            ),
            db,
        ).create_user("root", "correct horse battery", "admin")
    finally:
        db.dispose()
    assert prepare_store(settings) is True
    assert "callannotate users create NAME --role admin" in FIRST_ADMIN_HINT


def test_a_server_without_accounts_says_how_to_create_the_first_admin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=True),
    )
    app = create_app(settings)
    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        assert client.get("/jobs").status_code == 401
        engine = app.state.auth_service.db.engine
    assert any(
        "callannotate users create NAME --role admin" in r.getMessage() for r in caplog.records
    )
    assert engine.pool.checkedout() == 0  # the engine was disposed at shutdown
