"""Silero VAD on onnxruntime: post-processing rules (no model) and real-model checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callannotate.errors import ConfigError, ModelUnavailable
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.vad import (
    FRAME,
    FRAME_SECONDS,
    SileroModel,
    SpeechRegion,
    VadResult,
    VoiceActivityDetector,
    merge_regions,
    regions_from_probabilities,
)
from callannotate.pipeline.settings import VadSettings
from callannotate.pipeline.types import AudioBuffer

SR = 16_000
MODEL_PARAMS: dict[str, Any] = {
    "package": "silero_vad",
    "file": "data/silero_vad_16k_sequence.onnx",
    "sha256": "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
    "pip": "silero-vad==6.2.3",
    "input_lufs": -23.0,
}
STATEFUL_PARAMS: dict[str, Any] = {
    "package": "silero_vad",
    "file": "data/silero_vad.onnx",
    "sha256": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
}


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


JFK = _shared_data() / "asr" / "en" / "jfk" / "jfk.flac"
needs_jfk = pytest.mark.skipif(
    not JFK.is_file(), reason=f"{JFK} not found (set CALLANNOTATE_SHARED_DATA)"
)


def _probs(pattern: str) -> np.ndarray:
    """One frame per character: '#' speech (0.9), '-' middling (0.4), '.' silence (0.05)."""
    table = {"#": 0.9, "-": 0.4, ".": 0.05}
    return np.array([table[c] for c in pattern], dtype=np.float32)


def _frames(region: SpeechRegion) -> tuple[int, int]:
    return round(region.start / FRAME_SECONDS), round(region.end / FRAME_SECONDS)


# ----------------------------------------------------------------------------- no model

NO_PAD = VadSettings(threshold=0.5, min_speech_ms=0, min_silence_ms=0, speech_pad_ms=0)


def test_hysteresis_keeps_speech_through_middling_frames() -> None:
    probs = _probs("...###--##----...")
    regions = regions_from_probabilities(probs, len(probs) * FRAME_SECONDS, NO_PAD)
    assert [_frames(r) for r in regions] == [(3, 14)]
    # middling frames alone never start speech
    assert regions_from_probabilities(_probs("..----.."), 1.0, NO_PAD) == []


def test_short_gaps_bridged_and_short_bursts_dropped() -> None:
    probs = _probs("..######..######......#.....")
    opts = VadSettings(threshold=0.5, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=0)
    regions = regions_from_probabilities(probs, len(probs) * FRAME_SECONDS, opts)
    # the 2-frame gap (64 ms) is bridged; the 1-frame burst (32 ms) is dropped
    assert [_frames(r) for r in regions] == [(2, 16)]


def test_padding_is_clamped_and_meets_in_the_middle() -> None:
    probs = _probs("#####..#####" + "." * 40 + "####")
    duration = len(probs) * FRAME_SECONDS
    opts = VadSettings(threshold=0.5, min_speech_ms=0, min_silence_ms=0, speech_pad_ms=100)
    regions = regions_from_probabilities(probs, duration, opts)
    assert len(regions) == 3
    assert regions[0].start == 0.0
    assert regions[0].end == pytest.approx(regions[1].start)  # 64 ms gap < 2 x pad
    assert regions[1].end == pytest.approx(12 * FRAME_SECONDS + 0.1, abs=1e-3)
    assert regions[2].end == pytest.approx(duration, abs=1e-3)


def test_long_regions_split_at_least_speechlike_frame() -> None:
    probs = np.full(200, 0.95, dtype=np.float32)
    probs[120] = 0.55
    opts = VadSettings(
        threshold=0.5, min_speech_ms=0, min_silence_ms=0, speech_pad_ms=0, max_speech_s=5.0
    )  # 156 frames
    regions = regions_from_probabilities(probs, 200 * FRAME_SECONDS, opts)
    assert [_frames(r) for r in regions] == [(0, 120), (120, 200)]


def test_options_validated() -> None:
    """A bad VAD setting is a configuration error naming the key (503, never a client's
    400), raised when the processor is created."""
    with pytest.raises(ConfigError, match="vad: threshold"):
        VoiceActivityDetector({"threshold": 1.5}, Path("/tmp"))
    with pytest.raises(ConfigError, match="neg_threshold"):
        VoiceActivityDetector({"threshold": 0.3, "neg_threshold": 0.6}, Path("/tmp"))
    assert VadSettings(threshold=0.5).offset_threshold == pytest.approx(0.35)


def test_merge_and_union() -> None:
    merged = merge_regions([SpeechRegion(2, 3), SpeechRegion(0, 1), SpeechRegion(0.5, 1.5)])
    assert merged == [SpeechRegion(0, 1.5), SpeechRegion(2, 3)]
    result = VadResult(
        regions=[[SpeechRegion(0, 1)], [SpeechRegion(0.8, 2)]],
        probabilities=[np.zeros(1, np.float32)] * 2,
    )
    assert result.union() == [SpeechRegion(0, 2)]
    assert result.speech_duration(1) == pytest.approx(1.2)


class _FakeSession:
    """Records what the runner feeds a sequence-layout model (unit test double)."""

    class _Input:
        def __init__(self, name: str) -> None:
            self.name = name

    def __init__(self) -> None:
        self.fed: list[np.ndarray] = []

    def get_inputs(self) -> list[_Input]:
        return [self._Input(n) for n in ("input", "h", "c")]

    def run(self, _: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.fed.append(feed["input"])
        rows = feed["input"].shape[0]
        return [np.full(rows, 0.5, np.float32), feed["h"] + 1, feed["c"]]


def test_frames_carry_64_sample_context_across_pushes() -> None:
    session = _FakeSession()
    stream = SileroModel(session).stream()
    audio = np.arange(3 * FRAME + 100, dtype=np.float32)
    assert stream.push(audio[:700]).shape == (1,)
    assert stream.push(audio[700:]).shape == (2,)
    assert stream.flush().shape == (1,)
    rows = np.concatenate(session.fed)
    assert rows.shape == (4, 576)
    assert np.all(rows[0, :64] == 0)
    assert np.array_equal(rows[1, :64], audio[FRAME - 64 : FRAME])
    assert np.array_equal(rows[2, 64:], audio[2 * FRAME : 3 * FRAME])
    assert np.array_equal(rows[3, 64:164], audio[3 * FRAME :])
    assert float(stream._h[0, 0, 0]) == 3.0  # state passed from call to call


def test_unknown_onnx_layout_rejected() -> None:
    session = _FakeSession()
    session.get_inputs = lambda: [_FakeSession._Input("x")]  # type: ignore[method-assign]
    with pytest.raises(ModelUnavailable):
        SileroModel(session)


# ----------------------------------------------------------------------------- real model


def test_sha256_mismatch_raises_model_unavailable() -> None:
    vad = VoiceActivityDetector({**MODEL_PARAMS, "sha256": "0" * 64}, Path("/tmp"))
    with pytest.raises(ModelUnavailable, match="sha256"):
        vad.ensure_loaded()
    assert not vad.loaded


def test_missing_package_raises_model_unavailable() -> None:
    vad = VoiceActivityDetector({**MODEL_PARAMS, "package": "no_such_vad_pkg"}, Path("/tmp"))
    with pytest.raises(ModelUnavailable, match=r"silero-vad==6\.2\.3"):
        vad.ensure_loaded()


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    detector = VoiceActivityDetector(dict(MODEL_PARAMS), Path("/tmp"), threads=1)
    detector.ensure_loaded()
    return detector


@pytest.mark.models
@needs_jfk
def test_finds_speech_in_jfk(vad: VoiceActivityDetector) -> None:
    buffer = audio_io.decode(JFK)
    mono = AudioBuffer(buffer.mono()[None, :], buffer.sample_rate)
    result = vad.process(mono)
    regions = result.regions[0]
    assert regions, "no speech found"
    assert 6.0 < result.speech_duration(0) <= 11.0
    assert regions[0].start < 1.0
    assert all(0 <= r.start < r.end <= buffer.duration + 1e-6 for r in regions)
    assert result.probabilities[0].shape == (int(np.ceil(buffer.frames / FRAME)),)


@pytest.mark.models
def test_no_speech_in_silence_or_low_noise(vad: VoiceActivityDetector) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros((1, 5 * SR), dtype=np.float32)
    noise = (0.003 * rng.standard_normal((1, 5 * SR))).astype(np.float32)  # about -50 dBFS
    assert vad.process(AudioBuffer(silence, SR)).regions == [[]]
    assert vad.process(AudioBuffer(noise, SR)).regions == [[]]


@pytest.mark.models
@needs_jfk
def test_stereo_file_gives_regions_per_channel(vad: VoiceActivityDetector, tmp_path: Path) -> None:
    import soundfile

    speech = audio_io.decode(JFK).samples[0]
    late = speech.copy()
    late[: 6 * SR] = 0.0  # the second party is silent for the first 6 s
    path = tmp_path / "call.wav"
    soundfile.write(path, np.stack([speech, late]).T, SR, subtype="PCM_16")
    buffer = audio_io.decode(path)
    assert buffer.channels == 2
    steps: list[tuple[int, int]] = []

    def hook(step: str, *, completed: int, total: int) -> None:
        steps.append((completed, total))

    result = vad.process(buffer, hook=hook)
    assert len(result.regions) == 2
    assert result.regions[0][0].start < 1.0
    assert result.regions[1] and result.regions[1][0].start >= 5.8
    assert result.speech_duration(1) < result.speech_duration(0) - 3.0
    assert steps[-1][0] == steps[-1][1]


@pytest.mark.models
@needs_jfk
def test_quiet_recording_detected_like_a_loud_one(vad: VoiceActivityDetector) -> None:
    speech = audio_io.decode(JFK).mono()
    loud = vad.process(AudioBuffer(speech[None, :], SR)).regions[0]
    quiet = vad.process(AudioBuffer((speech * 10 ** (-30 / 20))[None, :], SR)).regions[0]
    assert sum(r.duration for r in quiet) == pytest.approx(sum(r.duration for r in loud), abs=0.1)
    raw = VoiceActivityDetector({**MODEL_PARAMS, "input_lufs": None}, Path("/tmp"), threads=1)
    raw_quiet = raw.process(AudioBuffer((speech * 10 ** (-30 / 20))[None, :], SR)).regions[0]
    assert sum(r.duration for r in raw_quiet) < sum(r.duration for r in quiet)


@pytest.mark.models
@needs_jfk
def test_both_onnx_layouts_and_resampling_agree(vad: VoiceActivityDetector) -> None:
    buffer = audio_io.decode(JFK)
    mono = buffer.mono()
    stateful = VoiceActivityDetector(dict(STATEFUL_PARAMS), Path("/tmp"), threads=1)
    a = vad.model.probabilities(mono)
    b = stateful.model.probabilities(mono)
    assert stateful.model.layout == "stateful" and vad.model.layout == "sequence"
    assert np.max(np.abs(a - b)) < 1e-3
    raw = audio_io.decode(JFK, sample_rate=None)  # 44.1 kHz: resampled inside the VAD
    regions_44k = vad.process(AudioBuffer(raw.mono()[None, :], raw.sample_rate)).regions[0]
    regions_16k = vad.process(AudioBuffer(mono[None, :], SR)).regions[0]
    assert abs(sum(r.duration for r in regions_44k) - sum(r.duration for r in regions_16k)) < 0.5
