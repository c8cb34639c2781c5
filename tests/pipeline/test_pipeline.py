"""``annotate`` end to end on real recordings: the step vocabulary, partial words, channels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from callannotate.config import Settings
from callannotate.pipeline import annotate
from callannotate.pipeline.types import AnnotateOptions, Step, Word

pytestmark = pytest.mark.models

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
LIBRIVOX = SHARED / "asr" / "en" / "librivox"
CALL = SHARED / "diarization" / "callsample" / "sample.wav"


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


def two_party_call(path: Path) -> Path:
    """A stereo call: a LibriVox reader on the left, JFK on the right (overlapping at
    7.0-7.6 s), each channel leaking the other 30 dB down."""
    from callannotate.pipeline.audio.decode import decode

    reader = decode(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav").mono()
    sr = 16_000
    channels = np.zeros((2, 20 * sr), dtype=np.float32)
    for channel, wave, start in [(0, reader, 0.5), (1, decode(JFK).mono(), 7.0)]:
        first = round(start * sr)
        channels[channel, first : first + len(wave)] += wave[: channels.shape[1] - first]
    stereo = channels + 10 ** (-30 / 20) * channels[::-1]
    sf.write(path, stereo.T, sr)
    return path


needs_voices = pytest.mark.skipif(
    not (LIBRIVOX.is_dir() and JFK.is_file()),
    reason=f"shared recordings not found under {SHARED} (set CALLANNOTATE_SHARED_DATA)",
)


@needs_voices
def test_partial_words_per_channel(tmp_path: Path) -> None:
    batches: list[list[Word]] = []
    options = AnnotateOptions(steps=[Step.VAD, Step.TRANSCRIBE], language="en")
    call = two_party_call(tmp_path / "two-party.wav")
    annotation = annotate(call, options, settings=tiny_settings(tmp_path), on_words=batches.append)
    assert annotation.recording.channel_mode == "per-channel"  # one party per channel
    partial = [w for batch in batches for w in batch]
    assert {w.speaker for w in partial} == {"CH0", "CH1"}
    # each channel's words arrive in order, channel after channel; the result merges them
    channels = [w.speaker for w in partial]
    assert channels == sorted(channels)
    key = sorted((w.start, w.end, w.text, w.speaker) for w in partial)
    assert key == sorted((w.start, w.end, w.text, w.speaker) for w in annotation.words)


@needs_voices
def test_dual_mono_is_transcribed_once(tmp_path: Path) -> None:
    options = AnnotateOptions(steps=[Step.VAD, Step.TRANSCRIBE], language="en")
    annotation = annotate(JFK, options, settings=tiny_settings(tmp_path))
    assert annotation.recording.channels == 2
    assert annotation.recording.channel_mode == "mix (dual-mono)"
    assert {w.speaker for w in annotation.words} == {None}
    assert 20 <= len(annotation.words) <= 24  # 22 reference words; both channels gave 44


@pytest.mark.skipif(not CALL.is_file(), reason=f"{CALL} not found (set CALLANNOTATE_SHARED_DATA)")
def test_one_step_vocabulary_in_progress_and_reports(tmp_path: Path) -> None:
    """Every step of a full run reports progress and its report under one :class:`Step`
    name, so a job's progress (merged by name with the reports) holds each step once."""
    seen: list[object] = []

    def hook(step: Step, *, completed: int, total: int) -> None:
        seen.append(step)

    settings = Settings(data_dir=tmp_path / "data")
    annotation = annotate(CALL, AnnotateOptions(language="en"), settings=settings, hook=hook)
    assert all(isinstance(s, Step) for s in seen)
    reports = annotation.steps
    assert all(isinstance(r.name, Step) for r in reports)
    assert [r.name for r in reports] == list(Step)  # each step once, in order
    status = {r.name: r.status for r in reports}
    assert status[Step.IDENTIFY] == "done"  # nobody enrolled: nobody matched
    assert all(status[s] == "done" for s in Step)
    # What jobs/manager.py does: progress keyed by the hook's step, then the reports merged
    # in by their name. Before, "transcription"/"recognition" sat beside "transcribe".
    progress = {str(s) for s in seen} | {str(r.name) for r in reports}
    assert progress == {s.value for s in Step}
    assert {str(s) for s in seen} <= {s.value for s in Step}
    # the sentiment step's time is the scoring only; alignment has its own entry
    assert annotation.statistics is not None and annotation.statistics.sentiment is not None
    assert annotation.recording.channel_mode == "mix"
