"""GE2E speaker embeddings (Resemblyzer's voice encoder, 256-d), run with onnxruntime.

A second embedding for voice recognition, fused with CAM++ (see :mod:`.scoring`). The
weights are ``resemblyzer/pretrained.pt`` from the pinned ``resemblyzer==0.1.4`` wheel
(installed with ``--no-deps``: only the weights file is used, not the package's code or its
librosa/webrtcvad dependencies). The network (3-layer LSTM, 256 units, a linear layer with
ReLU and L2 normalisation of the last hidden state) is defined here in PyTorch, loaded with
``strict`` keys and exported **once** to ONNX with dynamic batch and time axes, cached in the
model cache keyed by the weights' sha256. Inference needs only onnxruntime.

Front end (as the encoder was trained): 16 kHz audio, 25 ms Hann windows every 10 ms
(centred, zero-padded), power spectrum, 40 Slaney-normalised mel bands, **linear** (not log)
mel power. Because the features are linear, the encoder depends on the input level:
Resemblyzer only raises quiet audio to -30 dBFS, which on FSDD let the recording level of
each speaker leak into the score (top-1 fell from 96.1 % to 93.5 % once every take got a
random gain); here every input is scaled to exactly ``target_dbfs`` (-30 dBFS RMS) so the
embedding is level-invariant (92.7 % with or without the random gains).

Length: up to 1.6 s (160 frames) the whole input is one partial, unpadded (padding short
clips to 1.6 s with zeros or reflections scored worse on FSDD); longer audio is cut into
1.6 s partials every 0.77 s whose embeddings are averaged, as Resemblyzer does.
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
from callannotate.pipeline.settings import Ge2eSettings
from callannotate.pipeline.speakers.embedding import l2_normalize
from callannotate.pipeline.types import SAMPLE_RATE, Float32Array, ProgressHook, null_hook

logger = logging.getLogger(__name__)

GE2E_DIM = 256
N_MELS = 40
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIAL_STEP = 77  # frames between partial starts (Resemblyzer's rate 1.3 per second)
MIN_FRAMES = 5
EXPORT_VERSION = "ge2e-onnx-1"

# ----------------------------------------------------------------------------- features


def _hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    out: npt.NDArray[np.float64] = np.where(f >= 1000.0, log, lin)
    return out


def _mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    out: npt.NDArray[np.float64] = np.where(m >= 15.0, log, lin)
    return out


def mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> Float32Array:
    """Triangular Slaney-normalised mel filters ``(n_mels, n_fft // 2 + 1)``, 0 Hz to Nyquist."""
    freqs = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(sample_rate / 2))), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    out: Float32Array = weights.astype(np.float32)
    return out


_MEL = mel_filters()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def normalize_level(wave: npt.NDArray[np.floating[Any]], target_dbfs: float) -> Float32Array:
    """``wave`` scaled to an RMS of ``target_dbfs`` (silence stays silence)."""
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms < 1e-7:
        return x
    out: Float32Array = (x * (10 ** (target_dbfs / 20) / rms)).astype(np.float32)
    return out


