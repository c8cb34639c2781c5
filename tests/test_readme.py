"""The README documents every setting (with its environment variable) and every CLI command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from callannotate.cli import build_parser
from callannotate.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def env_vars(model: type[BaseModel], prefix: str = "CALLANNOTATE_") -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from env_vars(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [var for var in env_vars(Settings) if f"`{var}`" not in text]
    assert not missing, f"add these settings to the README's configuration table: {missing}"


def test_every_command_is_documented() -> None:
    text = README.read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    missing = [c for c in commands if f"callannotate {c}" not in text]
    assert not missing, f"document these commands in the README: {missing}"
