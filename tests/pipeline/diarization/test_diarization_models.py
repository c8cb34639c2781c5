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
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


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
    from callannotate.pipeline.audio.decode import decode

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


LIBRIVOX = _shared_data() / "asr" / "en" / "librivox"
JFK = _shared_data() / "asr" / "en" / "jfk" / "jfk.flac"
needs_voices = pytest.mark.skipif(
    not (LIBRIVOX.is_dir() and JFK.is_file()),
    reason=f"shared single-speaker recordings not found under {LIBRIVOX.parent}",
)


def _speech_spans(x: np.ndarray, floor_db: float = 25.0) -> list[tuple[float, float]]:
    """Speech of a clean single-speaker recording: 30 ms frames (10 ms hop) within
    ``floor_db`` of the recording's loud frames, gaps under 0.3 s filled."""
    hop, win = 160, 480
    n = 1 + (len(x) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n]
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    on = np.concatenate([[0], (db > np.percentile(db, 95) - floor_db).astype(int), [0]])
    edges = np.flatnonzero(np.diff(on))
    spans: list[list[float]] = []
    for a, b in zip(edges[0::2], edges[1::2], strict=True):
        start, end = a * hop / 16_000, (b * hop + win) / 16_000
        if spans and start - spans[-1][1] < 0.3:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(s, e) for s, e in spans if e - s >= 0.1]


@needs_voices
def test_per_channel_stereo_of_two_real_voices(diarizer) -> None:  # type: ignore[no-untyped-def]
    """A synthetic call-centre stereo file: a LibriVox reader on the left channel, JFK on
    the right, overlapping twice, each channel leaking the other party 30 dB down (echo).
    Per-channel diarization must give each party its channel with near-perfect DER."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from callannotate.pipeline.audio.decode import decode
    from callannotate.pipeline.diarization import DiarizationInput

    reader = [
        decode(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{i}.wav").mono()
        for i in ("0870", "0890", "0930")
    ]
    kennedy = decode(JFK).mono()
    sr = 16_000
    channels = np.zeros((2, 30 * sr), dtype=np.float32)
    reference = Annotation(uri="stereo")
    placed = [(0, x, start) for x, start in zip(reader, (0.5, 16.0, 24.0), strict=True)]
    placed.append((1, kennedy, 7.0))  # overlaps the reader at 7.0-7.6 s and 16.0-18.0 s
    for channel, wave, start in placed:
        first = round(start * sr)
        channels[channel, first : first + len(wave)] += wave
        for s, e in _speech_spans(wave):
            reference[Segment(start + s, start + e), len(reference)] = f"party{channel}"
    stereo = channels + 10 ** (-30 / 20) * channels[::-1]
    result = diarizer.process(
        DiarizationInput(audio=AudioBuffer(samples=stereo, sample_rate=sr), per_channel=True)
    )
    assert {s.label: s.channel for s in result.speakers} == {"CH0": 0, "CH1": 1}
    hypothesis = Annotation(uri="stereo")
    for i, t in enumerate(result.turns):
        hypothesis[Segment(t.start, t.end), i] = t.speaker
    # The truth comes from an energy detector, so boundaries get the usual 0.25 s collar.
    detail = DiarizationErrorRate(collar=0.25, skip_overlap=False)(
        reference, hypothesis, detailed=True
    )
    assert detail["confusion"] == 0.0
    assert detail["diarization error rate"] < 0.06
    # Both parties are found talking at once where the recordings overlap.
    both = [t for t in result.turns if t.speaker == "CH0" and t.start < 17.5 and t.end > 16.5] and [
        t for t in result.turns if t.speaker == "CH1" and t.start < 17.5 and t.end > 16.5
    ]
    assert both


@needs_call
def test_split_campplus_equals_the_whole_network(diarizer, call_audio: AudioBuffer) -> None:  # type: ignore[no-untyped-def]
    """Features + pooling with all-ones weights reproduce CAM++ on the same audio."""
    encoder = diarizer.frame_embedder()
    wave = call_audio.samples[0][: 5 * 16_000]
    feats = encoder.features(wave)
    pooled = encoder.pool(feats, np.ones((1, len(feats)), np.float32))[0]
    assert float(pooled @ diarizer._embedder.embed(wave)) > 0.9999


@needs_call
def test_masked_pooling_matches_each_speakers_own_embedding(
    diarizer, call_audio: AudioBuffer
) -> None:  # type: ignore[no-untyped-def]
    """Pooling the features of the whole call under one speaker's solo-speech mask gives
    an embedding close to CAM++ run on that speaker's audio alone, and far from the
    other speaker's."""
    from callannotate.pipeline.diarization.frames import chunk_features

    mono = call_audio.samples[0]
    encoder = diarizer.frame_embedder()
    feats, times = chunk_features(encoder, mono, diarizer.feature_chunk_s, 1.0)
    spans: dict[str, list[tuple[float, float]]] = {}
    for line in (CALL / "sample.rttm").read_text().splitlines():
        p = line.split()
        spans.setdefault(p[7], []).append((float(p[3]), float(p[3]) + float(p[4])))
    t = np.arange(len(mono)) / 16_000
    speaking = {k: np.any([(t >= a) & (t < b) for a, b in v], axis=0) for k, v in spans.items()}
    labels = sorted(speaking)
    assert len(labels) == 2
    pooled, direct = [], []
    for k in labels:
        solo = speaking[k] & ~np.any([speaking[o] for o in labels if o != k], axis=0)
        mask = solo[np.clip(np.rint(times * 16_000).astype(int), 0, len(mono) - 1)]
        pooled.append(encoder.pool(feats, mask[None].astype(np.float32))[0])
        direct.append(diarizer._embedder.embed(mono[solo]))
    for i in range(2):
        assert float(pooled[i] @ direct[i]) > 0.8
        assert float(pooled[i] @ direct[i]) > float(pooled[i] @ direct[1 - i]) + 0.3
