"""``callannotate users | apikeys | clients | signing-key`` on a temporary data folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from callannotate.cli import main
from callannotate.config import Settings
from callannotate.db.engine import Database
from callannotate.security.service import AuthService


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CALLANNOTATE_AUTH__ARGON2_TIME_COST", "1")
    monkeypatch.setenv("CALLANNOTATE_AUTH__ARGON2_MEMORY_COST", "1024")
    monkeypatch.delenv("CALLANNOTATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("CALLANNOTATE_DATABASE__URL", raising=False)
    return str(tmp_path / "data")


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def _service(data_dir: str) -> AuthService:
    settings = Settings(data_dir=Path(data_dir))
    return AuthService(settings, Database.from_settings(settings))


def test_users_lifecycle(
    data_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "--data-dir", data_dir, "list"]) == 0
    assert "users create NAME --role admin" in capsys.readouterr().out  # first-admin hint

    _stdin(monkeypatch, "first password\n")
    assert main(["users", "--data-dir", data_dir, "create", "Root", "--role", "admin",
                 "--password-stdin"]) == 0  # fmt: skip
    assert "created admin root" in capsys.readouterr().out

    answers = iter(["bob password", "bob password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr("callannotate.security.cli._has_terminal", lambda: True)
    assert main(["users", "--data-dir", data_dir, "create", "bob"]) == 0
    capsys.readouterr()

    assert main(["users", "--data-dir", data_dir, "list", "--json"]) == 0
    users = {u["username"]: u for u in json.loads(capsys.readouterr().out)}
    assert users["root"]["role"] == "admin" and users["bob"]["role"] == "user"

    _stdin(monkeypatch, "x\n")
    assert main(["users", "--data-dir", data_dir, "create", "root", "--password-stdin"]) == 2
    assert "at least 8" in capsys.readouterr().err

    assert main(["users", "--data-dir", data_dir, "disable", "bob"]) == 0
    service = _service(data_dir)
    user = service.store.user_by_name("bob")
    assert user is not None and user.disabled
    assert main(["users", "--data-dir", data_dir, "enable", "bob"]) == 0
    _stdin(monkeypatch, "new bob password\n")
    assert main(["users", "--data-dir", data_dir, "set-password", "bob", "--password-stdin"]) == 0
    assert service.login("bob", "new bob password", None).access_token
    assert main(["users", "--data-dir", data_dir, "disable", "nobody"]) == 2
    service.db.dispose()

    mismatch = iter(["one password", "two password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(mismatch))
    monkeypatch.setattr("callannotate.security.cli._has_terminal", lambda: True)
    assert main(["users", "--data-dir", data_dir, "create", "carol"]) == 2
    assert "do not match" in capsys.readouterr().err


def test_apikeys_and_clients(
    data_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, "alice password\n")
    assert main(["users", "--data-dir", data_dir, "create", "alice", "--password-stdin"]) == 0
    capsys.readouterr()

    assert main(["apikeys", "--data-dir", data_dir, "create", "--user", "alice",
                 "--name", "backup script", "--scopes", "read"]) == 0  # fmt: skip
    key = capsys.readouterr().out.strip().splitlines()[-1]
    service = _service(data_dir)
    principal = service.principal_from_api_key(key)
    assert principal.name == "alice" and principal.scopes == {"read"}

    assert main(["apikeys", "--data-dir", data_dir, "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["user"] == "alice" and row["last_used_at"] != "-" and key not in json.dumps(row)

    assert main(["apikeys", "--data-dir", data_dir, "revoke", row["id"]]) == 0
    service.invalidate()
    with pytest.raises(Exception, match="invalid credentials"):
        service.principal_from_api_key(key)
    assert main(["apikeys", "--data-dir", data_dir, "revoke", "nope"]) == 2
    capsys.readouterr()

    assert main(["clients", "--data-dir", data_dir, "create", "--user", "alice",
                 "--name", "crm"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    client_id = out.split("client_id:")[1].split()[0]
    secret = out.split("client_secret:")[1].split()[0]
    assert service.client_credentials(client_id, secret, "read").scopes == {"read"}
    assert main(["clients", "--data-dir", data_dir, "disable", client_id]) == 0
    assert main(["clients", "--data-dir", data_dir, "list"]) == 0
    assert "disabled" in capsys.readouterr().out
    service.db.dispose()


def test_signing_key_rotation(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["signing-key", "--data-dir", data_dir, "list"]) == 0
    (first,) = capsys.readouterr().out.strip().splitlines()
    assert "current" in first
    assert main(["signing-key", "--data-dir", data_dir, "rotate"]) == 0
    capsys.readouterr()
    assert main(["signing-key", "--data-dir", data_dir, "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "retired" in lines[0] and "current" in lines[1]


def test_users_create_without_a_terminal_or_stdin_is_an_error_not_a_traceback(
    data_dir: str,
) -> None:
    """No terminal (a new session has none) and an empty stdin: one line and exit code 2
    (was an EOFError traceback from getpass)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CALLANNOTATE_DATA_DIR": data_dir}
    for command in (["create", "dave"], ["set-password", "dave"]):
        done = subprocess.run(
            [sys.executable, "-m", "callannotate.cli", "users", *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            start_new_session=True,  # no controlling terminal for getpass to open
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "Warning" not in done.stderr  # GetPassWarning
        assert done.stderr.endswith(
            "callannotate: error: no password was typed; in a script, pipe it in with "
            "--password-stdin\n"
        )


def test_apikeys_list_json_gives_null_for_times_not_set(
    data_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script reading `--json` must be able to test `revoked_at` for truth: "-" is not null."""
    _stdin(monkeypatch, "alice password\n")
    assert main(["users", "--data-dir", data_dir, "create", "alice", "--password-stdin"]) == 0
    assert main(["apikeys", "--data-dir", data_dir, "create", "--user", "alice",
                 "--name", "unused"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["apikeys", "--data-dir", data_dir, "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["last_used_at"] is None and row["revoked_at"] is None
    assert row["created_at"]
    assert main(["apikeys", "--data-dir", data_dir, "revoke", row["id"]]) == 0
    capsys.readouterr()
    assert main(["apikeys", "--data-dir", data_dir, "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["revoked_at"] is not None
    assert main(["apikeys", "--data-dir", data_dir, "list"]) == 0
    out = capsys.readouterr().out
    assert "revoked" in out and "last used -" in out  # the table still shows "-"
