"""Audio decoding and probing with PyAV (ffmpeg's libraries).

``probe`` checks that bytes really are audio (not the file extension) and ``decode`` turns
anything ffmpeg reads into float32 samples, keeping the original channels.

Files encrypted at rest (see :mod:`callannotate.security.atrest`) are decrypted on the fly:
ffmpeg reads them through a decrypting, seekable Python stream (PyAV's file-object input), so
no plaintext copy of the audio is ever written to disk. ``settings`` names the master keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from callannotate.errors import InvalidAudio
from callannotate.pipeline.types import SAMPLE_RATE, AudioBuffer, AudioQuality

if TYPE_CHECKING:
    from callannotate.config import Settings
    from callannotate.security.atrest import Vault

MODEL_SAMPLE_RATE = SAMPLE_RATE  # the name the pipeline entry point uses


@dataclass(frozen=True)
class ProbeResult:
    format: str
    codec: str
    sample_rate: int
    channels: int
    duration: float


def _reason(exc: Exception, path: Path) -> str:
    """PyAV's message without the file's path (it ends with it; clients must not see it)."""
    text = str(getattr(exc, "strerror", None) or exc)
    return text.replace(str(path), "<file>").replace(path.name, "<file>")


@contextlib.contextmanager
def _source(
    path: Path, settings: Settings | None, vault: Vault | None = None
) -> Iterator[str | BinaryIO]:
    """What PyAV opens: the path of a plaintext file, a decrypting stream otherwise."""
    from callannotate.security.envelope import is_encrypted_file

    try:
        encrypted = is_encrypted_file(path)
    except OSError:
        encrypted = False  # let PyAV report the missing file as it always did
    if not encrypted:
        yield str(path)
        return
    from callannotate.config import Settings
    from callannotate.security.atrest import vault_for

    if vault is None:
        vault = vault_for(settings or Settings())
    with vault.open_read(path) as stream:
        yield stream


def probe(
    path: Path, *, settings: Settings | None = None, vault: Vault | None = None
) -> ProbeResult:
    """Open the container, find an audio stream and decode it fully enough to be sure.

    Raises ``InvalidAudio`` for non-audio content, truncated streams that yield no samples,
    and zero-length audio.
    """
    import av

    try:
        with _source(path, settings, vault) as source, av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file holds no audio stream")
            stream = container.streams.audio[0]
            frames = 0
            rate = int(stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            for frame in container.decode(stream):
                frames += int(frame.samples)
                rate = int(frame.sample_rate) or rate
                channels = len(frame.layout.channels) or channels
            fmt = str(container.format.name).split(",")[0]
            codec = str(stream.codec_context.name)
    except InvalidAudio:
        raise
    except Exception as exc:  # PyAV raises many error types for undecodable input
        raise InvalidAudio(f"the content does not decode as audio: {_reason(exc, path)}") from exc
    if rate <= 0 or channels <= 0:
        raise InvalidAudio("the audio stream has no sample rate or channels")
    if frames == 0:
        raise InvalidAudio("the audio is empty (zero samples)")
    return ProbeResult(fmt, codec, rate, channels, frames / rate)


def decode(
    path: Path,
    sample_rate: int | None = MODEL_SAMPLE_RATE,
    *,
    settings: Settings | None = None,
    vault: Vault | None = None,
) -> AudioBuffer:
    """Decode ``path`` to float32 ``(channels, frames)``; resample when ``sample_rate`` is set.

    Channels are kept as they are (a stereo call keeps one party per channel).
    """
    import av

    chunks: list[np.ndarray] = []
    try:
        with _source(path, settings, vault) as source, av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file holds no audio stream")
            stream = container.streams.audio[0]
            channels = int(stream.codec_context.channels or 1)
            layout = "mono" if channels == 1 else ("stereo" if channels == 2 else None)
            resampler = av.AudioResampler(
                format="fltp", layout=layout, rate=sample_rate or stream.codec_context.sample_rate
            )
            out_rate = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    out_rate = int(out.sample_rate)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
                out_rate = int(out.sample_rate)
    except InvalidAudio:
        raise
    except Exception as exc:
        raise InvalidAudio(f"the content does not decode as audio: {_reason(exc, path)}") from exc
    if not chunks:
        raise InvalidAudio("the audio is empty (zero samples)")
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if samples.shape[1] == 0:
        raise InvalidAudio("the audio is empty (zero samples)")
    np.clip(samples, -1.0, 1.0, out=samples)
    return AudioBuffer(samples=np.ascontiguousarray(samples), sample_rate=out_rate)


def measure_quality(audio: AudioBuffer) -> AudioQuality:
    """Levels, DC offset and clipping of the decoded audio (no model needed)."""
    x = audio.samples
    eps = 1e-10
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    dc = float(np.max(np.abs(x.mean(axis=1)))) if x.size else 0.0
    clip_ratio = float(np.mean(np.abs(x) >= 0.999)) if x.size else 0.0
    return AudioQuality(
        peak_dbfs=round(20 * np.log10(peak + eps), 2),
        rms_dbfs=round(20 * np.log10(rms + eps), 2),
        dc_offset=round(dc, 6),
        clipping_ratio=round(clip_ratio, 6),
        clipped=clip_ratio > 0.001,
    )
