"""Clustering of (window, local speaker) embeddings into global speakers.

Agglomerative clustering (centroid linkage on L2-normalised embeddings, i.e. a cosine
geometry) estimates the number of speakers with a distance threshold; small clusters are
folded into the nearest large one; a requested ``num_speakers`` (or ``min``/``max``) cuts
the tree at that size instead. Each window's local speakers are then assigned to distinct
global speakers (two voices heard at once in one window are never the same person) with
the Hungarian algorithm on cosine similarity to the cluster centroids.

A fixed distance threshold is brittle when a whole recording's embeddings move together:
a codec (MP3, GSM, G.723.1) pulls two voices' embeddings closer, and the two parties of a
call merge into one speaker although they stay distinct *relative to their spread*. Part of
that is centroid linkage itself: it merges at the distance between mean vectors, which
shrinks as a cluster spreads. So when the threshold leaves one cluster, a second opinion
measures the best split into two large clusters between normalised centroids, and keeps
it when the segmentation model's own evidence backs it (voices it heard as two local
speakers of one window fall on opposite sides; :func:`second_opinion`,
docs/diarization.md, "Codecs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment

from callannotate.pipeline.diarization.speaker_count import target_count

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClusteringParams:
    threshold: float = 0.7  # centroid-linkage distance between normalised embeddings
    min_cluster_size: int = 2
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    method: str = "centroid"  # "spectral", or a scipy linkage method: centroid, average...
    neighbours: int = 6  # spectral: affinities kept per row (p-pruning)
    max_auto_speakers: int = 10  # spectral: largest count the eigengap may pick
    split_together: float = 0.0  # >0: second opinion on one cluster (`second_opinion`)
    split_min_pairs: int = 3  # ... needs this many pairs of rows heard together
    split_min_fraction: float = 0.1  # ... and each part of the split this share of rows


def l2_normalise(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def _relabel(labels: IntArray) -> IntArray:
    """Labels 0..k-1 ordered by first appearance."""
    mapping: dict[int, int] = {}
    out = np.empty_like(labels)
    for index, label in enumerate(labels.tolist()):
        out[index] = mapping.setdefault(label, len(mapping))
    return out


def centroids_of(embeddings: FloatArray, labels: IntArray) -> FloatArray:
    k = int(labels.max()) + 1 if len(labels) else 0
    cents = np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)]) if k else None
    if cents is None:
        return np.zeros((0, embeddings.shape[1]), dtype=np.float32)
    return l2_normalise(cents.astype(np.float32))


def _fold_small(embeddings: FloatArray, labels: IntArray, min_size: int) -> IntArray:
    """Reassign members of clusters smaller than ``min_size`` to the nearest large cluster."""
    counts = np.bincount(labels)
    large = np.flatnonzero(counts >= min_size)
    if len(large) == 0 or len(large) == len(counts):
        return labels
    cents = centroids_of(embeddings, labels)[large]
    out = labels.copy()
    small = ~np.isin(labels, large)
    sims = embeddings[small] @ cents.T
    out[small] = large[sims.argmax(axis=1)]
    return _relabel(out)


def _cut(tree: npt.NDArray[np.float64], k: int, n: int) -> IntArray:
    """Exactly ``k`` clusters: apply the first ``n - k`` merges of the tree in order.

    (``fcluster(..., "maxclust")`` can return fewer clusters on the non-monotonic trees
    centroid linkage builds.)"""
    k = max(1, min(k, n))
    parent = list(range(2 * n - 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(n - k):
        a, b = int(tree[step, 0]), int(tree[step, 1])
        parent[find(a)] = n + step
        parent[find(b)] = n + step
    return _relabel(np.array([find(i) for i in range(n)], dtype=np.int64))


def cluster_embeddings(
    embeddings: FloatArray, params: ClusteringParams, together: IntArray | None = None
) -> IntArray:
    """Global speaker index (0..k-1) of each embedding row.

    ``together`` (optional, ``(pairs, 2)``) lists rows heard at the same time (two local
    speakers of one window): evidence for the second opinion (:func:`second_opinion`)."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    x = l2_normalise(embeddings.astype(np.float32))
    if params.method == "spectral":
        labels = spectral_clustering(x, params)
        return _fold_small(x, labels, min(params.min_cluster_size, max(1, n // 4)))
    tree = linkage(x.astype(np.float64), method=params.method, metric="euclidean")
    exact = target_count(params)
    if exact is not None:
        return _cut(tree, exact, n)
    labels = _relabel(fcluster(tree, t=params.threshold, criterion="distance").astype(np.int64) - 1)
    labels = _fold_small(x, labels, min(params.min_cluster_size, max(1, n // 4)))
    if labels.max() == 0 and params.split_together > 0 and params.max_speakers != 1:
        labels = second_opinion(x, tree, together, params)
    bounded = target_count(params, int(labels.max()) + 1)
    return labels if bounded is None else _cut(tree, bounded, n)


def second_opinion(
    x: FloatArray,
    tree: npt.NDArray[np.float64],
    together: IntArray | None,
    params: ClusteringParams,
) -> IntArray:
    """Two clusters instead of the one the threshold left, or all zeros.

    Centroid linkage merges at the distance between the two clusters' *mean* vectors, and
    a mean of unit vectors is shorter the more they spread: the last merge of two voices
    sits lower when a codec adds spread, though the voices are as far apart. So the best
    split of the unit vectors ``x`` into two large parts (:func:`split_in_two`) is measured
    between its *normalised* centroids, against the same ``threshold``; and the
    segmentation model must back it: of the ``together`` pairs (two local speakers heard
    in one window, at least ``split_min_pairs`` of them) a share of at least
    ``split_together`` falls on opposite sides. People talking in turn give such pairs in
    most windows; a split of one voice follows time (neighbouring windows look alike),
    which keeps the pairs of one window on one side."""
    n = len(x)
    zeros = np.zeros(n, dtype=np.int64)
    if together is None or len(together) < params.split_min_pairs:
        return zeros
    two = split_in_two(x, tree, max(2, int(np.ceil(params.split_min_fraction * n))))
    if two is None:
        return zeros
    centres = centroids_of(x, two)
    apart = float(np.mean(two[together[:, 0]] != two[together[:, 1]]))
    distance = float(np.linalg.norm(centres[0] - centres[1]))
    return two if apart >= params.split_together and distance >= params.threshold else zeros


def split_in_two(
    x: FloatArray, tree: npt.NDArray[np.float64], least: int, iterations: int = 10
) -> IntArray | None:
    """The unit vectors ``x`` in two parts of at least ``least`` rows each, or None.

    The linkage ``tree`` is cut into ever more clusters until two hold ``least`` rows (the
    top split of a centroid tree is often one outlier); every row then goes to the nearer of
    those two centroids, refined by a few spherical k-means steps."""
    n = len(x)
    if n < 2 * least:
        return None
    centres: FloatArray | None = None
    for k in range(2, n + 1):
        labels = _cut(tree, k, n)
        sizes = np.bincount(labels)
        large = np.flatnonzero(sizes >= least)
        if len(large) >= 2:
            top = large[np.argsort(-sizes[large], kind="stable")[:2]]
            centres = centroids_of(x, labels)[top]
            break
    if centres is None:
        return None
    two = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        new = (x @ centres.T).argmax(axis=1).astype(np.int64)
        if np.bincount(new, minlength=2).min() < least:
            return None
        if np.array_equal(new, two):
            break
        two = new
        centres = centroids_of(x, two)
    return _relabel(two)


def assign_local_speakers(
    embeddings: FloatArray, valid: npt.NDArray[np.bool_], centroids: FloatArray
) -> IntArray:
    """Global speaker of each (window, local speaker), -1 where ``valid`` is false.

    ``embeddings`` is ``(windows, local, dim)``; the local speakers of one window get
    distinct global speakers when there are enough clusters (Hungarian assignment).
    """
    windows, local, _ = embeddings.shape
    out = np.full((windows, local), -1, dtype=np.int64)
    if len(centroids) == 0:
        return out
    x = l2_normalise(embeddings.astype(np.float32))
    for w in range(windows):
        rows = np.flatnonzero(valid[w])
        if len(rows) == 0:
            continue
        sims = x[w, rows] @ centroids.T
        r, c = linear_sum_assignment(-sims)
        out[w, rows[r]] = c
        missing = np.setdiff1d(np.arange(len(rows)), r)
        for m in missing:  # more local speakers than clusters: best cluster, shared
            out[w, rows[m]] = int(sims[m].argmax())
    return out


def _kmeans(points: FloatArray, k: int, seed: int = 0, iterations: int = 50) -> IntArray:
    """Deterministic k-means (k-means++ seeding) on the rows of ``points``."""
    rng = np.random.default_rng(seed)
    n = len(points)
    centres = [points[int(rng.integers(n))]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(axis=1) for c in centres], axis=0)
        total = float(d2.sum())
        index = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(points[index])
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        new = ((points[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = points[labels == j].mean(axis=0)
    return labels


def spectral_clustering(x: FloatArray, params: ClusteringParams) -> IntArray:
    """Spectral clustering of unit vectors: cosine affinity pruned to each row's
    ``neighbours`` strongest links, unnormalised Laplacian, number of speakers from the
    largest eigengap (or given), k-means on the leading eigenvectors."""
    n = len(x)
    affinity = np.clip(x @ x.T, 0.0, 1.0).astype(np.float64)
    keep = max(1, min(params.neighbours, n - 1))
    pruned = np.zeros_like(affinity)
    order = np.argsort(-affinity, axis=1)[:, : keep + 1]
    rows = np.arange(n)[:, None]
    pruned[rows, order] = affinity[rows, order]
    sym = 0.5 * (pruned + pruned.T)
    laplacian = np.diag(sym.sum(axis=1)) - sym
    values, vectors = np.linalg.eigh(laplacian)
    if params.num_speakers is not None:
        k = params.num_speakers
    else:
        lo = max(1, params.min_speakers or 1)
        hi = min(n - 1, params.max_speakers or params.max_auto_speakers)
        if hi < lo:
            k = lo
        else:
            gaps = np.diff(values[: hi + 1])  # gaps[i] = values[i+1] - values[i]
            k = int(np.argmax(gaps[lo - 1 : hi])) + lo
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    return _relabel(_kmeans(vectors[:, :k].astype(np.float32), k))
