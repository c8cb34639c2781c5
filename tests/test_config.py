"""The settings tree: an unknown key in any group is an error, never silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from callannotate import cli, config
from callannotate.config import Section, Settings


def _groups() -> list[type[BaseModel]]:
    found = []
    for name in dir(config):
        obj = getattr(config, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, BaseModel)
            and obj.__module__ == config.__name__
        ):
            found.append(obj)
    return found


def test_every_settings_group_forbids_unknown_keys() -> None:
    loose = [
        cls.__name__
        for cls in _groups()
        if cls is not Settings and cls.model_config.get("extra") != "forbid"
    ]
    assert not loose, f"derive these from config.Section: {loose}"
    assert issubclass(config.AuthSettings, Section)


def test_a_typo_in_a_nested_environment_variable_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLANNOTATE_AUTH__ENABLD", "false")
    with pytest.raises(ValidationError, match="enabld"):
        Settings()


def test_the_cli_names_the_bad_variable_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_API__PORTT", "9000")
    code = cli.main(["serve", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "CALLANNOTATE_API__PORTT: Extra inputs are not permitted" in err
    assert "Traceback" not in err


# ------------------------------------------------------------- secret settings read from files


def test_a_secret_setting_is_read_from_the_file_its_file_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "jwt").write_text("s" * 40 + "\n")
    (tmp_path / "master").write_text("bWFzdGVy\r\n")
    monkeypatch.setenv("CALLANNOTATE_AUTH__JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("CALLANNOTATE_ENCRYPTION__MASTER_KEY_FILE", str(tmp_path / "master"))
    settings = cli.load_settings(api__port=9000)  # the CLI re-validates a dump: still read once
    assert settings.auth.jwt_secret is not None
    assert settings.auth.jwt_secret.get_secret_value() == "s" * 40
    assert settings.encryption.master_key is not None
    assert settings.encryption.master_key.get_secret_value() == "bWFzdGVy"
    assert "s" * 40 not in repr(settings)


def test_a_missing_or_empty_secret_file_is_an_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALLANNOTATE_METRICS__TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match=r"token_file: cannot read .*absent"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("CALLANNOTATE_METRICS__TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match=r"token_file: .*empty is empty"):
        Settings()


def test_a_secret_and_its_file_together_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t" * 32)
    with pytest.raises(ValidationError, match="set token or token_file, not both"):
        config.MetricsSettings.model_validate({"token": "x", "token_file": tmp_path / "token"})


def test_only_secret_settings_have_a_file_variant(tmp_path: Path) -> None:
    (tmp_path / "host").write_text("0.0.0.0")
    with pytest.raises(ValidationError, match="host_file"):
        config.ApiSettings.model_validate({"host_file": str(tmp_path / "host")})


def test_the_database_password_file_replaces_the_password_in_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from callannotate.db import database_url
    from callannotate.db.engine import describe_url

    (tmp_path / "pw").write_text("p@ss:w/rd\n")
    monkeypatch.setenv("CALLANNOTATE_DATABASE__URL", "postgresql+psycopg://app:old@db:5432/ca")
    monkeypatch.setenv("CALLANNOTATE_DATABASE__PASSWORD_FILE", str(tmp_path / "pw"))
    url = database_url(Settings(data_dir=tmp_path))
    assert url == "postgresql+psycopg://app:p%40ss%3Aw%2Frd@db:5432/ca"
    assert describe_url(url) == "postgresql+psycopg://app:***@db:5432/ca"
    monkeypatch.delenv("CALLANNOTATE_DATABASE__URL")
    assert database_url(Settings(data_dir=tmp_path)).startswith("sqlite:///")  # no URL: SQLite


def test_a_list_of_secrets_is_read_one_per_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "old").write_text("first-old-secret\n\nsecond-old-secret\n")
    monkeypatch.setenv("CALLANNOTATE_AUTH__JWT_PREVIOUS_SECRETS_FILE", str(tmp_path / "old"))
    settings = cli.load_settings(api__port=9000)
    secrets = [s.get_secret_value() for s in settings.auth.jwt_previous_secrets]
    assert secrets == ["first-old-secret", "second-old-secret"]


# ------------------------------------------------------------- rate-limit buckets, one field


def test_one_field_of_a_rate_limit_bucket_keeps_the_other_fields_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README lists `..._UPLOADS__BURST` and `..._UPLOADS__PER_SECOND` as two variables:
    setting one of them must keep the other's default, not fail with "Field required"."""
    monkeypatch.setenv("CALLANNOTATE_RATE_LIMITS__ROLES__ADMIN__UPLOADS__BURST", "7")
    monkeypatch.setenv("CALLANNOTATE_RATE_LIMITS__ROLES__ANONYMOUS__READS__PER_SECOND", "3")
    monkeypatch.setenv("CALLANNOTATE_RATE_LIMITS__LOGIN__PER_SECOND", "0.5")
    limits = Settings().rate_limits
    assert (limits.roles.admin.uploads.burst, limits.roles.admin.uploads.per_second) == (7, 2.0)
    assert (limits.roles.anonymous.reads.burst, limits.roles.anonymous.reads.per_second) == (
        120,
        3.0,
    )
    assert (limits.login.burst, limits.login.per_second) == (30, 0.5)
    assert limits.roles.admin.reads.burst == 1200  # the role's other budgets: untouched


def test_a_partial_json_bucket_keeps_the_other_field_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLANNOTATE_RATE_LIMITS__ROLES__USER__UPLOADS", '{"burst": 10}')
    uploads = Settings().rate_limits.roles.user.uploads
    assert (uploads.burst, uploads.per_second) == (10, 0.5)
    with pytest.raises(ValidationError, match="per_second"):
        config.BucketSettings.model_validate({"burst": 1})  # a bare bucket has no defaults


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_a_port_out_of_range_is_refused_not_wrapped(
    port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --port 99999` listened on 34463 (99999 - 65536) while saying 99999."""
    with pytest.raises(ValidationError, match="port"):
        config.ApiSettings(port=port)
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["serve", "--port", str(port)]) == 2
    assert "CALLANNOTATE_API__PORT" in capsys.readouterr().err
