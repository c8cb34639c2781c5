"""Unit tests of masked-pooling clustering and CAM++ feature chunking (no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from callannotate.errors import ConfigError
from callannotate.pipeline.diarization import Diarizer
from callannotate.pipeline.diarization.clustering import ClusteringParams
from callannotate.pipeline.diarization.frames import (
    FEATURE_DIM,
    FEATURE_STEP_S,
    chunk_features,
    feature_times,
)
from callannotate.pipeline.diarization.pooled import (
    PooledParams,
    _clashes,
    _window_maps,
    pooled_assignment,
    spread_cap,
)
from callannotate.pipeline.diarization.reconstruction import window_offsets
from callannotate.pipeline.diarization.segmentation import WindowSegmentation
from callannotate.pipeline.speakers.embedding import num_frames
from callannotate.pipeline.types import SAMPLE_RATE


class MeanPooler:
    """Stand-in for FrameEmbedder.pool: weighted mean of the features, unit length."""

    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        assert weights.shape[1] == features.shape[0]
        total = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        out = (weights @ features) / total
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )


class RampEncoder:
    """Stand-in for FrameEmbedder.features: column 0 holds the input sample at each
    feature frame's centre, so a time ramp reveals which audio a frame came from."""

    def features(self, wave: np.ndarray) -> np.ndarray:
        n = -(-num_frames(len(wave)) // 2)  # the stride-2 TDNN: ceil(frames / 2)
        centres = np.rint(feature_times(n) * SAMPLE_RATE).astype(int)
        out = np.zeros((n, FEATURE_DIM), dtype=np.float32)
        out[:, 0] = wave[np.clip(centres, 0, len(wave) - 1)]
        return out


def test_feature_times_follow_the_tdnn_stride() -> None:
    t = feature_times(3)
    assert pytest.approx(0.02) == FEATURE_STEP_S
    assert t == pytest.approx([0.0125, 0.0325, 0.0525])


@pytest.mark.parametrize(("chunk", "context"), [(2.0, 1.0), (3.0, 0.5), (10.0, 0.0)])
def test_chunk_features_cover_the_signal_once_in_order(chunk: float, context: float) -> None:
    seconds = 7.3
    ramp = (np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE).astype(np.float32)
    feats, times = chunk_features(RampEncoder(), ramp, chunk, context)  # type: ignore[arg-type]
    assert feats.shape == (len(times), FEATURE_DIM)
    assert np.all(np.diff(times) > 0)
    # Every frame comes from the audio at its own time (chunk offsets are right; float16
    # storage rounds 7 s to 4 ms) ...
    assert feats.dtype == np.float16
    assert np.allclose(feats[:, 0], times, atol=0.005)
    # ... and the grid is regular apart from the last, shorter chunk.
    assert times[0] < 0.05 and times[-1] > seconds - 0.05
    assert np.median(np.diff(times)) == pytest.approx(FEATURE_STEP_S)


def test_chunk_features_of_silence_too_short() -> None:
    feats, times = chunk_features(RampEncoder(), np.zeros(100, np.float32), 2.0, 1.0)  # type: ignore[arg-type]
    assert feats.shape == (0, FEATURE_DIM) and len(times) == 0


def _two_voices(seconds: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Features of voice A for the first half, voice B for the second (plus noise)."""
    rng = np.random.default_rng(0)
    n = round(seconds / FEATURE_STEP_S)
    times = feature_times(n)
    a = np.zeros(FEATURE_DIM, np.float32)
    a[0] = 1.0
    b = np.zeros(FEATURE_DIM, np.float32)
    b[1] = 1.0
    feats = np.where((times < seconds / 2)[:, None], a, b).astype(np.float32)
    feats += 0.05 * rng.standard_normal(feats.shape).astype(np.float32)
    return feats, times


def _segmentation(lumped: bool) -> WindowSegmentation:
    """Windows at 0, 5 and 10 s (10 s long). Window 0 hears A, window 2 hears B; window 1
    (5-15 s) hears A then B, as one local speaker when ``lumped``."""
    frames = 589  # segmentation-3.0 output frames of one 10 s window
    activity = np.zeros((3, frames, 3), dtype=np.float32)
    activity[0, :, 0] = 1
    activity[2, :, 1] = 1
    half = frames // 2
    if lumped:
        activity[1, :, 0] = 1
    else:
        activity[1, :half, 0] = 1
        activity[1, half:, 2] = 1
    return WindowSegmentation(
        starts=np.array([0.0, 5.0, 10.0]),
        activity=activity,
        soft=activity.copy(),
        window_duration=10.0,
        num_samples=20 * SAMPLE_RATE,
    )


def test_window_maps_align_features_and_segmentation_frames() -> None:
    _, times = _two_voices()
    seg = _segmentation(lumped=False)
    maps = _window_maps(times, seg)
    frame_s = 270 / SAMPLE_RATE
    # Global segmentation frame grid (window starts snap to it).
    starts = window_offsets(seg.starts) * frame_s
    for m, start in zip(maps, starts, strict=True):
        t = times[m.lo : m.lo + len(m.seg_of_feat)]
        seg_t = start + m.seg_of_feat * frame_s + 495 / SAMPLE_RATE
        assert np.abs(t - seg_t).max() <= frame_s / 2 + 1e-6
        centres = start + np.arange(seg.frames_per_window) * frame_s + 495 / SAMPLE_RATE
        inside = centres < times[-1]
        nearest = times[m.lo + m.feat_of_seg]
        assert np.abs(nearest - centres)[inside].max() <= FEATURE_STEP_S / 2 + 1e-6


def _run(lumped: bool, refine: float) -> tuple[np.ndarray, int, WindowSegmentation]:
    feats, times = _two_voices()
    seg = _segmentation(lumped)
    active = seg.activity.sum(axis=1) > 0
    assignment, k = pooled_assignment(
        MeanPooler(),
        feats,
        times,
        seg,
        active,
        ClusteringParams(threshold=0.8),
        PooledParams(piece_s=refine, hop_s=0.5, min_piece_s=1.0),
    )
    return assignment, k, seg


def test_pooled_clusters_separate_local_speakers() -> None:
    assignment, k, _ = _run(lumped=False, refine=0.0)
    assert k == 2
    half = assignment.shape[1] // 2
    a, b = assignment[0, 0, 0], assignment[2, 0, 1]
    assert a != b and a >= 0 and b >= 0
    assert (assignment[1, :half, 0] == a).all() and (assignment[1, half:, 2] == b).all()
    silent = ~(_segmentation(False).activity.sum(axis=1) > 0)  # (windows, local)
    assert (assignment.transpose(0, 2, 1)[silent] == -1).all()


def test_refinement_splits_a_lumped_local_speaker() -> None:
    before, k, _ = _run(lumped=True, refine=0.0)
    after, k2, _ = _run(lumped=True, refine=2.0)
    assert k == k2 == 2
    half = before.shape[1] // 2
    a, b = after[0, 0, 0], after[2, 0, 1]
    # Without refinement window 1's only local speaker has one label for A and B ...
    assert len(np.unique(before[1, :, 0])) == 1
    # ... with it, its first half goes to A's cluster and its second half to B's.
    margin = round(1.0 / (270 / SAMPLE_RATE))
    assert (after[1, : half - margin, 0] == a).mean() > 0.95
    assert (after[1, half + margin :, 0] == b).mean() > 0.95


def test_the_clustered_rows_are_capped_evenly_and_every_row_still_gets_a_speaker() -> None:
    chosen = np.ones(10_000, dtype=bool)
    chosen[::3] = False  # rows with too little clean speech never shape the clusters
    capped = spread_cap(chosen, 500)
    rows = np.flatnonzero(capped)
    assert len(rows) == 500 and not (capped & ~chosen).any()
    assert rows[0] == np.flatnonzero(chosen)[0] and rows[-1] == np.flatnonzero(chosen)[-1]
    assert np.diff(rows).max() <= 2 * np.diff(rows).min() + 3  # spread over the whole call
    assert spread_cap(chosen, 10_000) is chosen  # under the cap: unchanged
    # With the cap far below the number of rows, the two voices are still told apart and
    # every active local speaker is assigned.
    feats, times = _two_voices()
    seg = _segmentation(lumped=False)
    active = seg.activity.sum(axis=1) > 0
    full, k = pooled_assignment(
        MeanPooler(), feats, times, seg, active, ClusteringParams(threshold=0.8), PooledParams()
    )
    capped_run, k2 = pooled_assignment(
        MeanPooler(),
        feats,
        times,
        seg,
        active,
        ClusteringParams(threshold=0.8),
        PooledParams(max_cluster_rows=2),
    )
    assert k == k2 == 2 and np.array_equal(full, capped_run)


def test_clashes_flag_shared_clusters() -> None:
    labels = np.array([[0, 0, 1, -1], [0, 1, 1, -1], [-1, -1, 2, -1]])
    assert _clashes(labels).tolist() == [True, False, True, False]


def test_diarizer_reads_pooled_params_and_rejects_the_removed_waveform_mode(
    tmp_path: Path,
) -> None:
    d = Diarizer({"refine_hop_s": 0.25}, tmp_path)
    assert d.pooled.hop_s == 0.25
    with pytest.raises(ConfigError, match="unknown key 'embeddings'"):
        Diarizer({"embeddings": "waveform"}, tmp_path)
