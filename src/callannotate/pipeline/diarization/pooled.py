"""Clustering with masked-pooled CAM++ embeddings and frame-level re-assignment.

CAM++ features are computed once for the whole signal (:mod:`.frames`). Then:

1. every local speaker of every segmentation window is embedded by pooling the features
   under its own activity mask (frames where two local speakers overlap weigh
   ``overlap_weight``), or with ``cluster_piece_s`` > 0 each piece of that length of it
   (worse on the shared clips: short pieces are noisy);
2. those embeddings are clustered (:func:`.clustering.cluster_embeddings`) and each
   window's local speakers are given distinct global speakers (Hungarian assignment);
3. refinement: a segmentation window sometimes gives two similar voices one local label,
   so each local speaker's track is cut into sliding pieces (``piece_s`` long, every
   ``hop_s``), each piece's clean speech is pooled and scored against the cluster
   centroids, and every frame takes the cluster with the best mean score over the
   pieces covering it (simultaneous local speakers still get distinct clusters). The
   centroids are then re-estimated from the refined labels and the refinement repeated
   ``iterations`` times.

Pooling a mask costs a small matrix product, so none of this runs the network again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from callannotate.pipeline.diarization.clustering import (
    ClusteringParams,
    assign_local_speakers,
    centroids_of,
    cluster_embeddings,
    l2_normalise,
)
from callannotate.pipeline.diarization.frames import FEATURE_STEP_S
from callannotate.pipeline.diarization.reconstruction import window_offsets
from callannotate.pipeline.diarization.segmentation import (
    FRAME_CENTRE,
    FRAME_SAMPLES,
    WindowSegmentation,
)
from callannotate.pipeline.types import SAMPLE_RATE

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Features = npt.NDArray[np.floating[Any]]


class Pooler(Protocol):
    """What the clustering needs of :class:`.frames.FrameEmbedder`."""

    def pool(self, features: Features, weights: FloatArray) -> FloatArray: ...


@dataclass(frozen=True)
class PooledParams:
    overlap_weight: float = 0.0  # weight of overlapped frames in a local speaker's mask
    min_embed_s: float = 0.4  # least speech of a local speaker to embed it
    min_train_s: float = 0.5  # least clean speech for an embedding to shape the clusters
    piece_s: float = 2.0  # refinement piece length (0 = no refinement)
    hop_s: float = 0.5  # refinement piece hop
    min_piece_s: float = 1.0  # least clean speech in a piece to score it
    margin: float = 0.0  # score gain needed to move a frame to another cluster
    iterations: int = 1  # refinement rounds (centroids re-estimated between rounds)
    cluster_piece_s: float = 0.0  # >0: cluster pieces of this length, not whole windows
    max_cluster_rows: int = 2000  # most embeddings clustered (evenly spread; rest assigned)


@dataclass(frozen=True)
class _Window:
    lo: int  # first feature frame of the window
    seg_of_feat: IntArray  # window segmentation frame of each of its feature frames
    feat_of_seg: IntArray  # window feature frame nearest to each segmentation frame


def _nearest(values: npt.NDArray[Any], queries: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Index of the element of the sorted non-empty ``values`` nearest to each query (the
    later one on a tie)."""
    after = np.searchsorted(values, queries).clip(0, len(values) - 1)
    before = (after - 1).clip(0)
    closer = np.abs(values[before] - queries) < np.abs(values[after] - queries)
    return np.where(closer, before, after).astype(np.int64)


def _window_maps(times: npt.NDArray[np.float64], seg: WindowSegmentation) -> list[_Window]:
    windows, frames, _ = seg.activity.shape
    offsets = window_offsets(seg.starts)
    # Global segmentation frame under each feature frame (nearest centre).
    gidx = np.rint((times * SAMPLE_RATE - FRAME_CENTRE) / FRAME_SAMPLES).astype(np.int64)
    out: list[_Window] = []
    for w in range(windows):
        first = int(offsets[w])
        lo = int(np.searchsorted(gidx, first, side="left"))
        hi = int(np.searchsorted(gidx, first + frames, side="left"))
        seg_of_feat = (gidx[lo:hi] - first).astype(np.int64)
        centres = ((first + np.arange(frames)) * FRAME_SAMPLES + FRAME_CENTRE) / SAMPLE_RATE
        if hi > lo:
            feat_of_seg = _nearest(times[lo:hi], centres)
        else:
            feat_of_seg = np.zeros(frames, dtype=np.int64)
        out.append(_Window(lo=lo, seg_of_feat=seg_of_feat, feat_of_seg=feat_of_seg))
    return out


