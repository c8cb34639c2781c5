"""Audio front end: DC removal, noise reduction, loudness normalisation and a quality report.

Every step is switched on or off in the ``preprocess:`` section of ``config/models.yaml``
(:class:`~callannotate.pipeline.settings.PreprocessSettings` holds the defaults)::

    preprocess:
      dc_removal: true          # subtract each channel's mean
      highpass_hz: null         # optional zero-phase Butterworth high-pass (e.g. 60 for hum)
      denoise: false            # spectral gating
      denoise_method: spectral-gate   # or "noisereduce" (the noisereduce package)
      denoise_strength: 0.8     # share of the noise taken out (0..1)
      loudness_normalize: false
      target_lufs: -23.0        # EBU R128 integrated loudness target
      loudness_per_channel: false
      max_gain_db: 30.0
      peak_ceiling_dbfs: -1.0   # the gain never pushes a sample above this

The quality report (levels, DC offset, clipping, integrated loudness and an SNR estimate) is
always measured on the audio as it arrived, so it describes the recording, not our changes.
Channels are kept: a stereo call stays stereo.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callannotate.errors import ConfigError
from callannotate.pipeline.audio.decode import measure_quality
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.settings import PreprocessSettings
from callannotate.pipeline.types import (
    AudioBuffer,
    AudioQuality,
    Float32Array,
    ProgressHook,
    Step,
    null_hook,
)

logger = logging.getLogger(__name__)

_EPS = 1e-12


@dataclass(frozen=True)
class PreprocessResult:
    """The processed audio, the quality of the input, and what was done to it."""

    audio: AudioBuffer
    quality: AudioQuality
    applied: list[str] = field(default_factory=list)
    gain_db: float | None = None


# ----------------------------------------------------------------------------- measurements


def integrated_loudness(samples: Float32Array, sample_rate: int) -> float | None:
    """EBU R128 / ITU-R BS.1770-4 integrated loudness (LUFS) of ``(channels, frames)`` audio.

    ``None`` when the audio is shorter than one 400 ms gating block or entirely silent.
    """
    import pyloudnorm

    if samples.shape[-1] < int(0.4 * sample_rate) + 1:
        return None
    meter = pyloudnorm.Meter(sample_rate)
    data = samples.T.astype(np.float64) if samples.ndim == 2 else samples.astype(np.float64)
    if data.ndim == 2 and data.shape[1] == 1:
        data = data[:, 0]
    value = float(meter.integrated_loudness(data))
    if not math.isfinite(value):
        return None
    return value


def estimate_snr_db(
    samples: Float32Array, sample_rate: int, frame_s: float = 0.032
) -> float | None:
    """Speech-to-noise ratio from the spread of frame energies of the channel mix (dB).

    Noise power is the 10th percentile of 32 ms frame powers, signal power the 95th; the
    SNR is ``10 log10((P_signal - P_noise) / P_noise)``. It needs no speech detector, so it
    is a rough figure (it reads low when speech fills almost every frame), clamped to
    [-10, 80] dB. ``None`` for audio shorter than 10 frames or digitally silent.
    """
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    mono = mono - float(np.mean(mono)) if mono.size else mono
    hop = max(1, int(frame_s * sample_rate))
    n = mono.size // hop
    if n < 10:
        return None
    power = np.mean(np.square(mono[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)
    p_noise = float(np.percentile(power, 10))
    p_signal = float(np.percentile(power, 95))
    if p_signal < 1e-10:  # below -100 dBFS: nothing to measure
        return None
    snr = 10.0 * math.log10(max(p_signal - p_noise, _EPS) / max(p_noise, _EPS))
    return float(min(80.0, max(-10.0, snr)))


def assess_quality(audio: AudioBuffer) -> AudioQuality:
    """``measure_quality`` plus integrated loudness and an SNR estimate."""
    base = measure_quality(audio)
    lufs = integrated_loudness(audio.samples, audio.sample_rate)
    snr = estimate_snr_db(audio.samples, audio.sample_rate)
    return base.model_copy(
        update={
            "loudness_lufs": None if lufs is None else round(lufs, 2),
            "snr_db": None if snr is None else round(snr, 2),
        }
    )


# ----------------------------------------------------------------------------- steps


def remove_dc(samples: Float32Array) -> Float32Array:
    """Subtract each channel's mean."""
    out: Float32Array = (samples - samples.mean(axis=-1, keepdims=True)).astype(np.float32)
    return out


