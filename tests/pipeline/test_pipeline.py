"""``annotate`` end to end on a real recording: partial words while transcribing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from callannotate.config import Settings
from callannotate.pipeline.run import annotate
from callannotate.pipeline.types import AnnotateOptions, Step, Word

pytestmark = pytest.mark.models

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"


def tiny_settings(tmp_path: Path) -> Settings:
    """The repo's VAD and Whisper tiny.en (the fastest packaged model)."""
    config = yaml.safe_load(Settings().models_config.read_text())
    models = tmp_path / "models.yaml"
    subset = {
        "vad": config["vad"],
        "transcription": {**config["transcription"], "model": "tiny.en"},
    }
    models.write_text(yaml.safe_dump(subset))
    return Settings(data_dir=tmp_path / "data", models_config=models)


@pytest.mark.skipif(not JFK.is_file(), reason=f"{JFK} not found (set CALLANNOTATE_SHARED_DATA)")
def test_partial_words_per_channel(tmp_path: Path) -> None:
    batches: list[list[Word]] = []
    options = AnnotateOptions(steps=[Step.VAD, Step.TRANSCRIBE], language="en")
    annotation = annotate(JFK, options, settings=tiny_settings(tmp_path), on_words=batches.append)
    assert annotation.recording.channel_mode == "per-channel"  # jfk.flac is stereo
    partial = [w for batch in batches for w in batch]
    assert {w.speaker for w in partial} == {"CH0", "CH1"}
    # each channel's words arrive in order, channel after channel; the result merges them
    channels = [w.speaker for w in partial]
    assert channels == sorted(channels)
    key = sorted((w.start, w.end, w.text, w.speaker) for w in partial)
    assert key == sorted((w.start, w.end, w.text, w.speaker) for w in annotation.words)