def pooled_assignment(
    encoder: Pooler,
    features: Features,
    times: npt.NDArray[np.float64],
    seg: WindowSegmentation,
    active: npt.NDArray[np.bool_],
    clustering: ClusteringParams,
    params: PooledParams,
) -> tuple[IntArray, int]:
    """Global speaker of each (window, frame, local speaker) (-1 = none), and the count."""
    windows, frames, local = seg.activity.shape
    maps = _window_maps(times, seg)
    min_embed = params.min_embed_s / FEATURE_STEP_S
    piece = round(params.cluster_piece_s / FEATURE_STEP_S)
    # One unit per (window, piece of the global grid, local speaker).
    vectors: list[FloatArray] = []
    clean_s: list[float] = []
    units: list[tuple[int, int, int]] = []  # (window, piece, local speaker)
    pieces_of: list[IntArray] = []  # per window: piece id of each feature frame
    clean_masks: list[FloatArray] = []  # per window: (local, M) non-overlapped activity
    for w, m in enumerate(maps):
        length = len(m.seg_of_feat)
        ids = (m.lo + np.arange(length)) // piece if piece > 0 else np.zeros(length, np.int64)
        pieces_of.append(ids.astype(np.int64))
        act = seg.activity[w][m.seg_of_feat]  # (M, local)
        overlap = act.sum(axis=1) > 1
        clean = (act * (~overlap)[:, None]).T.astype(np.float32)
        clean_masks.append(clean)
        weights = np.where(overlap[:, None], act * params.overlap_weight, act).T
        rows: list[FloatArray] = []
        for j in np.unique(ids).tolist():
            inside = (ids == j).astype(np.float32)
            for s in range(local):
                if not active[w, s]:
                    continue
                mask = weights[s] * inside
                if mask.sum() < min_embed:
                    mask = act[:, s] * inside
                if mask.sum() < min_embed:
                    continue
                rows.append(mask.astype(np.float32))
                clean_s.append(float((clean[s] * inside).sum() * FEATURE_STEP_S))
                units.append((w, int(j), s))
        if rows:
            feats = features[m.lo : m.lo + length]
            vectors.extend(encoder.pool(feats, np.stack(rows)))
    if not units:
        return np.where(active[:, None, :], 0, -1).repeat(frames, axis=1), 1
    x = np.stack(vectors)
    train = np.asarray(clean_s) >= params.min_train_s
    if train.sum() < 2:
        train[:] = True
    train = spread_cap(train, params.max_cluster_rows)
    # Simultaneous local speakers of one (window, piece) get distinct clusters.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (w, j, _s) in enumerate(units):
        groups.setdefault((w, j), []).append(i)
    labels = cluster_embeddings(x[train], clustering, together=heard_together(groups, train))
    centroids = centroids_of(x[train], labels)
    assignment = np.full((windows, frames, local), -1, dtype=np.int64)
    for (w, j), members in groups.items():
        grid = x[members][None]
        ks = assign_local_speakers(grid, np.ones((1, len(members)), dtype=bool), centroids)[0]
        seg_frames = np.flatnonzero(pieces_of[w][maps[w].feat_of_seg] == j)
        for i, k in zip(members, ks.tolist(), strict=True):
            assignment[w, seg_frames, units[i][2]] = k
    # Active local speakers left without a label (too little speech in a piece) take the
    # label of their nearest labelled frame in the window.
    for w in range(windows):
        for s in range(local):
            if not active[w, s]:
                continue
            col = assignment[w, :, s]
            labelled = np.flatnonzero(col >= 0)
            if 0 < len(labelled) < frames:
                pick = _nearest(labelled, np.arange(frames))
                assignment[w, :, s] = np.where(col >= 0, col, col[labelled[pick]])
    refine_assignment(encoder, features, maps, clean_masks, assignment, centroids, params)
    return assignment, len(centroids)


def spread_cap(chosen: npt.NDArray[np.bool_], cap: int) -> npt.NDArray[np.bool_]:
    """``chosen`` thinned to at most ``cap`` rows spread evenly over time (the rows are in
    time order). The linkage's memory grows with the square of the rows (scipy's centroid
    linkage here: 2,000 rows 0.3 s and 0.1 GB, 10,000 rows 13.6 s and 0.9 GB): a 30 s clip
    has about 120 rows, a 40-minute call about 10,000, a 2-hour meeting about 30,000."""
    rows = np.flatnonzero(chosen)
    if len(rows) <= cap:
        return chosen
    keep = rows[np.linspace(0, len(rows) - 1, cap).round().astype(np.int64)]
    out = np.zeros_like(chosen)
    out[keep] = True
    return out


