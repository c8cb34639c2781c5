"""How many speakers: the one place the diarizer decides it.

Two counts are decided, and only here:

* **How many people speak in each frame** (:func:`frame_count`): segmentation-3.0's mean
  local count over the windows covering a frame, averaged with the second model's
  (:mod:`.counting`, weight ``count_weight``), plus ``count_bias`` (and ``overlap_bias``
  towards two), rounded. Reconstruction then lets that many speakers talk in the frame.
* **How many speakers the recording has**: the clustering proposes a number (distance
  threshold, :mod:`.clustering`, whose ``second_opinion`` may split a lone cluster in two
  when ``split_silhouette`` is set); a request for one speaker skips clustering
  (:func:`single_speaker`); the caller's ``num_speakers`` / ``min_speakers`` /
  ``max_speakers`` cut the clustering tree at another size (:func:`target_count`); and
  speakers heard for less than ``min_speaker_s`` are dropped as spurious clusters
  (:func:`kept_speakers`). (``method: spectral`` picks its count from the eigengap within
  the same bounds, see :func:`.clustering.spectral_clustering`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from callannotate.pipeline.diarization.reconstruction import round_count

if TYPE_CHECKING:  # clustering imports this module
    from callannotate.pipeline.diarization.clustering import ClusteringParams

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def frame_count(
    local_mean: FloatArray,
    second: FloatArray | None,
    count_weight: float,
    bias: float,
    overlap_bias: float,
) -> IntArray:
    """Speakers talking in each global frame.

    ``local_mean`` is segmentation-3.0's mean local count per frame
    (:func:`.reconstruction.mean_count`), ``second`` the second model's (or ``None`` when it
    is not loaded, ``count_weight`` = 1).
    """
    mean = local_mean
    if second is not None:
        mean = count_weight * local_mean + (1.0 - count_weight) * second
    return round_count(mean, bias, overlap_bias)


def single_speaker(params: ClusteringParams) -> bool:
    """The caller asked for exactly one speaker: no clustering is needed."""
    return params.max_speakers == 1 or params.num_speakers == 1


def target_count(params: ClusteringParams, found: int | None = None) -> int | None:
    """The number of clusters to cut the tree at, or ``None`` to keep what was ``found``.

    An exact ``num_speakers`` always wins; otherwise a ``found`` count outside
    ``[min_speakers, max_speakers]`` is moved to the nearest bound.
    """
    if params.num_speakers is not None:
        return params.num_speakers
    if found is None:
        return None
    if params.min_speakers is not None and found < params.min_speakers:
        return params.min_speakers
    if params.max_speakers is not None and found > params.max_speakers:
        return params.max_speakers
    return None


def kept_speakers(
    talk_s: FloatArray, min_speaker_s: float, params: ClusteringParams
) -> BoolArray | None:
    """Which clustered speakers to keep, or ``None`` to keep them all.

    Speakers heard for less than ``min_speaker_s`` seconds (``talk_s``, one value per
    speaker) are spurious clusters and are dropped, unless the caller fixed the count
    (``num_speakers``) or dropping them would leave fewer than ``min_speakers`` (or none).
    """
    tiny = talk_s < min_speaker_s
    if (
        params.num_speakers is None
        and tiny.any()
        and (~tiny).sum() >= max(1, params.min_speakers or 1)
    ):
        keep: BoolArray = ~tiny
        return keep
    return None