def highpass(samples: Float32Array, sample_rate: int, cutoff_hz: float) -> Float32Array:
    """Zero-phase 4th-order Butterworth high-pass along the last axis."""
    from scipy.signal import butter, sosfiltfilt

    if not 0 < cutoff_hz < sample_rate / 2:
        raise ConfigError(f"preprocess: highpass_hz must be between 0 and {sample_rate / 2}")
    sos = butter(2, cutoff_hz, btype="highpass", fs=sample_rate, output="sos")
    if samples.shape[-1] <= 3 * (2 * sos.shape[0] + 1):
        return samples
    return np.asarray(sosfiltfilt(sos, samples, axis=-1), dtype=np.float32)


def spectral_gate(
    samples: Float32Array,
    sample_rate: int,
    *,
    strength: float = 0.8,
    n_std: float = 1.5,
    noise_quantile: float = 0.2,
    n_fft: int = 512,
) -> Float32Array:
    """Stationary spectral gating, one channel at a time.

    The noise profile of each frequency bin (mean and spread of its dB magnitude) comes from
    the quietest ``noise_quantile`` of the frames, not the whole signal, so speech-dense
    calls do not inflate it. Bins below ``mean + n_std * std`` are attenuated by
    ``strength`` (0.8 ≈ -14 dB); the mask is smoothed over ~50 ms and ~200 Hz to avoid
    musical noise.
    """
    from scipy.signal import fftconvolve, istft, stft

    if not 0.0 <= strength <= 1.0:
        raise ConfigError("preprocess: denoise_strength must be between 0 and 1")
    hop = n_fft // 4
    out = np.empty_like(samples)
    for ch in range(samples.shape[0]):
        x = samples[ch]
        if x.size < n_fft * 4:
            out[ch] = x
            continue
        _, _, spec = stft(x, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop, boundary="even")
        mag_db = 20.0 * np.log10(np.abs(spec) + 1e-8)
        frame_energy = mag_db.mean(axis=0)
        cut = np.quantile(frame_energy, noise_quantile)
        quiet = mag_db[:, frame_energy <= cut]
        if quiet.shape[1] < 2:
            quiet = mag_db
        threshold = quiet.mean(axis=1) + n_std * quiet.std(axis=1)
        mask = (mag_db > threshold[:, None]).astype(np.float32)
        t_len = max(1, round(0.05 * sample_rate / hop))
        f_len = max(1, round(200.0 / (sample_rate / n_fft)))
        kernel = np.outer(np.hanning(f_len + 2)[1:-1], np.hanning(t_len + 2)[1:-1])
        kernel /= kernel.sum()
        mask = np.clip(fftconvolve(mask, kernel, mode="same"), 0.0, 1.0)
        gain = 1.0 - strength * (1.0 - mask)
        _, y = istft(spec * gain, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
        out[ch] = y[: x.size].astype(np.float32)
    return out


def noisereduce_gate(samples: Float32Array, sample_rate: int, *, strength: float) -> Float32Array:
    """The ``noisereduce`` package's non-stationary spectral gate (imports torch if present)."""
    import noisereduce

    y = noisereduce.reduce_noise(
        y=samples, sr=sample_rate, stationary=False, prop_decrease=strength, n_jobs=1
    )
    return np.asarray(y, dtype=np.float32).reshape(samples.shape)


def normalize_loudness(
    samples: Float32Array,
    sample_rate: int,
    target_lufs: float,
    *,
    max_gain_db: float = 30.0,
    peak_ceiling_dbfs: float = -1.0,
) -> tuple[Float32Array, float | None]:
    """Scale to ``target_lufs`` (EBU R128); returns the audio and the gain applied in dB.

    The gain is limited to ±``max_gain_db`` and lowered when it would push the sample peak
    above ``peak_ceiling_dbfs`` (no clipping, no limiter artefacts). Audio too short or too
    quiet to measure is returned unchanged with gain ``None``.
    """
    loudness = integrated_loudness(samples, sample_rate)
    if loudness is None:
        return samples, None
    gain_db = max(-max_gain_db, min(max_gain_db, target_lufs - loudness))
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 0:
        headroom_db = peak_ceiling_dbfs - 20.0 * math.log10(peak)
        gain_db = min(gain_db, headroom_db)
    gain = np.float32(10.0 ** (gain_db / 20.0))
    out: Float32Array = (samples * gain).astype(np.float32)
    return out, gain_db


# ----------------------------------------------------------------------------- processor


class Preprocessor(MLProcessor[AudioBuffer, PreprocessResult]):
    """Step ``preprocess``: configurable clean-up of decoded audio plus its quality report."""

    name: Step = Step.PREPROCESS

    settings_type = PreprocessSettings
    settings: PreprocessSettings

    def load_model(self) -> None:
        """No weights; imports what the enabled steps need."""
        import pyloudnorm  # noqa: F401  (fail early when the dependency is missing)

        if self.settings.denoise and self.settings.denoise_method == "noisereduce":
            import noisereduce  # noqa: F401

    def describe(self) -> str:
        return "preprocess: " + (", ".join(self.enabled_steps()) or "none")

    def enabled_steps(self) -> list[str]:
        cfg = self.settings
        steps: list[str] = []
        if cfg.dc_removal:
            steps.append("dc_removal")
        if cfg.highpass_hz:
            steps.append("highpass")
        if cfg.denoise:
            steps.append("denoise")
        if cfg.loudness_normalize:
            steps.append("loudness_normalize")
        return steps

    def process(self, data: AudioBuffer, hook: ProgressHook = null_hook) -> PreprocessResult:
        self.ensure_loaded()
        steps = self.enabled_steps()
        total = len(steps) + 1
        hook(self.name, completed=0, total=total)
        quality = assess_quality(data)
        hook(self.name, completed=1, total=total)
        if quality.clipped:
            logger.info("input is clipped (%.3f %% of samples)", 100 * quality.clipping_ratio)
        x = data.samples
        rate = data.sample_rate
        gain_db: float | None = None
        applied: list[str] = []
        for i, step in enumerate(steps, start=2):
            if step == "dc_removal":
                x = remove_dc(x)
            elif step == "highpass":
                x = highpass(x, rate, self.settings.highpass_hz or 60.0)
            elif step == "denoise":
                strength = self.settings.denoise_strength
                if self.settings.denoise_method == "noisereduce":
                    x = noisereduce_gate(x, rate, strength=strength)
                else:
                    x = spectral_gate(x, rate, strength=strength)
            elif step == "loudness_normalize":
                x, gain_db = self._normalize(x, rate)
                if gain_db is None:
                    hook(self.name, completed=i, total=total)
                    continue
            applied.append(step)
            hook(self.name, completed=i, total=total)
        clipped = np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)
        out = AudioBuffer(samples=np.ascontiguousarray(clipped), sample_rate=rate)
        return PreprocessResult(audio=out, quality=quality, applied=applied, gain_db=gain_db)

    def _normalize(self, x: Float32Array, rate: int) -> tuple[Float32Array, float | None]:
        cfg = self.settings
        target = cfg.target_lufs
        kwargs: dict[str, Any] = {
            "max_gain_db": cfg.max_gain_db,
            "peak_ceiling_dbfs": cfg.peak_ceiling_dbfs,
        }
        if not cfg.loudness_per_channel or x.shape[0] == 1:
            return normalize_loudness(x, rate, target, **kwargs)
        channels: list[Float32Array] = []
        gains: list[float] = []
        for ch in range(x.shape[0]):
            y, g = normalize_loudness(x[ch : ch + 1], rate, target, **kwargs)
            channels.append(y)
            if g is not None:
                gains.append(g)
        return np.concatenate(channels, axis=0), (max(gains) if gains else None)
