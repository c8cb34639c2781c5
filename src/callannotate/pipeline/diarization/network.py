"""Our own definition of pyannote's segmentation-3.0 network (PyanNet) and its ONNX export.

The architecture, read from the checkpoint's hyper-parameters: SincNet (80 parametric
band-pass filters of 251 taps, stride 10, then two 5-tap convolutions, each followed by
max-pooling by 3, instance norm and leaky ReLU), a 4-layer bidirectional LSTM (128 units
per direction), two 128-unit linear layers and a 7-class powerset classifier (3 speakers,
at most 2 at once). One output frame every 270 samples (16.875 ms at 16 kHz); a 10 s
window gives 589 frames.

This module imports torch and is only used to convert the weights to ONNX once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from callannotate.pipeline.models import export_torch_onnx
from callannotate.pipeline.types import SAMPLE_RATE


class ParamSincFB(nn.Module):
    """Parametric sinc band-pass filters (cosine and sine halves), SincNet style."""

    def __init__(self, n_filters: int = 80, kernel_size: int = 251, stride: int = 10) -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.min_low_hz = 50.0
        self.min_band_hz = 50.0
        half = n_filters // 2
        self.low_hz_ = nn.Parameter(torch.zeros(half, 1))
        self.band_hz_ = nn.Parameter(torch.zeros(half, 1))
        n_lin = torch.linspace(0, kernel_size / 2 - 1, steps=kernel_size // 2)
        self.register_buffer("window_", 0.54 - 0.46 * torch.cos(2 * math.pi * n_lin / kernel_size))
        n = (kernel_size - 1) / 2.0
        self.register_buffer("n_", 2 * math.pi * torch.arange(-n, 0).view(1, -1) / SAMPLE_RATE)

    def filters(self) -> torch.Tensor:
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(
            low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, SAMPLE_RATE / 2
        )
        band = (high - low)[:, 0]
        n_: torch.Tensor = self.n_  # type: ignore[assignment]
        window: torch.Tensor = self.window_  # type: ignore[assignment]
        ft_low = torch.matmul(low, n_)
        ft_high = torch.matmul(high, n_)
        cos_left = ((torch.sin(ft_high) - torch.sin(ft_low)) / (n_ / 2)) * window
        cos_center = 2 * band.view(-1, 1)
        cos = torch.cat([cos_left, cos_center, torch.flip(cos_left, dims=[1])], dim=1)
        sin_left = ((torch.cos(ft_low) - torch.cos(ft_high)) / (n_ / 2)) * window
        sin_center = torch.zeros_like(cos_center)
        sin = torch.cat([sin_left, sin_center, -torch.flip(sin_left, dims=[1])], dim=1)
        filters = torch.cat([cos, sin], dim=0) / (2 * torch.cat([band, band])[:, None])
        return filters.view(self.n_filters, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters(), stride=self.stride)


class _Encoder(nn.Module):
    """Holds the filterbank under the same state-dict name as the checkpoint."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.filterbank = ParamSincFB(stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.filterbank(x)
        return out


class SincNet(nn.Module):
    def __init__(self, stride: int = 10) -> None:
        super().__init__()
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList([_Encoder(stride), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList(
            [
                nn.InstanceNorm1d(80, affine=True),
                nn.InstanceNorm1d(60, affine=True),
                nn.InstanceNorm1d(60, affine=True),
            ]
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.wav_norm1d(waveforms)
        for index, (conv, pool, norm) in enumerate(
            zip(self.conv1d, self.pool1d, self.norm1d, strict=True)
        ):
            out = conv(out)
            if index == 0:
                out = torch.abs(out)
            out = F.leaky_relu(norm(pool(out)))
        return out


class PyanNet(nn.Module):
    """Waveforms ``(batch, 1, samples)`` -> powerset log-probabilities ``(batch, frames, 7)``."""

    def __init__(self, hidden: int = 128, layers: int = 4, classes: int = 7) -> None:
        super().__init__()
        self.sincnet = SincNet()
        self.lstm = nn.LSTM(60, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.linear = nn.ModuleList([nn.Linear(2 * hidden, 128), nn.Linear(128, 128)])
        self.classifier = nn.Linear(128, classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        features = self.sincnet(waveforms).transpose(1, 2)
        out, _ = self.lstm(features)
        for layer in self.linear:
            out = F.leaky_relu(layer(out))
        return F.log_softmax(self.classifier(out), dim=-1)


def load_pyannet(checkpoint: dict[str, Any]) -> PyanNet:
    """A PyanNet in eval mode holding the checkpoint's weights (strict key match)."""
    hp = checkpoint.get("hyper_parameters", {})
    lstm = hp.get("lstm", {})
    if lstm and (lstm.get("num_layers", 4) != 4 or lstm.get("hidden_size", 128) != 128):
        raise ValueError(f"unexpected segmentation architecture: {lstm}")
    model = PyanNet()
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.eval()
    return model


def export_onnx(model: PyanNet, target: Path, window_samples: int = 10 * SAMPLE_RATE) -> None:
    """Write ``model`` as ONNX: input ``waveforms`` (batch, 1, samples) with dynamic batch
    and length, output ``logprobs`` (batch, frames, 7)."""
    export_torch_onnx(
        model,
        (torch.zeros(2, 1, window_samples),),
        target,
        inputs={"waveforms": {0: "batch", 2: "samples"}},
        outputs={"logprobs": {0: "batch", 1: "frames"}},
    )
