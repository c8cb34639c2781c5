"""Unit tests of the diarization building blocks (no models)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from callannotate.pipeline.diarization.clustering import (
    ClusteringParams,
    assign_local_speakers,
    centroids_of,
    cluster_embeddings,
)
from callannotate.pipeline.diarization.reconstruction import (
    ReconstructionParams,
    binary_to_turns,
    clustered_scores,
    exclusive,
    frame_weights,
    mean_count,
    select_top,
    window_offsets,
)
from callannotate.pipeline.diarization.result import DiarizationResult
from callannotate.pipeline.diarization.segmentation import (
    FRAME_STEP,
    powerset_classes,
    powerset_mapping,
    powerset_to_multilabel,
    window_starts,
)
from callannotate.pipeline.diarization.speaker_count import frame_count
from callannotate.pipeline.types import Speaker, Turn

# ----------------------------------------------------------------------------- powerset


def test_powerset_classes_order() -> None:
    assert powerset_classes() == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    mapping = powerset_mapping()
    assert mapping.shape == (7, 3)
    assert mapping.sum(axis=1).tolist() == [0, 1, 1, 1, 2, 2, 2]


def test_powerset_to_multilabel_hard_and_soft() -> None:
    logits = np.full((4, 7), -10.0, dtype=np.float32)
    logits[0, 0] = 0.0  # silence
    logits[1, 2] = 0.0  # speaker 1
    logits[2, 5] = 0.0  # speakers 0 and 2
    logits[3, 6] = 0.0  # speakers 1 and 2
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    hard = powerset_to_multilabel(logprobs)
    assert hard.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]]
    soft = powerset_to_multilabel(logprobs, soft=True)
    assert np.allclose(soft, hard, atol=1e-3)
    assert soft.dtype == np.float32


def test_powerset_soft_marginals() -> None:
    probs = np.array([[0.1, 0.2, 0.1, 0.0, 0.4, 0.1, 0.1]], dtype=np.float32)
    soft = powerset_to_multilabel(np.log(probs + 1e-12), soft=True)
    # speaker 0 in classes 1, 4, 5; speaker 1 in 2, 4, 6; speaker 2 in 3, 5, 6
    assert np.allclose(soft[0], [0.7, 0.6, 0.2], atol=1e-4)


def test_powerset_rejects_wrong_width() -> None:
    with pytest.raises(ValueError):
        powerset_to_multilabel(np.zeros((2, 5), dtype=np.float32))


def test_window_geometry() -> None:
    assert window_starts(50_000, 160_000, 16_000) == [0]
    starts = window_starts(300_000, 160_000, 40_000)
    assert starts[0] == 0 and starts[-1] == 300_000 - 160_000
    assert all(b > a for a, b in itertools.pairwise(starts))


# ----------------------------------------------------------------------------- clustering


def _synthetic(
    counts: list[int], dim: int = 192, noise: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    xs, ys = [], []
    for k, n in enumerate(counts):
        pts = centres[k] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
        xs.append(pts)
        ys.extend([k] * n)
    return np.concatenate(xs).astype(np.float32), np.array(ys)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_clustering_estimates_number_of_speakers() -> None:
    x, y = _synthetic([12, 9, 15])
    labels = cluster_embeddings(x, ClusteringParams(threshold=0.7))
    assert labels.max() + 1 == 3
    assert _same_partition(labels, y)


def test_clustering_honours_num_min_max() -> None:
    x, _ = _synthetic([10, 10, 10, 10], seed=1)
    assert cluster_embeddings(x, ClusteringParams(num_speakers=2)).max() + 1 == 2
    assert cluster_embeddings(x, ClusteringParams(max_speakers=3)).max() + 1 == 3
    one, _ = _synthetic([20], seed=2)
    assert cluster_embeddings(one, ClusteringParams(min_speakers=2)).max() + 1 == 2
    assert cluster_embeddings(one, ClusteringParams()).max() + 1 == 1


def test_small_clusters_fold_into_large_ones() -> None:
    x, _ = _synthetic([15, 15, 1], seed=3)
    labels = cluster_embeddings(x, ClusteringParams(threshold=0.7, min_cluster_size=3))
    assert labels.max() + 1 == 2


def test_clustering_edge_sizes() -> None:
    assert cluster_embeddings(np.zeros((0, 4), np.float32), ClusteringParams()).size == 0
    assert cluster_embeddings(np.ones((1, 4), np.float32), ClusteringParams()).tolist() == [0]


def test_assignment_gives_distinct_speakers_within_a_window() -> None:
    x, y = _synthetic([10, 10], seed=4)
    cents = centroids_of(x, y.astype(np.int64))
    # Window 0: both local speakers look like speaker 0, they must still differ.
    emb = np.stack([np.stack([x[0], x[1], x[0]]), np.stack([x[15], x[2], x[0]])])
    valid = np.array([[True, True, False], [True, True, False]])
    out = assign_local_speakers(emb, valid, cents)
    assert out[0, 0] != out[0, 1]
    assert out[1].tolist()[:2] == [1, 0]
    assert out[0, 2] == -1 and out[1, 2] == -1


# ----------------------------------------------------------------------------- reconstruction


def test_count_and_clustered_scores_over_overlapping_windows() -> None:
    frames = 10
    activity = np.zeros((2, frames, 3), dtype=np.float32)
    activity[0, :, 0] = 1  # window 0: local 0 everywhere
    activity[0, 5:, 1] = 1  # and local 1 in its second half (overlap)
    activity[1, :5, 2] = 1  # window 1 (starts 5 frames later): local 2 = global speaker 1
    activity[1, :, 0] = 1  # local 0 = global speaker 0
    offsets = window_offsets(np.array([0.0, 5 * FRAME_STEP]))
    assert offsets.tolist() == [0, 5]
    weights = np.ones(frames, dtype=np.float32)
    count = frame_count(mean_count(activity, offsets, 15, weights), None, 1.0, 0.0, 0.0)
    assert count[:5].tolist() == [1] * 5 and count[5:10].tolist() == [2] * 5
    assignment = np.array([[0, 1, -1], [0, -1, 1]])
    scores = clustered_scores(activity, assignment, 2, offsets, 15, weights)
    binary = select_top(scores, count)
    assert binary[:5].tolist() == [[1, 0]] * 5
    assert binary[5:10].tolist() == [[1, 1]] * 5
    assert binary[10:].sum(axis=1).tolist() == [1] * 5
    # Frame-level assignment is accepted too.
    framewise = np.repeat(assignment[:, None, :], frames, axis=1)
    assert np.allclose(clustered_scores(activity, framewise, 2, offsets, 15, weights), scores)


def test_count_biases_and_hamming_weights() -> None:
    # Two identical windows: the local counts are 0, 0.4, 1.45, 1.45 per frame.
    activity = np.zeros((2, 4, 3), dtype=np.float32)
    activity[0, :, 0] = 1
    activity[0, :, 1] = 0.45
    activity[1, :, 0] = 1
    activity[1, :, 1] = 0.45
    activity[:, 0, :] = 0.0  # first frame: silent
    activity[:, 1, 0] = 0.4  # second frame: expected count 0.4 (+0.45 below)
    activity[:, 1, 1] = 0.0
    mean = mean_count(activity, np.array([0, 0]), 4, np.ones(4, dtype=np.float32))
    assert frame_count(mean, None, 1.0, 0.0, 0.0).tolist() == [0, 0, 1, 1]
    assert frame_count(mean, None, 1.0, 0.1, 0.0).tolist() == [0, 1, 2, 2]
    # The overlap bias only raises counts that are already at least one speaker.
    assert frame_count(mean, None, 1.0, 0.0, 0.1).tolist() == [0, 0, 2, 2]
    assert frame_count(mean, None, 1.0, -0.6, 0.0).min() == 0
    hamming = frame_weights(9, ReconstructionParams(hamming=True))
    assert hamming[4] == pytest.approx(1.0, abs=2e-3) and 0 < hamming[0] < 0.1
    assert frame_weights(9, ReconstructionParams()).tolist() == [1.0] * 9


def test_time_shift_moves_turns() -> None:
    binary = np.zeros((100, 1), dtype=np.float32)
    binary[10:50, 0] = 1
    plain = binary_to_turns(binary, ["A"], ReconstructionParams(), duration=10.0)[0]
    shifted = binary_to_turns(binary, ["A"], ReconstructionParams(time_shift=0.02), 10.0)[0]
    assert shifted.start == pytest.approx(plain.start + 0.02, abs=1e-3)
    assert shifted.end == pytest.approx(plain.end + 0.02, abs=1e-3)


def test_select_top_ignores_silent_speakers() -> None:
    scores = np.array([[0.9, 0.0], [0.2, 0.8]], dtype=np.float32)
    out = select_top(scores, np.array([2, 1]))
    assert out.tolist() == [[1, 0], [0, 1]]


def test_turns_fill_gaps_and_drop_short() -> None:
    binary = np.zeros((200, 2), dtype=np.float32)
    binary[10:50, 0] = 1
    binary[53:100, 0] = 1  # 3-frame gap (~0.05 s) -> filled
    binary[120:122, 1] = 1  # 2 frames (~0.03 s) -> dropped
    params = ReconstructionParams(min_duration_on=0.1, min_duration_off=0.1)
    turns = binary_to_turns(binary, ["A", "B"], params, duration=10.0)
    assert len(turns) == 1 and turns[0].speaker == "A"
    assert turns[0].start == pytest.approx(10 * FRAME_STEP + 0.031 - FRAME_STEP / 2, abs=2e-3)
    kept = binary_to_turns(binary, ["A", "B"], ReconstructionParams(), duration=10.0)
    assert [t.speaker for t in kept] == ["A", "A", "B"]


def test_exclusive_has_no_overlap() -> None:
    binary = np.array([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.5], [0.9, 0.0], [0.2, 0.7], [0, 0]], dtype=np.float32)
    out = exclusive(binary, scores)
    assert out.tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]
    assert exclusive(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32)).shape == (3, 0)


def test_rttm_output() -> None:
    result = DiarizationResult(
        turns=[
            Turn(start=0.5, end=2.0, speaker="SPEAKER_00"),
            Turn(start=1.5, end=3.25, speaker="SPEAKER_01"),
        ],
        exclusive_turns=[Turn(start=0.5, end=1.5, speaker="SPEAKER_00")],
        speakers=[Speaker(label="SPEAKER_00"), Speaker(label="SPEAKER_01")],
    )
    lines = result.to_rttm("my call").splitlines()
    assert lines == [
        "SPEAKER my_call 1 0.500 1.500 <NA> <NA> SPEAKER_00 <NA> <NA>",
        "SPEAKER my_call 1 1.500 1.750 <NA> <NA> SPEAKER_01 <NA> <NA>",
    ]
    assert result.to_rttm("x", exclusive=True).count("\n") == 1
    assert result.num_speakers == 2
    assert DiarizationResult().to_rttm("x") == ""


def test_spectral_clustering_finds_known_number() -> None:
    x, y = _synthetic([12, 10, 14], seed=5)
    params = ClusteringParams(method="spectral", neighbours=8)
    labels = cluster_embeddings(x, params)
    assert labels.max() + 1 == 3
    assert _same_partition(labels, y)
    fixed = ClusteringParams(method="spectral", neighbours=8, num_speakers=2)
    assert cluster_embeddings(x, fixed).max() + 1 == 2


# ----------------------------------------------------------------------------- crosstalk


def test_frame_levels_follow_the_signal() -> None:
    from callannotate.pipeline.diarization.diarizer import frame_levels

    signal = np.zeros(16_000 * 2, dtype=np.float32)
    signal[16_000:] = 0.1  # second half at -20 dB
    levels = frame_levels(signal, 100)
    assert levels.shape == (100,)
    assert levels[10] < -90
    assert abs(levels[80] - (-20.0)) < 0.1


def test_crosstalk_mask_drops_the_far_party_leak() -> None:
    from callannotate.pipeline.diarization.diarizer import crosstalk_mask

    frames = 40
    # Channel 0: own speech at -10 dB in frames 0-19, then the other party's echo at -40 dB.
    # Channel 1 (a quieter line): silence, then own speech at -25 dB in frames 20-39, with
    # a genuine double-talk frame range 15-19 at its own level.
    level0 = np.r_[np.full(20, -10.0), np.full(20, -40.0)].astype(np.float32)
    level1 = np.r_[np.full(15, -80.0), np.full(25, -25.0)].astype(np.float32)
    both_on = np.ones((frames, 1), dtype=np.float32)
    ch1_on = np.r_[np.zeros(15), np.ones(25)].astype(np.float32)[:, None]
    keep = crosstalk_mask(np.stack([level0, level1]), [both_on, ch1_on], frames, 15.0)
    assert keep.shape == (frames, 2)
    assert keep[:20, 0].all() and not keep[20:, 0].any()  # echo on channel 0 removed
    assert keep[15:, 1].all()  # the quieter line keeps its speech, double talk included
