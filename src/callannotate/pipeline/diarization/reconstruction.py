"""From clustered window segmentations to speaker turns.

1. Every output frame of every window is placed on one global frame grid (16.875 ms).
2. The number of speakers active in each global frame is the (rounded) mean over the
   windows covering it of the number of active local speakers (the diarizer may average
   it with a second model's count first, see :mod:`.speaker_count` and :mod:`.counting`).
3. Each global speaker's score is the mean over covering windows of the activity of the
   local speaker assigned to it; in each frame the ``count`` best-scoring speakers speak
   (a speaker with no score in the frame can still be picked from its score nearby,
   :func:`fill_count`).
4. Runs of active frames become turns; gaps shorter than ``min_duration_off`` are filled
   and turns shorter than ``min_duration_on`` dropped. The "exclusive" version keeps at
   most one speaker per frame (the best-scoring one), for aligning words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import maximum_filter1d

from callannotate.pipeline.diarization.segmentation import FRAME_DURATION, FRAME_STEP
from callannotate.pipeline.types import Turn

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ReconstructionParams:
    min_duration_on: float = 0.0
    min_duration_off: float = 0.0
    edge_weight: float = 1.0  # weight of a window's first/last `edge_s` seconds
    edge_s: float = 0.0
    hamming: bool = False  # weight each window's frames with a Hamming window
    count_bias: float = 0.0  # added to the mean local count before rounding
    overlap_bias: float = 0.0  # extra bias for counts of two or more (overlap)
    time_shift: float = 0.0  # seconds added to every frame time (model latency)


def window_offsets(starts_s: npt.NDArray[np.float64]) -> IntArray:
    """Global frame index of each window's first frame."""
    return np.rint(starts_s / FRAME_STEP).astype(np.int64)


