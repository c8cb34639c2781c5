"""What the channels of a recording carry, so ``channel_mode=auto`` knows whether to mix.

A stereo call recorder usually puts one party on each channel ("two-party"): each channel
is transcribed and diarized on its own. But many stereo files are not like that: an
``ffmpeg -ac 2`` copy or a phone app writes the same mono signal twice ("dual-mono"), some
recorders leave one channel silent ("one-silent"), and some write the other channel as an
attenuated or echoed copy of the first. Transcribing both channels of such a file writes
every word twice, so they are treated as mono.

:func:`channel_layout` decides from three measurements on the frames where either channel
carries sound (:func:`channel_stats`):

* the **correlation** of the two channels at zero lag: near 1 when both carry the same
  signal (any gain), near 0 for two different talkers (leak and crosstalk are 20-40 dB down);
* the **level difference** between the channels' loud frames: a channel 40 dB below the
  other, or below -60 dBFS, is silent;
* the **dominance** of one channel (share of frames in which it is louder) together with
  the **envelope correlation** (frame levels in dB rising and falling together): a channel
  that is quieter in almost every frame and follows the other's envelope is its echo. Two
  parties take turns, so each channel is the louder one while its party talks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from callannotate.pipeline.types import AudioBuffer

FloatArray = npt.NDArray[np.float64]

FRAME_S = 0.02
"""Frame length for levels (seconds)."""
ACTIVE_DB = 35.0
"""Frames within this many dB of the recording's loud frames (95th percentile) count."""
SILENT_DBFS = -60.0
"""A channel whose loud frames stay below this level is silent."""
SILENT_DIFF_DB = 40.0
"""...and so is a channel this far below the other."""
SAME_SIGNAL_CORRELATION = 0.7
"""Zero-lag correlation above which both channels carry the same signal."""
ECHO_DOMINANCE = 0.95
"""Share of active frames in which one channel must be the louder to make the other an echo,"""
ECHO_ENVELOPE_CORRELATION = 0.8
"""...when their frame levels (dB) also correlate at least this much,"""
ECHO_MAX_DELAY_S = 0.3
"""...at some delay up to this long."""
DOMINANCE_SMOOTH_S = 0.2
"""Levels are compared for dominance after averaging power over this long (an echo's tail
outlasts its source by the echo's delay: a syllable's end is not a turn)."""


class ChannelLayout(StrEnum):
    MONO = "mono"
    """One channel."""
    DUAL_MONO = "dual-mono"
    """Two channels carrying the same signal, or one an attenuated / echoed copy."""
    ONE_SILENT = "one-silent"
    """Two channels, one of them silent."""
    TWO_PARTY = "two-party"
    """Two channels carrying different talkers (one party per channel)."""
    MULTI = "multi"
    """More than two channels (mixed)."""


@dataclass(frozen=True)
class ChannelStats:
    """Measurements of a two-channel signal (see the module docstring)."""

    correlation: float
    level_db: tuple[float, float]
    """Each channel's loud-frame level (95th percentile of frame levels), dBFS."""
    dominance: float
    """Share of active frames in which the louder channel (overall) is the louder one."""
    envelope_correlation: float
    """Correlation of the frame levels (dB), the quieter channel delayed by up to
    :data:`ECHO_MAX_DELAY_S` (the best delay)."""
    louder: int
    """Index of the louder channel."""


def _frame_db(x: FloatArray, frame: int) -> FloatArray:
    n = len(x) // frame
    if n == 0:
        return np.full(1, -120.0)
    power = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    db: FloatArray = 10.0 * np.log10(power + 1e-12)
    return db


def _smoothed(level_db: FloatArray, width: int) -> FloatArray:
    """Frame levels (dB) of the power averaged over ``width`` frames (centred)."""
    power = 10.0 ** (level_db / 10.0)
    width = min(width, len(power))
    kernel = np.ones(width) / width
    out: FloatArray = 10.0 * np.log10(np.convolve(power, kernel, mode="same") + 1e-12)
    return out