def mel_power(wave: npt.NDArray[np.floating[Any]]) -> Float32Array:
    """Linear mel power ``(frames, 40)`` of 16 kHz audio (centred 25 ms frames every 10 ms)."""
    x = np.pad(np.asarray(wave, dtype=np.float32).reshape(-1), (N_FFT // 2, N_FFT // 2))
    frames = 1 + (x.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * _WINDOW, axis=1)) ** 2
    out: Float32Array = (power @ _MEL.T).astype(np.float32)
    return out


def partials(mels: Float32Array) -> list[Float32Array]:
    """The 1.6 s partials of a mel spectrogram (the whole of it when shorter)."""
    n = mels.shape[0]
    if n <= PARTIAL_FRAMES:
        return [mels]
    starts = range(0, n - PARTIAL_FRAMES + 1, PARTIAL_STEP)
    return [mels[s : s + PARTIAL_FRAMES] for s in starts]


# ----------------------------------------------------------------------------- network


def build_ge2e(state_dict: dict[str, Any] | None = None) -> Any:
    """The GE2E encoder as a ``torch.nn.Module`` (eval mode): ``(batch, frames, 40)`` ->
    ``(batch, 256)`` L2-normalised. Layer names match Resemblyzer's checkpoint."""
    import torch
    from torch import nn

    class GE2E(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, GE2E_DIM)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            emb = torch.relu(self.linear(hidden[-1]))
            return emb / torch.clamp(torch.norm(emb, dim=1, keepdim=True), min=1e-12)

    model = GE2E()
    if state_dict is not None:
        # The checkpoint also holds the GE2E loss's similarity scale and bias: not needed.
        weights = {k: v for k, v in state_dict.items() if not k.startswith("similarity_")}
        model.load_state_dict(weights, strict=True)
    model.eval()
    return model


def export_ge2e_onnx(weights: Path, target: Path) -> None:
    """Export the encoder in ``weights`` to ONNX at ``target`` (dynamic batch and time)."""
    import torch

    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise Unprocessable(f"{weights} is not a Resemblyzer checkpoint")
    model = build_ge2e(state)
    export_torch_onnx(
        model,
        (torch.rand(2, 50, N_MELS),),
        target,
        inputs={"mels": {0: "batch", 1: "frames"}},
        outputs={"embedding": {0: "batch"}},
    )


class GE2EEmbedder(MLProcessor[Float32Array, Float32Array]):
    """Resemblyzer's GE2E encoder on onnxruntime: 16 kHz mono in, 256-d unit vector out.

    Settings: :class:`~callannotate.pipeline.settings.Ge2eSettings` (``recognition.ge2e``).
    """

    name = "ge2e"
    settings_type = Ge2eSettings
    settings: Ge2eSettings

    def __init__(
        self, settings: Ge2eSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self.target_dbfs = self.settings.target_dbfs
        self._session: Any = None

    def load_model(self) -> None:
        weights = model_file(self.settings)
        onnx_path = cached_onnx_export(
            "ge2e",
            [weights],
            lambda tmp: export_ge2e_onnx(weights, tmp),
            self.cache_dir,
            version=EXPORT_VERSION,
        )
        self._session = onnx_session(onnx_path, self.threads)
        logger.info("GE2E embedder loaded from %s", onnx_path)

    def cleanup(self) -> None:
        self._session = None
        super().cleanup()

    def describe(self) -> str:
        return self.settings.describe_model()

    def process(self, data: Float32Array, hook: ProgressHook = null_hook) -> Float32Array:
        out: Float32Array = self.embed_batch([data])[0]
        return out

    def embed_batch(self, waves: Sequence[npt.NDArray[np.floating[Any]]]) -> Float32Array:
        """Embeddings ``(n, 256)`` of 16 kHz mono waves (partials of equal length batched)."""
        self.ensure_loaded()
        out = np.zeros((len(waves), GE2E_DIM), dtype=np.float32)
        pieces: list[tuple[int, Float32Array]] = []
        for i, wave in enumerate(waves):
            mels = mel_power(normalize_level(wave, self.target_dbfs))
            if mels.shape[0] < MIN_FRAMES:
                raise Unprocessable(
                    f"audio too short for a GE2E embedding: {len(wave) / SAMPLE_RATE:.3f} s"
                )
            pieces.extend((i, p) for p in partials(mels))
        by_length: dict[int, list[int]] = {}
        for j, (_, p) in enumerate(pieces):
            by_length.setdefault(p.shape[0], []).append(j)
        for idx in by_length.values():
            for k in range(0, len(idx), 32):
                chunk = idx[k : k + 32]
                embs = self._run(np.stack([pieces[j][1] for j in chunk]))
                for j, e in zip(chunk, embs, strict=True):
                    out[pieces[j][0]] += e
        return l2_normalize(out)

    def _run(self, batch: Float32Array) -> Float32Array:
        if self._session is None:
            raise Unprocessable("the GE2E model is not loaded")
        (emb,) = self._session.run(["embedding"], {"mels": np.ascontiguousarray(batch)})
        out: Float32Array = np.asarray(emb, dtype=np.float32)
        return out
