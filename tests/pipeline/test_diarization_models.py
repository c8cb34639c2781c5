"""The real diarizer (segmentation-3.0 + CAM++ on onnxruntime) on the shared call sample."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from callannotate.pipeline.types import AudioBuffer

pytestmark = pytest.mark.models


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


CALL = _shared_data() / "diarization" / "callsample"
needs_call = pytest.mark.skipif(
    not (CALL / "sample.wav").is_file(), reason=f"shared evaluation data not found at {CALL}"
)


@pytest.fixture(scope="module")
def diarizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from callannotate.config import Settings
    from callannotate.errors import ModelUnavailable
    from callannotate.pipeline.diarization import Diarizer
    from callannotate.pipeline.registry import step_config

    cache_env = os.environ.get("CALLANNOTATE_MODEL_CACHE_DIR")
    cache = Path(cache_env) if cache_env else tmp_path_factory.mktemp("models")
    proc = Diarizer(step_config(Settings(), "diarize"), cache, threads=2)
    try:
        proc.ensure_loaded()
    except ModelUnavailable as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"diarization models not installed: {exc.detail}")
    return proc


@pytest.fixture(scope="module")
def call_audio() -> AudioBuffer:
    from callannotate.pipeline.audio import decode

    return decode(CALL / "sample.wav")


@needs_call
def test_call_sample_der_and_speakers(diarizer, call_audio: AudioBuffer) -> None:  # type: ignore[no-untyped-def]
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from callannotate.pipeline.diarization import DiarizationInput

    events: list[tuple[int, int]] = []
    result = diarizer.process(
        DiarizationInput(audio=call_audio),
        hook=lambda step, *, completed, total: events.append((completed, total)),
    )
    assert result.num_speakers == 2
    assert events and events[-1] == (100, 100)
    reference = Annotation(uri="sample")
    for line in (CALL / "sample.rttm").read_text().splitlines():
        p = line.split()
        reference[Segment(float(p[3]), float(p[3]) + float(p[4])), len(reference)] = p[7]
    hypothesis = Annotation(uri="sample")
    for i, t in enumerate(result.turns):
        hypothesis[Segment(t.start, t.end), i] = t.speaker
    der = DiarizationErrorRate(collar=0.0, skip_overlap=False)(
        reference, hypothesis, uem=Segment(0, call_audio.duration)
    )
    assert der < 0.25
    # The exclusive turns never overlap and stay inside the regular turns' extent.
    ex = sorted(result.exclusive_turns, key=lambda t: t.start)
    assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(ex))
    assert result.to_rttm("sample").startswith("SPEAKER sample 1 ")


@needs_call
def test_per_channel_labels_each_party(diarizer, call_audio: AudioBuffer) -> None:  # type: ignore[no-untyped-def]
    from callannotate.pipeline.diarization import DiarizationInput

    mono = call_audio.samples[0]
    half = len(mono) // 2
    left = mono.copy()
    left[half:] = 0.0
    right = np.zeros_like(mono)
    right[half:] = mono[half:]
    stereo = AudioBuffer(samples=np.stack([left, right]), sample_rate=16_000)
    result = diarizer.process(DiarizationInput(audio=stereo, per_channel=True))
    labels = {s.label: s.channel for s in result.speakers}
    assert labels == {"CH0": 0, "CH1": 1}
    for turn in result.turns:
        if turn.speaker == "CH0":
            assert turn.start < half / 16_000 + 0.5
        else:
            assert turn.end > half / 16_000 - 0.5
