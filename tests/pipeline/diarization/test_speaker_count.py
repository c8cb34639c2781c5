"""Where the number of speakers is decided (`pipeline.diarization.speaker_count`)."""

from __future__ import annotations

import numpy as np

from callannotate.pipeline.diarization.clustering import ClusteringParams
from callannotate.pipeline.diarization.speaker_count import (
    kept_speakers,
    single_speaker,
    target_count,
)


def test_target_count_exact_then_bounds() -> None:
    assert target_count(ClusteringParams()) is None
    assert target_count(ClusteringParams(), 3) is None
    assert target_count(ClusteringParams(num_speakers=2)) == 2
    assert target_count(ClusteringParams(num_speakers=2), 5) == 2
    assert target_count(ClusteringParams(min_speakers=3), 2) == 3
    assert target_count(ClusteringParams(max_speakers=2), 4) == 2
    assert target_count(ClusteringParams(min_speakers=2, max_speakers=4), 3) is None


def test_single_speaker_requests_skip_clustering() -> None:
    assert single_speaker(ClusteringParams(num_speakers=1))
    assert single_speaker(ClusteringParams(max_speakers=1))
    assert not single_speaker(ClusteringParams(min_speakers=1))
    assert not single_speaker(ClusteringParams())


def test_kept_speakers_drops_short_clusters_unless_the_count_is_fixed() -> None:
    talk = np.array([30.0, 0.2, 12.0], dtype=np.float32)
    keep = kept_speakers(talk, 0.5, ClusteringParams())
    assert keep is not None and keep.tolist() == [True, False, True]
    assert kept_speakers(talk, 0.5, ClusteringParams(num_speakers=3)) is None
    # Dropping would leave fewer than min_speakers: keep them all.
    assert kept_speakers(talk, 0.5, ClusteringParams(min_speakers=3)) is None
    # Nobody long enough: keep them all rather than none.
    assert kept_speakers(np.array([0.1, 0.2], np.float32), 0.5, ClusteringParams()) is None
    assert kept_speakers(np.array([1.0, 2.0], np.float32), 0.5, ClusteringParams()) is None
