"""Effective audio bandwidth of a decoded signal (narrowband telephone audio or not).

Telephone codecs (G.711, GSM, AMR-NB, G.723.1) carry 8 kHz audio: once decoded to 16 kHz
nothing is left above about 3.4-4 kHz, whatever the file's container or extension says.
Speaker embeddings of such audio are less alike for one voice than wideband ones, so the
diarizer clusters it with its own settings (``DiarizeSettings.narrowband_*``).

The measure is the level of the upper band (``high_hz`` to ``top_hz``) against the speech
band (``low_hz`` to ``mid_hz``) in the long-term spectrum of the loudest frames (where the
speech is; silence and noise floors would otherwise dominate), in dB. Wideband speech
gives -15 to -35 dB; a telephone band-limit gives -50 dB and below (the resampler's
stop band).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

FFT_SIZE = 512


def upper_band_db(
    signal: FloatArray,
    sample_rate: int = 16000,
    *,
    low_hz: float = 300.0,
    mid_hz: float = 3400.0,
    high_hz: float = 4300.0,
    top_hz: float = 7600.0,
    loud_share: float = 0.5,
) -> float:
    """Mean power in ``high_hz``-``top_hz`` relative to ``low_hz``-``mid_hz`` (dB) over the
    ``loud_share`` loudest frames of ``signal`` (mono). 0.0 when the signal is too short or
    silent, or sampled too low to have the upper band (the caller then keeps its wideband
    settings: there is no evidence of a band limit)."""
    x = np.asarray(signal, dtype=np.float64)
    if len(x) < FFT_SIZE or sample_rate / 2 < top_hz:
        return 0.0
    hop = FFT_SIZE // 2
    count = (len(x) - FFT_SIZE) // hop + 1
    index = np.arange(FFT_SIZE)[None, :] + hop * np.arange(count)[:, None]
    frames = x[index] * np.hanning(FFT_SIZE)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, bins)
    energy = power.sum(axis=1)
    if not np.any(energy > 0):
        return 0.0
    keep = max(1, round(loud_share * count))
    loud = power[np.argsort(-energy)[:keep]].mean(axis=0)
    freqs = np.fft.rfftfreq(FFT_SIZE, 1.0 / sample_rate)
    speech = loud[(freqs >= low_hz) & (freqs < mid_hz)].mean()
    upper = loud[(freqs >= high_hz) & (freqs < top_hz)].mean()
    if speech <= 0:
        return 0.0
    return float(10 * np.log10(max(upper, 1e-30) / speech))


def is_narrowband(signal: FloatArray, limit_db: float, sample_rate: int = 16000) -> bool:
    """Whether ``signal`` is band-limited: its upper band sits more than ``-limit_db`` dB
    below its speech band (:func:`upper_band_db`)."""
    return upper_band_db(signal, sample_rate) < limit_db
