"""Typed model settings: one default per parameter, unknown keys rejected with the file,
the section and the key, the shipped file resolving to the values the figures were
measured with, and the checker command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from callannotate.config import Settings
from callannotate.errors import ConfigError
from callannotate.pipeline import registry
from callannotate.pipeline.settings import (
    STEPS,
    DiarizeSettings,
    ModelsSettings,
    VadSettings,
    load_models_settings,
    parse_models,
)
from callannotate.pipeline.settings_cli import check_file

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "models.yaml"


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"diarize": {"treshold": 0.7}}, "diarize: unknown key 'treshold'"),
        ({"diarize": {"segmentation": {"fle": "x"}}}, "diarize.segmentation: unknown key 'fle'"),
        ({"diarize": {"count_model": {"sha": "x"}}}, "diarize.count_model: unknown key 'sha'"),
        (
            {"transcription": {"streaming": {"modle": "base"}}},
            "transcription.streaming: unknown key 'modle'",
        ),
        ({"recognition": {"ge2e": {"enable": False}}}, "recognition.ge2e: unknown key 'enable'"),
        ({"vda": {}}, "unknown step 'vda'"),
        ({"vad": {"class": "x:Y"}}, "vad: unknown key 'class'"),
        ({"vad": {"threshold": "high"}}, "vad: threshold: Input should be a valid number"),
        ({"vad": {"threshold": 1.5}}, "vad: threshold"),
        ({"diarize": {"count_weight": 2}}, "diarize: count_weight"),
        ({"transcription": {"model": "does-not-exist"}}, "unknown Whisper model 'does-not-exist'"),
        ({"preprocess": {"denoise_method": "magic"}}, "preprocess: denoise_method"),
        ({"diarize": {"embeddings": "waveform"}}, "diarize: unknown key 'embeddings'"),
        ("- vad\n", "expected a mapping"),
        ("vad: [\n", "not valid YAML"),
    ],
)
def test_a_bad_file_names_the_file_the_section_and_the_key(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = _write(tmp_path, document)
    with pytest.raises(ConfigError) as info:
        load_models_settings(path)
    assert info.value.detail.startswith("models.yaml: ")  # no server path (API clients)
    assert message in info.value.detail
    assert info.value.status_code == 503 and info.value.code == "configuration_error"


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_models_settings(tmp_path / "nope.yaml")


def test_sections_enable_steps_and_take_every_default(tmp_path: Path) -> None:
    models = load_models_settings(_write(tmp_path, "vad:\ndiarize: {}\n"))
    assert models.steps() == ["vad", "diarize"]
    assert models.vad == VadSettings() and models.diarize == DiarizeSettings()
    assert load_models_settings(_write(tmp_path, "")).steps() == []
    with pytest.raises(ConfigError, match="'transcription' is not configured"):
        models.section("transcription")


def test_the_yaml_overrides_and_changes_are_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path, {"vad": {"threshold": 0.3}})
    assert load_models_settings(path).vad == VadSettings(threshold=0.3)
    time.sleep(0.01)
    path.write_text(yaml.safe_dump({"vad": {"threshold": 0.6, "speech_pad_ms": 30}}))
    vad = load_models_settings(path).vad
    assert vad is not None and (vad.threshold, vad.speech_pad_ms) == (0.6, 30)


# Values the shipped config/models.yaml ran with before the settings were typed (the
# hand-written parsers' YAML values, and their code defaults for keys the YAML left out).
# DER, WER and speaker-ID figures depend on them.
BEFORE: dict[str, dict[str, Any]] = {
    "preprocess": {"dc_removal": True, "highpass_hz": None, "loudness_normalize": False},
    "vad": {
        "threshold": 0.4,
        "neg_threshold": None,
        "min_speech_ms": 250,
        "min_silence_ms": 100,
        "speech_pad_ms": 100,
        "max_speech_s": None,
        "input_lufs": -23.0,
        "input_max_gain_db": 30.0,
    },
    "embedding": {"batch_size": 16, "max_batch_frames": 24000, "crop_tolerance": 0.0},
    "diarize": {
        "window": 10.0,
        "step": 0.5,
        "batch_size": 8,
        "threshold": 0.80,
        "linkage": "centroid",
        "neighbours": 6,
        "min_cluster_size": 2,
        "feature_chunk_s": 2.0,
        "feature_context_s": 1.0,
        "overlap_weight": 0.0,
        "piece_s": 0.0,
        "refine_piece_s": 2.0,
        "refine_hop_s": 0.5,
        "refine_min_s": 1.0,
        "refine_margin": 0.05,
        "refine_iterations": 1,
        "min_embed_s": 0.4,
        "min_train_s": 0.5,
        "soft_count": True,
        "soft_scores": True,
        "min_speaker_s": 0.5,
        "hamming": False,
        "edge_weight": 1.0,
        "edge_s": 0.0,
        "count_bias": -0.05,
        "overlap_bias": 0.15,
        "count_weight": 0.5,
        "count_window": 5.0,
        "count_step": 0.5,
        "count_batch": 4,
        "fill_s": 1.0,
        "fill_min_s": 0.1,
        "time_shift": 0.02,
        "min_duration_on": 0.1,
        "min_duration_off": 0.0,
        "per_channel_max_speakers": 1,
        "crosstalk_db": 15.0,
    },
    "transcription": {
        "model": "base",
        "compute_type": "int8",
        "beam_size": 5,
        "vad_filter": True,
        "strategy": "whole",
        "spell_numbers": False,
        "temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        "vad_threshold": 0.5,
        "vad_speech_pad_ms": 400,
    },
    "sentiment": {"emotion_lexicon": "builtin"},
    "recognition": {
        "score_norm": "center",
        "min_voices": 3,
        "wccn_shrink": 0.5,
        "threshold": 0.46,
        "fused_threshold": 0.65,
        "center_threshold": 0.23,
        "fused_center_threshold": 0.22,
        "view_max_s": 3.0,
        "view_min_s": 0.15,
        "min_speech_s": 0.2,
        "silence_dbfs": -55.0,
        "pad_to_s": 1.6,
        "chunk_s": 30.0,
        "max_speaker_speech_s": 120.0,
        "min_turn_s": 0.3,
    },
}


def test_the_shipped_file_resolves_to_the_values_the_figures_were_measured_with() -> None:
    models = load_models_settings(SHIPPED)
    assert models.steps() == list(STEPS)
    for step, values in BEFORE.items():
        section = models.section(step)
        assert {k: getattr(section, k) for k in values} == values, step
    stream = models.transcription.streaming if models.transcription else None
    assert stream is not None and (stream.model, stream.multilingual_model) == ("tiny.en", "base")
    assert models.recognition is not None and models.recognition.ge2e.enabled


def test_processor_defaults_equal_the_shipped_file() -> None:
    """Each default is defined once: a processor built with no parameters runs exactly
    what the shipped file configures (before, code defaults such as the VAD threshold 0.5,
    padding 30 ms and the clustering threshold 0.7 differed from the YAML)."""
    models = load_models_settings(SHIPPED)
    for step in models.steps():
        cls = registry.processor_class(step)
        bare = cls({}, Path("/nonexistent"))
        configured = cls(models.section(step), Path("/nonexistent"))
        assert bare.settings == configured.settings, step
    vad = registry.processor_class("vad")({}, Path("/nonexistent"))
    assert vad.settings.threshold == 0.4 and vad.settings.speech_pad_ms == 100
    diarizer = registry.processor_class("diarize")({}, Path("/nonexistent"))
    assert diarizer.clustering.threshold == 0.80


def test_registry_builds_typed_processors(tmp_path: Path) -> None:
    path = _write(tmp_path, {"vad": {"threshold": 0.3}, "sentiment": None})
    settings = Settings(data_dir=tmp_path / "data", models_config=path)
    assert registry.configured_steps(settings) == ["vad", "sentiment"]
    proc = registry.get_processor(settings, "vad")
    assert isinstance(proc.settings, VadSettings) and proc.settings.threshold == 0.3
    assert registry.step_config(settings, "vad")["threshold"] == 0.3
    with pytest.raises(ConfigError, match="'diarize' is not configured"):
        registry.get_processor(settings, "diarize")


def test_parse_models_accepts_a_resolved_dump() -> None:
    """What the checker prints is itself a valid models file with the same values."""
    from callannotate.pipeline.settings_cli import resolved

    models = load_models_settings(SHIPPED)
    again = parse_models(json.loads(json.dumps(resolved(models))), "dump")
    assert again.steps() == models.steps()
    for step in models.steps():
        assert again.section(step).model_dump(exclude_none=True).keys() >= {
            k for k, v in models.section(step).model_dump().items() if v is not None
        }
    assert again.vad is not None and again.vad.threshold == 0.4
    assert isinstance(again, ModelsSettings)


def test_checker_prints_resolved_settings_and_fails_on_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_file(SHIPPED, as_json=True, files=False, out=sys.stdout, err=sys.stderr) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["diarize"]["threshold"] == 0.8
    assert printed["vad"]["sha256"].startswith("9ccdacc4")  # resolved from the manifest
    bad = _write(tmp_path, {"diarize": {"treshold": 0.7}})
    assert check_file(bad, as_json=False, files=False, out=sys.stdout, err=sys.stderr) == 2
    assert "diarize: unknown key 'treshold'" in capsys.readouterr().err


def test_python_m_callannotate_config_check(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "callannotate.config", "--check", str(SHIPPED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert yaml.safe_load(good.stdout)["vad"]["threshold"] == 0.4
    bad = subprocess.run(
        [sys.executable, "-m", "callannotate.config", "--check", str(_write(tmp_path, "vda:\n"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "unknown step 'vda'" in bad.stderr


def test_callannotate_config_check_command(tmp_path: Path) -> None:
    from callannotate.cli import main

    assert main(["config", "check", str(SHIPPED), "--json"]) == 0
    assert main(["config", "check", str(_write(tmp_path, {"vad": {"x": 1}}))]) == 2
