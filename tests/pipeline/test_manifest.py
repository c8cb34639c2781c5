"""The model manifest is the one place pins live: the README table, requirements-models.txt
and the loaders agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callannotate.errors import ModelUnavailable
from callannotate.pipeline.asr.whisper_models import KNOWN_MODELS
from callannotate.pipeline.manifest import MODELS, WHISPER_MODELS, requirements
from callannotate.pipeline.models import package_file

ROOT = Path(__file__).resolve().parents[2]


def _readme_model_rows() -> dict[str, list[str]]:
    """Rows of the README's model table, by model name (first cell, without backticks)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    header = "| model | used by | packages | weights file | sha256 | licence |"
    assert header in text, "README model table not found"
    rows: dict[str, list[str]] = {}
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_readme_table_agrees_with_the_manifest() -> None:
    rows = _readme_model_rows()
    assert sorted(rows) == sorted(MODELS)
    for name, model in MODELS.items():
        _, _, packages, weights, sha, licence = rows[name]
        listed = re.findall(r"`([^`]+==[^`]+)`", packages)
        assert listed == list(dict.fromkeys(f.requirement for f in model.files)), name
        assert weights.startswith(f"`{model.main.file}`"), name
        assert sha == f"`{model.main.sha256}`", name
        assert licence == model.licence, name


def test_requirements_file_agrees_with_the_manifest() -> None:
    lines = (ROOT / "requirements-models.txt").read_text(encoding="utf-8").splitlines()
    pinned = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert pinned == requirements()


def test_every_manifest_file_is_pinned() -> None:
    for model in MODELS.values():
        assert model.licence and model.title
        for f in model.files:
            assert f.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", f.sha256), f
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", f.requirement), f
            assert f.version


def test_whisper_loader_uses_the_manifest_pins() -> None:
    assert sorted(KNOWN_MODELS) == sorted(WHISPER_MODELS)
    for name, spec in KNOWN_MODELS.items():
        model = WHISPER_MODELS[name]
        pinned = {(f.package, f.file, f.sha256) for f in model.files}
        for part in spec.parts:
            assert (part.package, part.relpath, part.sha256) in pinned
        for side, sha in spec.side_sha256.items():
            assert (spec.side_package, f"{spec.side_dir}/{side}", sha) in pinned


@pytest.mark.models
def test_every_manifest_file_is_installed_with_its_digest() -> None:
    """The installed wheels carry exactly the pinned files (what setup.sh installs)."""
    for model in MODELS.values():
        for f in model.files:
            try:
                assert package_file(f.package, f.file, f.sha256, pip=f.requirement).is_file()
            except ModelUnavailable as exc:  # pragma: no cover - depends on the machine
                pytest.fail(exc.detail)
