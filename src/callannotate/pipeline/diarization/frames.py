"""CAM++ frame-level features and masked statistics pooling, for diarization.

CAM++ is a convolutional front end and a densely connected TDNN followed by statistics
pooling (mean and standard deviation over time) and one dense layer. Split there, the
network becomes two ONNX graphs, each exported once into the model cache:

* ``frames``: mean-normalised 80-bin filterbanks ``(batch, fbank frames, 80)`` ->
  features ``(batch, frames, 512)`` at one frame per 20 ms (the TDNN's stride 2);
* ``pool``: features ``(batch, frames, 512)`` and non-negative frame weights
  ``(batch, masks, frames)`` -> embeddings ``(batch, masks, 192)``: weighted mean and
  (unbiased) weighted standard deviation per mask, then the dense layer.

With all-ones weights the two graphs reproduce the full network exactly. The diarizer
runs ``frames`` once per chunk of audio and then pools any number of speaker masks
almost for free, instead of running the whole network once per speaker piece. Because
CAM++'s masking layers look at the mean of the whole input (and of 2 s segments), the
features of one voice are slightly coloured by the other voices in the chunk; the
masked embeddings are close to, not equal to, those of the voice's audio alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callannotate.errors import Unprocessable
from callannotate.pipeline.models import cached_onnx_export, export_torch_onnx, onnx_session
from callannotate.pipeline.speakers.embedding import (
    EMBEDDING_DIM,
    FRAME_LENGTH_S,
    FRAME_SHIFT_S,
    NUM_MEL_BINS,
    fbank,
    l2_normalize,
    load_campplus_torch,
)
from callannotate.pipeline.types import SAMPLE_RATE

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
AnyFloat = npt.NDArray[np.floating[Any]]

EXPORT_VERSION = "campplus-split-onnx-1"
FEATURE_DIM = 512  # channels after the last transit layer
FEATURE_STEP_S = 2 * FRAME_SHIFT_S  # the first TDNN layer has stride 2
VARIANCE_FLOOR = 1e-4  # keeps the std of a one-frame (or constant) mask finite


def feature_times(num_features: int) -> npt.NDArray[np.float64]:
    """Centre time (s, from the chunk start) of each CAM++ feature frame.

    Feature ``j`` is centred on filterbank frame ``2j``, whose 25 ms window starts at
    ``2j * 10 ms``."""
    return np.asarray(np.arange(num_features) * FEATURE_STEP_S + FRAME_LENGTH_S / 2, np.float64)


def _export_frames(weights: Path, target: Path) -> None:
    import torch
    from torch import nn

    full = load_campplus_torch(weights)

    class Frames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = full.head
            self.body = nn.Sequential(
                *[m for n, m in full.xvector.named_children() if n not in ("stats", "dense")]
            )

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            out = self.body(self.head(feats.permute(0, 2, 1)))
            return out.permute(0, 2, 1)  # type: ignore[no-any-return]

    model = Frames().eval()
    export_torch_onnx(
        model,
        (torch.randn(1, 300, NUM_MEL_BINS),),
        target,
        inputs={"feats": {0: "batch", 1: "time"}},
        outputs={"frames": {0: "batch", 1: "steps"}},
    )


def _export_pool(weights: Path, target: Path) -> None:
    import torch
    from torch import nn

    full = load_campplus_torch(weights)

    class Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = full.xvector.dense

        def forward(self, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            # frames (B, T, C), weights (B, K, T) -> (B, K, 192)
            total = weights.sum(-1, keepdim=True).clamp(min=1e-6)
            mean = torch.matmul(weights, frames) / total
            square = torch.matmul(weights, frames * frames) / total
            # Unbiased weighted variance (equals torch.std(unbiased=True) for 0/1 weights).
            dof = total - (weights * weights).sum(-1, keepdim=True) / total
            var = (square - mean * mean).clamp(min=0.0) * total / dof.clamp(min=1e-6)
            std = torch.sqrt(var.clamp(min=VARIANCE_FLOOR))
            stats = torch.cat([mean, std], dim=-1)  # (B, K, 2C)
            b, k, c = stats.shape
            out = self.dense(stats.reshape(b * k, c))
            return out.reshape(b, k, EMBEDDING_DIM)  # type: ignore[no-any-return]

    model = Pool().eval()
    export_torch_onnx(
        model,
        (torch.randn(1, 50, FEATURE_DIM), torch.ones(1, 2, 50)),
        target,
        inputs={
            "frames": {0: "batch", 1: "steps"},
            "weights": {0: "batch", 1: "masks", 2: "steps"},
        },
        outputs={"embedding": {0: "batch", 1: "masks"}},
    )


class FrameEmbedder:
    """CAM++ split at the statistics pooling (see the module docstring).

    ``weights`` is the verified CAM++ state dict (``SpeakerEmbedder.weights_path``); the
    two graphs are exported once into ``cache_dir``.
    """

    def __init__(self, weights: Path, cache_dir: Path, threads: int = 2) -> None:
        self.frames_path = cached_onnx_export(
            "campplus-frames",
            [weights],
            lambda tmp: _export_frames(weights, tmp),
            cache_dir,
            version=EXPORT_VERSION,
        )
        self.pool_path = cached_onnx_export(
            "campplus-pool",
            [weights],
            lambda tmp: _export_pool(weights, tmp),
            cache_dir,
            version=EXPORT_VERSION,
        )
        self._frames: Any = onnx_session(self.frames_path, threads)
        self._pool: Any = onnx_session(self.pool_path, threads)

    def features(self, wave: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Frame-level features ``(frames, 512)`` of 16 kHz samples (one chunk)."""
        feats = fbank(wave)
        out = self._frames.run(["frames"], {"feats": feats[None]})[0]
        return np.asarray(out[0], dtype=np.float32)

    def pool(self, features: AnyFloat, weights: FloatArray) -> FloatArray:
        """L2-normalised embeddings ``(masks, 192)`` of ``features`` ``(frames, 512)``
        pooled with each row of ``weights`` ``(masks, frames)``."""
        if weights.shape[0] == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if weights.shape[1] != features.shape[0]:
            raise Unprocessable("pooling weights do not match the feature frames")
        out = self._pool.run(
            ["embedding"],
            {
                "frames": np.ascontiguousarray(features[None], dtype=np.float32),
                "weights": np.ascontiguousarray(weights[None], dtype=np.float32),
            },
        )[0]
        return l2_normalize(np.asarray(out[0], dtype=np.float32))


