"""Turn the bytes of a live stream into 16 kHz mono float32 samples.

* :class:`PcmDecoder`: raw 16-bit little-endian PCM, mono, 16 kHz (frames may split samples).
* :class:`ContainerDecoder`: a compressed stream in a container (WebM/Ogg with Opus, as
  browsers' ``MediaRecorder`` produce). PyAV demuxes and decodes it in a background thread
  that reads from an in-memory pipe, so bytes can be fed as they arrive.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Protocol

import numpy as np

from callannotate.errors import InvalidAudio
from callannotate.pipeline.types import Float32Array

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CONTAINER_FORMATS = {"webm": "matroska", "ogg": "ogg", "matroska": "matroska", "mp4": "mp4"}


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> Float32Array: ...

    def close(self) -> Float32Array: ...


class PcmDecoder:
    """16-bit little-endian mono PCM at 16 kHz."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> Float32Array:
        data = self._carry + data
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        pcm = np.frombuffer(data[:usable], dtype="<i2")
        return (pcm.astype(np.float32) / 32768.0).astype(np.float32)

    def close(self) -> Float32Array:
        self._carry = b""
        return np.zeros(0, dtype=np.float32)


class _Pipe:
    """A blocking, read-only file object fed from another thread (no seek: a live stream)."""

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._buf = b""
        self._eof = False

    def write(self, data: bytes) -> None:
        if data:
            self._chunks.put(bytes(data))

    def finish(self) -> None:
        self._chunks.put(None)

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buf) < size):
            item = self._chunks.get()
            if item is None:
                self._eof = True
                break
            self._buf += item
            if size >= 0 and self._buf:
                break  # return what we have; PyAV asks again
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


class ContainerDecoder:
    """WebM/Ogg (Opus, Vorbis, ...) bytes to 16 kHz mono float32, decoded as they arrive."""

    def __init__(self, fmt: str = "webm") -> None:
        if fmt not in CONTAINER_FORMATS:
            raise InvalidAudio(f"unsupported stream format {fmt!r}; use pcm_s16le, webm or ogg")
        self._format = CONTAINER_FORMATS[fmt]
        self._pipe = _Pipe()
        self._out: queue.Queue[Float32Array] = queue.Queue()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="stream-decoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import av

        try:
            container: Any = av.open(self._pipe, mode="r", format=self._format)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            with container:
                for frame in container.decode(audio=0):
                    for out in resampler.resample(frame):
                        self._out.put(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
                for out in resampler.resample(None):
                    self._out.put(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
        except Exception as exc:
            self.error = f"cannot decode the {self._format} stream: {exc}"
            logger.info("stream decoding failed: %s", type(exc).__name__)
            while self._pipe.read(1 << 16):  # drain so writers never block
                pass

    def _drain(self) -> Float32Array:
        parts: list[Float32Array] = []
        while True:
            try:
                parts.append(self._out.get_nowait())
            except queue.Empty:
                break
        if self.error and not parts:
            raise InvalidAudio(self.error)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def feed(self, data: bytes) -> Float32Array:
        """Queue ``data``; returns the samples decoded so far (may lag by a frame or two)."""
        self._pipe.write(data)
        return self._drain()

    def close(self, timeout: float = 10.0) -> Float32Array:
        """End of stream: wait for the decoder and return the remaining samples."""
        self._pipe.finish()
        self._thread.join(timeout)
        return self._drain()


def make_decoder(fmt: str) -> StreamDecoder:
    if fmt in ("pcm_s16le", "pcm", "s16le"):
        return PcmDecoder()
    return ContainerDecoder(fmt)
