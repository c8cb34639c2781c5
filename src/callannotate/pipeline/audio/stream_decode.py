"""Turn the bytes of a live stream into 16 kHz mono float32 samples.

* :class:`PcmDecoder`: raw 16-bit little-endian PCM, mono, 16 kHz (frames may split samples).
* :class:`ContainerDecoder`: a compressed stream in a container (WebM/Ogg with Opus, as
  browsers' ``MediaRecorder`` produce). PyAV demuxes and decodes it in a background thread
  that reads from a pipe, so bytes can be fed as they arrive.

Memory: a decoder holds at most ``max_buffered_s`` of decoded audio (30 s). Compressed audio
expands: one 16 MB message of 6 kbit/s Opus is six hours, 1.4 GB as float32; so the decoding
thread waits while that much decoded audio has not been taken, and ``feed``/``close`` return
it in pieces: call ``feed(b"")`` while :attr:`backlog` is true, and ``close()`` until it
returns no samples.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Protocol

import numpy as np

from callannotate.errors import InvalidAudio
from callannotate.pipeline.types import SAMPLE_RATE, Float32Array

logger = logging.getLogger(__name__)

CONTAINER_FORMATS = {"webm": "matroska", "ogg": "ogg", "matroska": "matroska", "mp4": "mp4"}
MAX_BUFFERED_S = 30.0


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> Float32Array:
        """Add bytes; returns the samples decoded so far (a bounded piece)."""
        ...

    @property
    def backlog(self) -> bool:
        """Whether audio fed already is still to be returned (call ``feed(b"")`` again)."""
        ...

    def close(self) -> Float32Array:
        """End of input; the next piece of what remains, empty once everything was returned."""
        ...

    def release(self) -> None:
        """Stop and free everything (a stream that ended early); idempotent."""
        ...


class PcmDecoder:
    """16-bit little-endian mono PCM at 16 kHz."""

    backlog = False

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

    def release(self) -> None:
        self._carry = b""


class _Cancelled(Exception):
    """The decoder was released while its thread waited."""


class _Pipe:
    """A blocking, read-only file object fed from another thread (no seek: a live stream).

    Shares its owner's condition: ``starved`` (the reader waits for bytes nobody wrote yet)
    tells the owner that everything fed so far went through the decoder.
    """

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._chunks: deque[bytes] = deque()
        self._finished = False
        self.queued = 0  # bytes written and not yet read
        self.starved = False

    def write(self, data: bytes) -> None:
        if data:
            with self._cond:
                if self._finished:
                    return
                self._chunks.append(bytes(data))
                self.queued += len(data)
                self.starved = False
                self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def drop(self) -> None:
        with self._cond:
            self._chunks.clear()
            self.queued = 0
            self._finished = True
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all until the end when negative); blocks until some arrive."""
        with self._cond:
            while not self._finished and (not self._chunks or size < 0):
                self.starved = size < 0 or not self._chunks
                self._cond.notify_all()
                self._cond.wait()
            self.starved = False
            if size < 0:
                out = b"".join(self._chunks)
                self._chunks.clear()
            else:
                parts: list[bytes] = []
                want = size
                while self._chunks and want > 0:
                    chunk = self._chunks.popleft()
                    if len(chunk) > want:
                        self._chunks.appendleft(chunk[want:])
                        chunk = chunk[:want]
                    parts.append(chunk)
                    want -= len(chunk)
                out = b"".join(parts)
            self.queued -= len(out)
            return out


class ContainerDecoder:
    """WebM/Ogg (Opus, Vorbis, ...) bytes to 16 kHz mono float32, decoded as they arrive."""

    def __init__(self, fmt: str = "webm", max_buffered_s: float = MAX_BUFFERED_S) -> None:
        if fmt not in CONTAINER_FORMATS:
            raise InvalidAudio(f"unsupported stream format {fmt!r}; use pcm_s16le, webm or ogg")
        self._format = CONTAINER_FORMATS[fmt]
        self._cond = threading.Condition()
        self._pipe = _Pipe(self._cond)
        self._out: deque[Float32Array] = deque()
        self._buffered = 0  # samples in _out
        self._max_buffered = max(1, int(max_buffered_s * SAMPLE_RATE))
        self._done = False  # the decoding thread ended
        self._cancelled = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="stream-decoder", daemon=True)
        self._thread.start()

    def _put(self, samples: Float32Array) -> None:
        with self._cond:
            while self._buffered >= self._max_buffered and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise _Cancelled
            self._out.append(samples)
            self._buffered += samples.shape[0]
            self._cond.notify_all()

    def _run(self) -> None:
        import av

        try:
            container: Any = av.open(self._pipe, mode="r", format=self._format)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            with container:
                for frame in container.decode(audio=0):
                    for out in resampler.resample(frame):
                        self._put(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
                for out in resampler.resample(None):
                    self._put(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
        except _Cancelled:
            pass
        except Exception as exc:
            if not self._cancelled:
                self.error = f"cannot decode the {self._format} stream: {exc}"
                logger.info("stream decoding failed: %s", type(exc).__name__)
        finally:
            self._pipe.drop()  # nothing more will be read: free what was fed
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _take(self) -> Float32Array:
        """Everything buffered (caller holds the condition)."""
        parts = list(self._out)
        self._out.clear()
        self._buffered = 0
        self._cond.notify_all()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _result(self, samples: Float32Array) -> Float32Array:
        if self.error and not samples.size:
            raise InvalidAudio(self.error)
        return samples

    @property
    def backlog(self) -> bool:
        with self._cond:
            return self._buffered > 0 or (not self._done and self._pipe.queued > 0)

    def feed(self, data: bytes) -> Float32Array:
        """Queue ``data``; returns what is decoded once the decoder has taken all bytes fed,
        or ``max_buffered_s`` of it. Blocks while the decoder works: call from a worker thread.
        """
        self._pipe.write(data)
        with self._cond:
            while not (self._done or self._buffered >= self._max_buffered or self._pipe.starved):
                self._cond.wait()
            samples = self._take()
        return self._result(samples)

    def close(self, timeout: float = 10.0) -> Float32Array:
        """End of stream: the next remaining samples (at most ``max_buffered_s``); empty once
        all were returned (or when the decoder stays stuck for ``timeout`` seconds)."""
        self._pipe.finish()
        with self._cond:
            self._cond.wait_for(lambda: self._done or self._buffered >= self._max_buffered, timeout)
            samples = self._take()
        return self._result(samples)

    def release(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        self._pipe.drop()


def make_decoder(fmt: str) -> StreamDecoder:
    if fmt in ("pcm_s16le", "pcm", "s16le"):
        return PcmDecoder()
    return ContainerDecoder(fmt)