def frame_weights(frames: int, params: ReconstructionParams) -> FloatArray:
    """Per-frame weight inside a window (lower at the edges, where context is missing)."""
    weights = np.ones(frames, dtype=np.float32)
    if params.hamming:
        weights = np.hamming(frames).astype(np.float32) + np.float32(1e-3)
    edge = round(params.edge_s / FRAME_STEP)
    if edge > 0 and params.edge_weight != 1.0:
        edge = min(edge, frames // 2)
        weights[:edge] = params.edge_weight
        weights[frames - edge :] = params.edge_weight
    return weights


def aggregate(
    values: FloatArray, offsets: IntArray, total_frames: int, weights: FloatArray
) -> FloatArray:
    """Weighted mean over windows of ``values`` ``(windows, frames, dims)`` per global frame."""
    windows, frames, dims = values.shape
    acc = np.zeros((total_frames, dims), dtype=np.float64)
    norm = np.zeros((total_frames, 1), dtype=np.float64)
    for w in range(windows):
        first = int(offsets[w])
        last = min(first + frames, total_frames)
        n = last - first
        if n <= 0:
            continue
        acc[first:last] += values[w, :n] * weights[:n, None]
        norm[first:last] += weights[:n, None]
    return (acc / np.maximum(norm, 1e-9)).astype(np.float32)


def mean_count(
    activity: FloatArray, offsets: IntArray, total_frames: int, weights: FloatArray
) -> FloatArray:
    """Mean over the covering windows of the number of active local speakers, per global
    frame. ``activity`` may be hard (0/1) or soft (marginal probabilities: expected
    counts)."""
    counts = activity.sum(axis=2, keepdims=True).astype(np.float32)
    mean: FloatArray = aggregate(counts, offsets, total_frames, weights)[:, 0]
    return mean


def round_count(mean: FloatArray, bias: float = 0.0, overlap_bias: float = 0.0) -> IntArray:
    """Number of speakers per frame: ``mean`` plus ``bias``, rounded; where that gives
    one speaker, ``overlap_bias`` more may round it up to two (overlap is under-detected)."""
    rounded: IntArray = np.floor(mean + 0.5 + bias).astype(np.int64).clip(0)
    if overlap_bias != 0.0:
        overlapped = np.floor(mean + 0.5 + bias + overlap_bias).astype(np.int64)
        rounded = np.where((rounded >= 1) & (overlapped >= 2), overlapped, rounded)
    return rounded


def clustered_scores(
    scores: FloatArray,
    assignment: IntArray,
    num_speakers: int,
    offsets: IntArray,
    total_frames: int,
    weights: FloatArray,
) -> FloatArray:
    """Global speaker scores ``(total_frames, num_speakers)`` from local ``scores``
    ``(windows, frames, local)``.

    ``assignment`` maps local to global speakers (-1 = unused), either per window
    ``(windows, local)`` or per frame ``(windows, frames, local)``."""
    windows, frames, local = scores.shape
    if assignment.ndim == 2:
        assignment = np.repeat(assignment[:, None, :], frames, axis=1)
    per_window = np.zeros((windows, frames, max(num_speakers, 1)), dtype=np.float32)
    rows = np.arange(frames)
    for w in range(windows):
        for s in range(local):
            ks = assignment[w, :, s]
            used = ks >= 0
            if not used.any():
                continue
            r, k = rows[used], ks[used]
            per_window[w, r, k] = np.maximum(per_window[w, r, k], scores[w, r, s])
    return aggregate(per_window, offsets, total_frames, weights)[:, :num_speakers]


def select_top(scores: FloatArray, count: IntArray, max_per_frame: int | None = None) -> FloatArray:
    """Binary ``(frames, speakers)``: the ``count`` best-scoring speakers of each frame
    (only speakers with a positive score; at most ``max_per_frame``)."""
    _frames, speakers = scores.shape
    out = np.zeros_like(scores)
    if speakers == 0:
        return out
    c = np.clip(count, 0, speakers if max_per_frame is None else min(speakers, max_per_frame))
    order = np.argsort(-scores, axis=1)
    for rank in range(int(c.max(initial=0))):
        rows = np.flatnonzero(c > rank)
        cols = order[rows, rank]
        keep = scores[rows, cols] > 0
        out[rows[keep], cols[keep]] = 1.0
    return out


def fill_count(
    binary: FloatArray, scores: FloatArray, count: IntArray, reach: int, min_run: int = 1
) -> FloatArray:
    """``binary`` with frames that have fewer active speakers than ``count`` topped up.

    :func:`select_top` only picks speakers with a positive score, so a speaker is missing
    where the count says two voices but every window gave both local voices to one
    global speaker, or where the count hears speech (the second count model, say) that
    no clustered local speaker covers. In runs of at least ``min_run`` such frames, each
    frame gets the not-yet-active speaker with the highest score within ``reach`` frames
    either side, if any scored there."""
    out = binary.copy()
    _frames, speakers = scores.shape
    if speakers < 2 or reach <= 0:
        return out
    lacking = count > out.sum(axis=1)
    if min_run > 1:
        keep = np.zeros_like(lacking)
        for first, last in _runs(lacking):
            if last - first >= min_run:
                keep[first:last] = True
        lacking = keep
    short = np.flatnonzero(lacking)
    if len(short) == 0:
        return out
    near = maximum_filter1d(scores, size=2 * reach + 1, axis=0)
    near = np.where(out > 0, -np.inf, near)
    best = near[short].argmax(axis=1)
    found = near[short, best] > 0
    out[short[found], best[found]] = 1.0
    return out


def _runs(active: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last_exclusive) index pairs of runs of True."""
    padded = np.concatenate([[False], active, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def binary_to_turns(
    binary: FloatArray,
    labels: list[str],
    params: ReconstructionParams,
    duration: float,
) -> list[Turn]:
    """Turns from binary frame activity, with gap filling and short-turn removal."""
    half = FRAME_DURATION / 2 + params.time_shift
    turns: list[Turn] = []
    for k, label in enumerate(labels):
        spans: list[list[float]] = []
        for first, last in _runs(binary[:, k] > 0.5):
            start = max(0.0, first * FRAME_STEP + half - FRAME_STEP / 2)
            end = min(duration, (last - 1) * FRAME_STEP + half + FRAME_STEP / 2)
            if spans and start - spans[-1][1] < params.min_duration_off:
                spans[-1][1] = end
            else:
                spans.append([start, end])
        for start, end in spans:
            if end - start >= max(params.min_duration_on, 1e-6):
                turns.append(Turn(start=round(start, 3), end=round(end, 3), speaker=label))
    turns.sort(key=lambda t: (t.start, t.end, t.speaker))
    return turns


def exclusive(binary: FloatArray, scores: FloatArray) -> FloatArray:
    """At most one speaker per frame: among the active ones, the best-scoring."""
    out = np.zeros_like(binary)
    if binary.shape[1] == 0:
        return out
    masked = np.where(binary > 0.5, scores + 1.0, -np.inf)
    best = masked.argmax(axis=1)
    rows = np.flatnonzero(binary.max(axis=1, initial=0) > 0.5)
    out[rows, best[rows]] = 1.0
    return out


def total_frames_for(duration: float) -> int:
    return int(np.ceil(duration / FRAME_STEP)) + 1
