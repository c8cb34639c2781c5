"""Audio front end: DC removal, loudness normalisation, noise reduction, quality report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from callannotate.errors import ConfigError
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.preprocess import (
    Preprocessor,
    assess_quality,
    estimate_snr_db,
    integrated_loudness,
    normalize_loudness,
    remove_dc,
    spectral_gate,
)
from callannotate.pipeline.types import AudioBuffer

SR = 16_000


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


DATA = _shared_data()
LIBRIVOX = DATA / "asr" / "en" / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.wav"
CALL = DATA / "diarization" / "callsample" / "sample.wav"
needs_data = pytest.mark.skipif(
    not CALL.is_file() or not LIBRIVOX.is_file(),
    reason=f"evaluation data not found at {DATA} (set CALLANNOTATE_SHARED_DATA)",
)


def _sine(seconds: float = 2.0, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frame_power_db(x: np.ndarray, q: float) -> float:
    hop = 512
    n = x.size // hop
    power = np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)
    return float(10 * np.log10(np.percentile(power, q) + 1e-20))


def test_remove_dc_zeroes_each_channel_mean() -> None:
    x = np.stack([_sine() + 0.2, _sine() - 0.1]).astype(np.float32)
    y = remove_dc(x)
    assert y.dtype == np.float32
    assert np.allclose(y.mean(axis=1), 0.0, atol=1e-5)
    assert np.allclose(y[0], _sine(), atol=1e-4)


def test_processor_removes_dc_and_reports_it() -> None:
    x = (_sine() + 0.25).astype(np.float32)[None, :]
    proc = Preprocessor({"dc_removal": True}, Path("/tmp"))
    result = proc.process(AudioBuffer(x, SR))
    assert result.applied == ["dc_removal"]
    assert abs(float(result.audio.samples.mean())) < 1e-4
    assert result.quality.dc_offset == pytest.approx(0.25, abs=1e-3)
    assert result.quality.loudness_lufs is not None
    assert x.mean() == pytest.approx(0.25, abs=1e-3)  # the input is left alone


def test_all_steps_off_returns_same_samples() -> None:
    x = _sine()[None, :]
    proc = Preprocessor({"dc_removal": False}, Path("/tmp"))
    result = proc.process(AudioBuffer(x, SR))
    assert result.applied == []
    assert np.array_equal(result.audio.samples, x)


def test_clipping_detected_in_quality() -> None:
    x = np.clip(_sine(amp=2.0), -1.0, 1.0)[None, :]
    quality = assess_quality(AudioBuffer(x, SR))
    assert quality.clipped
    assert quality.clipping_ratio > 0.1


def test_channels_are_kept_and_progress_reported() -> None:
    x = np.stack([_sine(), _sine(freq=220.0, amp=0.05)])
    calls: list[tuple[int, int]] = []

    def hook(step: str, *, completed: int, total: int) -> None:
        assert step == "preprocess"
        calls.append((completed, total))

    proc = Preprocessor(
        {"dc_removal": True, "loudness_normalize": True, "loudness_per_channel": True},
        Path("/tmp"),
    )
    result = proc.process(AudioBuffer(x, SR), hook=hook)
    assert result.audio.channels == 2
    assert calls[-1][0] == calls[-1][1]
    lufs = [integrated_loudness(result.audio.samples[c : c + 1], SR) for c in range(2)]
    assert lufs[0] == pytest.approx(-23.0, abs=0.5)
    assert lufs[1] == pytest.approx(-23.0, abs=0.5)


def test_short_or_silent_audio_is_not_normalised() -> None:
    short = _sine(seconds=0.2)[None, :]
    assert integrated_loudness(short, SR) is None
    out, gain = normalize_loudness(short, SR, -23.0)
    assert gain is None and out is short
    silent = np.zeros((1, SR * 2), dtype=np.float32)
    assert integrated_loudness(silent, SR) is None
    assert estimate_snr_db(silent, SR) is None


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="preprocess: denoise_method"):
        Preprocessor({"denoise": True, "denoise_method": "magic"}, Path("/tmp"))
    with pytest.raises(ConfigError, match="unknown key 'denoize'"):
        Preprocessor({"denoize": True}, Path("/tmp"))
    with pytest.raises(ConfigError):
        spectral_gate(_sine()[None, :], SR, strength=1.5)


@needs_data
def test_loudness_target_reached_on_real_clip() -> None:
    buffer = audio_io.decode(LIBRIVOX)
    before = integrated_loudness(buffer.samples, SR)
    assert before is not None
    proc = Preprocessor(
        {"dc_removal": True, "loudness_normalize": True, "target_lufs": -23.0}, Path("/tmp")
    )
    result = proc.process(buffer)
    after = integrated_loudness(result.audio.samples, SR)
    assert after is not None
    assert abs(after - (-23.0)) <= 1.0
    assert "loudness_normalize" in result.applied
    assert result.gain_db == pytest.approx(-23.0 - before, abs=1.0)
    assert result.quality.loudness_lufs == pytest.approx(before, abs=0.01)
    assert float(np.max(np.abs(result.audio.samples))) <= 10 ** (-1.0 / 20) + 1e-4


@needs_data
def test_peak_ceiling_limits_gain() -> None:
    buffer = audio_io.decode(CALL)
    out, gain = normalize_loudness(buffer.samples, SR, -10.0, peak_ceiling_dbfs=-1.0)
    assert gain is not None
    assert float(np.max(np.abs(out))) == pytest.approx(10 ** (-1.0 / 20), rel=1e-3)


@needs_data
def test_noise_reduction_lowers_noise_floor_on_real_clip() -> None:
    buffer = audio_io.decode(CALL)
    rng = np.random.default_rng(7)
    noise = (0.01 * rng.standard_normal(buffer.samples.shape)).astype(np.float32)  # -40 dBFS
    noisy = AudioBuffer(np.clip(buffer.samples + noise, -1, 1), SR)
    proc = Preprocessor({"dc_removal": True, "denoise": True}, Path("/tmp"))
    result = proc.process(noisy)
    assert result.applied == ["dc_removal", "denoise"]
    floor_before = _frame_power_db(noisy.samples[0], 10)
    floor_after = _frame_power_db(result.audio.samples[0], 10)
    speech_before = _frame_power_db(noisy.samples[0], 95)
    speech_after = _frame_power_db(result.audio.samples[0], 95)
    assert floor_after < floor_before - 8.0
    assert speech_after > speech_before - 3.0
    snr_in = result.quality.snr_db
    snr_out = assess_quality(result.audio).snr_db
    assert snr_in is not None and snr_out is not None
    assert snr_out > snr_in + 6.0


@needs_data
def test_snr_estimate_drops_with_added_noise() -> None:
    buffer = audio_io.decode(CALL)
    rng = np.random.default_rng(1)
    noisy = buffer.samples + (0.02 * rng.standard_normal(buffer.samples.shape)).astype(np.float32)
    clean_snr = estimate_snr_db(buffer.samples, SR)
    noisy_snr = estimate_snr_db(noisy, SR)
    assert clean_snr is not None and noisy_snr is not None
    assert noisy_snr < clean_snr - 10.0
