"""``callannotate models prepare``: fills a model cache with the converted files, lists it,
and says clearly what is wrong when a model cannot be prepared.

The full set (ONNX exports with torch, minutes) is prepared by scripts/docker/build-images.sh
and checked by tests/deploy/test_image.py; here a models file with the steps that need no
export (Silero VAD from its wheel, the multilingual Whisper joined from its two wheels) keeps
it to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callannotate.cli import main
from callannotate.pipeline.models_cli import cache_files

pytestmark = pytest.mark.models

MODELS_YAML = """\
vad: {}
transcription:
  model: base
  streaming:
    model: base
    multilingual_model: base
"""


@pytest.fixture
def models_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS_YAML)
    monkeypatch.setenv("CALLANNOTATE_MODELS_CONFIG", str(path))
    return path


def test_prepare_joins_whisper_into_the_cache(
    models_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert main(["models", "prepare", "--cache-dir", str(cache), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cache_dir"] == str(cache.resolve())
    assert report["steps"] == ["vad", "transcription", "transcription.streaming"]
    names = set(report["files"])
    whisper = {n for n in names if n.startswith("whisper-base-")}
    assert {Path(n).name for n in whisper} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    assert report["files"] == cache_files(cache)
    assert min(report["files"].values()) > 0

    # a second run finds everything in place and lists the same files
    assert main(["models", "prepare", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"prepared vad, transcription, transcription.streaming in {cache}")
    assert all(name in out for name in names)


def test_prepare_names_the_model_it_cannot_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-whisper"
    path = tmp_path / "models.yaml"
    path.write_text(f"transcription:\n  path: {missing}\n")
    monkeypatch.setenv("CALLANNOTATE_MODELS_CONFIG", str(path))
    assert main(["models", "prepare", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callannotate: error: ")
    assert str(missing) in err and "does not exist" in err


def test_cache_files_skips_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.bin").write_bytes(b"12345")
    (tmp_path / ".segmentation-x.onnx.tmp").write_bytes(b"partial")
    assert cache_files(tmp_path) == {"sub/model.bin": 5}