def chunk_features(
    encoder: FrameEmbedder, signal: FloatArray, chunk_s: float, context_s: float
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float64]]:
    """Features of a whole signal, computed chunk by chunk.

    Chunks of ``chunk_s`` seconds are encoded with ``context_s`` seconds of extra audio on
    each side (dropped afterwards), so every kept feature frame has context on both
    sides. Returns the features ``(frames, 512)``, stored as float16 (an hour of audio
    takes 180 MB instead of 370 MB; embeddings change by less than 1e-4 in cosine), and
    their centre times (s).
    """
    n = len(signal)
    chunk = max(1, round(chunk_s * SAMPLE_RATE))
    context = max(0, round(context_s * SAMPLE_RATE))
    feats: list[npt.NDArray[np.float16]] = []
    times: list[npt.NDArray[np.float64]] = []
    min_samples = round((FRAME_LENGTH_S + 9 * FRAME_SHIFT_S) * SAMPLE_RATE)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        lo = max(0, start - context)
        hi = min(n, end + context)
        if hi - lo < min_samples:
            lo = max(0, hi - min_samples)
        if hi - lo < min_samples:
            break
        f = encoder.features(signal[lo:hi])
        t = lo / SAMPLE_RATE + feature_times(len(f))
        keep = (t >= start / SAMPLE_RATE) & (t < end / SAMPLE_RATE)
        if end == n:
            keep = t >= start / SAMPLE_RATE
        feats.append(f[keep].astype(np.float16))
        times.append(t[keep])
    if not feats:
        return np.zeros((0, FEATURE_DIM), dtype=np.float16), np.zeros(0)
    return np.concatenate(feats), np.concatenate(times)