def heard_together(
    groups: dict[tuple[int, int], list[int]], train: npt.NDArray[np.bool_]
) -> IntArray:
    """``(pairs, 2)``: rows of ``x[train]`` that are two local speakers of one window (and
    piece), i.e. two voices the segmentation model heard as different people at once."""
    row = np.cumsum(train) - 1  # index among the training rows
    pairs = [
        (int(row[a]), int(row[b]))
        for members in groups.values()
        for n, a in enumerate(members)
        for b in members[n + 1 :]
        if train[a] and train[b]
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def refine_assignment(
    encoder: Pooler,
    features: Features,
    maps: list[_Window],
    clean_masks: list[FloatArray],
    assignment: IntArray,
    centroids: FloatArray,
    params: PooledParams,
) -> None:
    """Frame-level re-assignment of ``assignment`` ``(windows, frames, local)`` in place
    (step 3 of the module docstring), with the window maps and clean-speech masks that
    :func:`pooled_assignment` computed."""
    if params.piece_s <= 0 or len(centroids) < 2:
        return
    for _ in range(max(1, params.iterations)):
        stats = _refine(encoder, features, maps, clean_masks, assignment, centroids, params)
        centroids = _recentre(stats, centroids)


def _refine(
    encoder: Pooler,
    features: Features,
    maps: list[_Window],
    clean_masks: list[FloatArray],
    assignment: IntArray,
    centroids: FloatArray,
    params: PooledParams,
) -> list[tuple[int, FloatArray]]:
    """Frame-level re-assignment in place; returns (cluster, piece embedding) of every
    scored piece, for re-estimating the centroids."""
    piece = max(1, round(params.piece_s / FEATURE_STEP_S))
    hop = max(1, round(params.hop_s / FEATURE_STEP_S))
    min_piece = params.min_piece_s / FEATURE_STEP_S
    k = len(centroids)
    stats: list[tuple[int, FloatArray]] = []
    for w, m in enumerate(maps):
        length = len(m.seg_of_feat)
        clean = clean_masks[w]  # (local, M)
        local = clean.shape[0]
        if length == 0:
            continue
        starts = list(range(0, max(1, length - piece + 1), hop))
        if starts[-1] + piece < length:
            starts.append(max(0, length - piece))
        rows: list[FloatArray] = []
        owners: list[tuple[int, int]] = []
        for s in range(local):
            if (assignment[w, :, s] < 0).all():
                continue
            for a in starts:
                mask = np.zeros(length, dtype=np.float32)
                mask[a : a + piece] = clean[s, a : a + piece]
                if mask.sum() >= min_piece:
                    rows.append(mask)
                    owners.append((s, a))
        if not rows:
            continue
        feats = features[m.lo : m.lo + length]
        vecs = encoder.pool(feats, np.stack(rows))
        sims = vecs @ centroids.T  # (pieces, k)
        score = np.zeros((local, length, k), dtype=np.float64)
        hits = np.zeros((local, length), dtype=np.float64)
        for (s, a), row in zip(owners, sims, strict=True):
            score[s, a : a + piece] += row
            hits[s, a : a + piece] += 1
        mean = score / np.maximum(hits, 1)[:, :, None]
        # Per segmentation frame, through the nearest feature frame.
        frame_score = mean[:, m.feat_of_seg]  # (local, frames, k)
        covered = hits[:, m.feat_of_seg] > 0  # (local, frames)
        current = assignment[w].T.copy()  # (local, frames)
        best = frame_score.argmax(axis=2)
        cur_score = np.take_along_axis(frame_score, current.clip(0)[:, :, None], 2)[:, :, 0]
        gain = frame_score.max(axis=2) - cur_score
        move = covered & (current >= 0) & (gain > params.margin)
        new = np.where(move, best, current)
        # Simultaneous local speakers (both labelled in a frame) must stay distinct.
        for f in np.flatnonzero(_clashes(new)):
            ss = np.flatnonzero(new[:, f] >= 0)
            r, c = linear_sum_assignment(-frame_score[ss, f])
            if len(r) == len(ss):
                new[ss[r], f] = c
        assignment[w] = new.T
        for (s, a), vec in zip(owners, vecs, strict=True):
            labels = new[s][m.seg_of_feat[a : a + piece]]
            labels = labels[labels >= 0]
            if len(labels):
                stats.append((int(np.bincount(labels).argmax()), vec))
    return stats


def _clashes(labels: IntArray) -> npt.NDArray[np.bool_]:
    """Frames (columns) where two labelled local speakers share a cluster."""
    local, frames = labels.shape
    out = np.zeros(frames, dtype=bool)
    for a in range(local):
        for b in range(a + 1, local):
            out |= (labels[a] >= 0) & (labels[a] == labels[b])
    return out


def _recentre(stats: list[tuple[int, FloatArray]], centroids: FloatArray) -> FloatArray:
    """Centroids re-estimated as the mean of the pieces now labelled with each cluster
    (a cluster without pieces keeps its centroid)."""
    out = centroids.astype(np.float64).copy()
    for k in range(len(centroids)):
        vecs = [v for c, v in stats if c == k]
        if vecs:
            out[k] = np.mean(vecs, axis=0)
    return l2_normalise(out.astype(np.float32))
