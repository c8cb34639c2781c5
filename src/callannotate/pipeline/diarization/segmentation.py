"""Local speaker segmentation with pyannote segmentation-3.0 on onnxruntime.

The network sees 10 s windows and outputs, every 16.875 ms, one of 7 powerset classes:
no speaker, one of three local speakers, or one of three pairs. :func:`powerset_to_multilabel`
turns that into per-speaker activity. Sliding windows overlap so every frame of the
recording is seen several times; :mod:`.reconstruction` stitches them together.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callannotate.pipeline.models import (
    cached_onnx_export,
    load_torch_checkpoint,
    onnx_session,
)
from callannotate.pipeline.types import SAMPLE_RATE

logger = logging.getLogger(__name__)

FRAME_SAMPLES = 270  # samples between output frames (10 * 3 * 3 * 3)
RECEPTIVE_SAMPLES = 991  # receptive field of one output frame (samples)
FRAME_CENTRE = RECEPTIVE_SAMPLES // 2  # samples from a frame's first sample to its centre
FRAME_STEP = FRAME_SAMPLES / SAMPLE_RATE  # seconds between output frames
FRAME_DURATION = RECEPTIVE_SAMPLES / SAMPLE_RATE  # receptive field of one output frame (s)
NUM_LOCAL_SPEAKERS = 3
MAX_SPEAKERS_PER_FRAME = 2
EXPORT_VERSION = "pyannet-onnx-1"

FloatArray = npt.NDArray[np.float32]


def powerset_classes(
    num_speakers: int = NUM_LOCAL_SPEAKERS, max_per_frame: int = MAX_SPEAKERS_PER_FRAME
) -> list[tuple[int, ...]]:
    """Speaker sets in pyannote's powerset order: (), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)."""
    classes: list[tuple[int, ...]] = []
    for size in range(max_per_frame + 1):
        classes.extend(itertools.combinations(range(num_speakers), size))
    return classes


def powerset_mapping(
    num_speakers: int = NUM_LOCAL_SPEAKERS, max_per_frame: int = MAX_SPEAKERS_PER_FRAME
) -> FloatArray:
    """Matrix ``(classes, speakers)``: 1 where the class contains the speaker."""
    classes = powerset_classes(num_speakers, max_per_frame)
    mapping = np.zeros((len(classes), num_speakers), dtype=np.float32)
    for index, members in enumerate(classes):
        mapping[index, list(members)] = 1.0
    return mapping


def powerset_to_multilabel(logprobs: FloatArray, soft: bool = False) -> FloatArray:
    """Powerset scores ``(..., frames, 7)`` -> speaker activity ``(..., frames, 3)``.

    Hard (default): the most likely class, as 0/1 per speaker. Soft: each speaker's
    marginal probability (sum of the probabilities of the classes containing it).
    """
    mapping = powerset_mapping(NUM_LOCAL_SPEAKERS, MAX_SPEAKERS_PER_FRAME)
    if logprobs.shape[-1] != mapping.shape[0]:
        raise ValueError(f"expected {mapping.shape[0]} powerset classes, got {logprobs.shape[-1]}")
    if soft:
        probs = np.exp(logprobs - logprobs.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out: FloatArray = (probs @ mapping).astype(np.float32)
        return out
    best = logprobs.argmax(axis=-1)
    hard: FloatArray = mapping[best]
    return hard


def window_starts(num_samples: int, window: int, step: int) -> list[int]:
    """Start samples of windows of ``window`` samples every ``step``; the last one ends at the
    end of the audio (audio shorter than one window gets a single window at 0)."""
    if num_samples <= window:
        return [0]
    starts = list(range(0, num_samples - window + 1, step))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return starts


def window_batches(
    signal: FloatArray, window: int, starts: list[int], batch_size: int
) -> Iterator[FloatArray]:
    """Float32 waveform batches ``(<= batch_size, window)`` of ``signal`` cut at ``starts``
    (the signal is zero-padded when it is shorter than one window)."""
    padded = signal if len(signal) >= window else np.pad(signal, (0, window - len(signal)))
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        yield np.stack([padded[s : s + window] for s in chunk]).astype(np.float32)


@dataclass(frozen=True)
class WindowSegmentation:
    """Segmentation of all windows of one signal.

    ``starts`` are window start times (s); ``activity`` is hard 0/1 ``(windows, frames, 3)``;
    ``soft`` the marginal speaker probabilities of the same shape.
    """

    starts: npt.NDArray[np.float64]
    activity: FloatArray
    soft: FloatArray
    window_duration: float
    num_samples: int

    @property
    def frames_per_window(self) -> int:
        return int(self.activity.shape[1])


class SegmentationModel:
    """segmentation-3.0 exported to ONNX once and run with onnxruntime."""

    def __init__(self, checkpoint: Path, cache_dir: Path, threads: int) -> None:
        self.checkpoint = checkpoint
        self.onnx_path = cached_onnx_export(
            "segmentation-3.0", [checkpoint], self._export, cache_dir, version=EXPORT_VERSION
        )
        self.session: Any = onnx_session(self.onnx_path, threads)

    def _export(self, target: Path) -> None:
        from callannotate.pipeline.diarization.network import export_onnx, load_pyannet

        export_onnx(load_pyannet(load_torch_checkpoint(self.checkpoint)), target)

    def infer(self, batch: FloatArray) -> FloatArray:
        """Powerset log-probabilities for waveforms ``(batch, samples)``."""
        out = self.session.run(["logprobs"], {"waveforms": batch[:, None, :]})[0]
        return np.asarray(out, dtype=np.float32)

    def segment(
        self,
        signal: FloatArray,
        window_s: float = 10.0,
        step_s: float = 2.5,
        batch_size: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> WindowSegmentation:
        """Run the sliding windows over a 16 kHz mono signal."""
        window = round(window_s * SAMPLE_RATE)
        step = max(1, round(step_s * SAMPLE_RATE))
        starts = window_starts(len(signal), window, step)
        outputs: list[FloatArray] = []
        for index, batch in enumerate(window_batches(signal, window, starts, batch_size)):
            outputs.append(self.infer(batch))
            if progress is not None:
                progress(min((index + 1) * batch_size, len(starts)), len(starts))
        logprobs = np.concatenate(outputs, axis=0)
        return WindowSegmentation(
            starts=np.asarray(starts, dtype=np.float64) / SAMPLE_RATE,
            activity=powerset_to_multilabel(logprobs),
            soft=powerset_to_multilabel(logprobs, soft=True),
            window_duration=window / SAMPLE_RATE,
            num_samples=len(signal),
        )
