"""Audio decoding and probing with PyAV (ffmpeg's libraries).

``probe`` checks that bytes really are audio (not the file extension) and ``decode`` turns
anything ffmpeg reads into float32 samples, keeping the original channels.

Like the ``ffmpeg`` command, both skip the packets the decoder refuses (a damaged stretch of a
call costs that stretch, not the call) and follow a stream whose sample rate or channels change
part-way (MP3 files joined with ``cat``); a file most of whose packets fail is refused.

Files encrypted at rest (see :mod:`callannotate.security.atrest`) are decrypted on the fly:
ffmpeg reads them through a decrypting, seekable Python stream (PyAV's file-object input), so
no plaintext copy of the audio is ever written to disk. ``settings`` names the master keys.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from callannotate.errors import InvalidAudio
from callannotate.pipeline.types import SAMPLE_RATE, AudioBuffer, AudioQuality

if TYPE_CHECKING:
    from callannotate.config import Settings
    from callannotate.security.atrest import Vault

logger = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = SAMPLE_RATE  # the name the pipeline entry point uses
MAX_BAD_PACKET_SHARE = 0.5
"""A file more than this share of whose audio packets fail to decode is refused."""


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
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:  # ffmpeg would say "Invalid data found"
                raise InvalidAudio("the file is empty (0 bytes)")
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
    and zero-length audio. Packets the decoder refuses are skipped (see the module docstring).
    """
    import av

    try:
        with _source(path, settings, vault) as source, av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file holds no audio stream")
            stream = container.streams.audio[0]
            frames = 0
            at_rate: dict[int, int] = {}  # samples per rate: the rate may change part-way
            rate = int(stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            decoded = _Frames(container, stream)
            for frame in decoded:
                frames += int(frame.samples)
                if frame.sample_rate:
                    at_rate[frame.sample_rate] = at_rate.get(frame.sample_rate, 0) + frame.samples
                rate = rate or int(frame.sample_rate)
                channels = channels or len(frame.layout.channels)
            decoded.check(path)
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
    return ProbeResult(fmt, codec, rate, channels, sum(n / r for r, n in at_rate.items()))


class _Frames:
    """The decoded frames of ``stream``, skipping packets the decoder refuses (the ``ffmpeg``
    command does the same: one damaged packet must not cost the whole call)."""

    def __init__(self, container: Any, stream: Any) -> None:
        self.container = container
        self.stream = stream
        self.packets = 0
        self.bad = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[Any]:
        import av

        for packet in self.container.demux(self.stream):
            self.packets += 1
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                self.bad += 1
                self.error = self.error or exc
                continue
            yield from frames

    def check(self, path: Path) -> None:
        """``InvalidAudio`` when more than :data:`MAX_BAD_PACKET_SHARE` of the packets failed
        (or all of them); otherwise the skipped packets are logged."""
        if not self.bad or self.error is None:
            return
        if self.bad > MAX_BAD_PACKET_SHARE * self.packets:
            raise InvalidAudio(
                f"the content does not decode as audio: {_reason(self.error, path)}"
            ) from self.error
        logger.warning(
            "skipped %d of %d audio packets that do not decode (%s)",
            self.bad,
            self.packets,
            _reason(self.error, path),
        )


def _planar(frame: Any) -> np.ndarray:
    """A packed audio frame's samples as ``(channels, frames)``."""
    channels = len(frame.layout.channels)
    return np.asarray(frame.to_ndarray()).reshape(-1, channels).T


def _resampled(
    frames: Iterable[Any], layout: str | None, rate: int | None
) -> Iterator[tuple[np.ndarray, int]]:
    """``((channels, frames) float32 block, its rate)`` of every decoded frame, in ``layout``
    at ``rate`` (``None``: those of the first frame, kept for the whole file).

    Packed float (``flt``): PyAV's planar frames of more than 8 channels read past the frame's
    8 data pointers (an 8-channel WAV crashed the process). A new resampler is made when the
    input's format, layout or rate changes part-way (PyAV's resampler refuses such a frame).
    """
    import av

    resampler: Any = None
    source: tuple[str, str, int] | None = None
    out_layout: Any = layout
    for frame in frames:
        key = (str(frame.format.name), str(frame.layout.name), int(frame.sample_rate))
        if resampler is None or key != source:
            if resampler is not None:
                for out in resampler.resample(None):
                    yield _planar(out), int(out.sample_rate)
            out_layout = out_layout or frame.layout
            rate = rate or int(frame.sample_rate)
            resampler = av.AudioResampler(format="flt", layout=out_layout, rate=rate)
            source = key
        for out in resampler.resample(frame):
            yield _planar(out), int(out.sample_rate)
    if resampler is not None:
        for out in resampler.resample(None):
            yield _planar(out), int(out.sample_rate)


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
            channels = int(stream.codec_context.channels or 0)
            layout = "mono" if channels == 1 else ("stereo" if channels == 2 else None)
            rate = sample_rate or int(stream.codec_context.sample_rate or 0) or None
            decoded = _Frames(container, stream)
            out_rate = 0
            for block, block_rate in _resampled(decoded, layout, rate):
                chunks.append(block)
                out_rate = block_rate
            decoded.check(path)
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