def _pearson(a: FloatArray, b: FloatArray) -> float:
    if len(a) < 2:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _envelope_correlation(
    first: FloatArray, second: FloatArray, active: npt.NDArray[np.bool_], max_lag: int
) -> float:
    """Best correlation of the frame levels over the active frames of ``first``, with
    ``second`` delayed by 0..``max_lag`` frames (an echo comes after its source)."""
    best = -1.0
    for lag in range(max_lag + 1):
        n = len(first) - lag
        if n < 2:
            break
        mask = active[:n]
        best = max(best, _pearson(first[:n][mask], second[lag : lag + n][mask]))
    return best


def channel_stats(left: npt.ArrayLike, right: npt.ArrayLike, sample_rate: int) -> ChannelStats:
    """Correlation, levels, dominance and envelope correlation of two channels."""
    a = np.asarray(left, dtype=np.float64)
    b = np.asarray(right, dtype=np.float64)
    a = a - a.mean() if len(a) else a
    b = b - b.mean() if len(b) else b
    frame = max(1, round(FRAME_S * sample_rate))
    da, db = _frame_db(a, frame), _frame_db(b, frame)
    loud = np.maximum(da, db)
    active = loud > np.percentile(loud, 95) - ACTIVE_DB
    level = (float(np.percentile(da, 95)), float(np.percentile(db, 95)))
    louder = 0 if level[0] >= level[1] else 1
    n = min(len(a), len(b)) // frame * frame
    if n:
        mask = np.repeat(active[: n // frame], frame)
        xa, xb = a[:n][mask], b[:n][mask]
        denom = float(np.sqrt((xa * xa).sum() * (xb * xb).sum()))
        correlation = float((xa * xb).sum() / denom) if denom > 0 else 0.0
    else:
        correlation = 0.0
    first, second = (da, db) if louder == 0 else (db, da)
    width = max(1, round(DOMINANCE_SMOOTH_S / FRAME_S))
    smooth_first, smooth_second = _smoothed(first, width), _smoothed(second, width)
    dominance = (
        float((smooth_first[active] >= smooth_second[active]).mean()) if active.any() else 1.0
    )
    lags = round(ECHO_MAX_DELAY_S / FRAME_S)
    envelope = _envelope_correlation(first, second, active, lags)
    return ChannelStats(
        correlation=correlation,
        level_db=level,
        dominance=dominance,
        envelope_correlation=envelope,
        louder=louder,
    )


def layout_of(stats: ChannelStats) -> ChannelLayout:
    """The layout two channels with these measurements have."""
    quiet = min(stats.level_db)
    if quiet < SILENT_DBFS or max(stats.level_db) - quiet > SILENT_DIFF_DB:
        return ChannelLayout.ONE_SILENT
    if abs(stats.correlation) >= SAME_SIGNAL_CORRELATION:
        return ChannelLayout.DUAL_MONO
    if (
        stats.dominance >= ECHO_DOMINANCE
        and stats.envelope_correlation >= ECHO_ENVELOPE_CORRELATION
    ):
        return ChannelLayout.DUAL_MONO
    return ChannelLayout.TWO_PARTY


def channel_layout(buffer: AudioBuffer) -> ChannelLayout:
    """What ``buffer``'s channels carry: mono, dual-mono, one-silent, two-party or multi."""
    if buffer.channels == 1:
        return ChannelLayout.MONO
    if buffer.channels > 2:
        return ChannelLayout.MULTI
    return layout_of(channel_stats(buffer.samples[0], buffer.samples[1], buffer.sample_rate))


def as_mono(buffer: AudioBuffer, layout: ChannelLayout) -> AudioBuffer:
    """One channel for a recording that is mixed: the louder channel when the other is silent
    or a copy of it (the mean of a source and its delayed echo says every syllable twice),
    otherwise the mean of the channels."""
    if buffer.channels == 1:
        return buffer
    if layout in (ChannelLayout.ONE_SILENT, ChannelLayout.DUAL_MONO):
        live = buffer.channel(int(np.argmax(np.square(buffer.samples, dtype=np.float64).mean(1))))
        return AudioBuffer(samples=live[np.newaxis, :], sample_rate=buffer.sample_rate)
    return AudioBuffer(samples=buffer.mono()[np.newaxis, :], sample_rate=buffer.sample_rate)
