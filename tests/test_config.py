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
