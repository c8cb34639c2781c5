"""The README documents every setting (with its environment variable) and every CLI command,
and its Python examples run.

Every ```python block of the README runs here, in a folder holding a short generated
``call.wav``; a block that needs a server or data the tests do not have opts out with
``<!-- readme-test: skip -->`` on the line before it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
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


# ------------------------------------------------------------------------------ Python examples

SKIP_MARK = "<!-- readme-test: skip -->"
BLOCK = re.compile(
    r"(?:^(?P<before>[^\n]*)\n)?^```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL
)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, skipped)`` of every ```python block in ``text``."""
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, match["code"], (match["before"] or "").strip() == SKIP_MARK))
    return blocks


def test_python_blocks_are_found_and_skips_are_marked() -> None:
    text = "intro\n```python\nx = 1\n```\n" + SKIP_MARK + "\n```python\nserver()\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n", False), (7, "server()\n", True)]


EXAMPLES = python_blocks(README.read_text())


def test_readme_has_a_runnable_python_example() -> None:
    assert any(not skipped for _, _, skipped in EXAMPLES), "the README's main example is gone"


@pytest.mark.parametrize(("line", "code"), [(line, code) for line, code, _ in EXAMPLES])
def test_readme_python_block_imports_resolve(line: int, code: str) -> None:
    """Every name a block imports exists (no models needed), skipped blocks included."""
    for node in ast.walk(ast.parse(code, filename=f"README.md:{line}")):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"README.md:{line}: cannot import {alias.name} from {node.module}"


def write_call(path: Path, seconds: float = 2.0, rate: int = 16000) -> None:
    """A short mono 16 kHz recording (two tones with a pause) for the examples to annotate."""
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.2 * np.sin(2 * np.pi * np.where(t < seconds / 2, 220, 330) * t)
    signal[(t > 0.9) & (t < 1.1)] = 0.0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal * 32767).astype(np.int16).tobytes())


@pytest.mark.models
@pytest.mark.parametrize(
    ("line", "code"), [(line, code) for line, code, skipped in EXAMPLES if not skipped]
)
def test_readme_python_block_runs(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    write_call(tmp_path / "call.wav")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
    if "annotate" in code:  # the entry-point example: it really annotated call.wav
        from callannotate.pipeline.types import Annotation

        annotation = namespace["annotation"]
        assert isinstance(annotation, Annotation)
        assert annotation.recording.duration == pytest.approx(2.0)
