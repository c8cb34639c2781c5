"""Test audio in any container and codec PyAV writes (shared by the decode, upload and intake
tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


def encode_pcm(
    path: Path,
    container: str,
    codec: str,
    rate: int,
    pcm: npt.NDArray[np.int16],
    chunk: int = 1024,
) -> Path:
    """Write ``pcm`` (16-bit, ``(frames, channels)``; 1 or 2 channels) to ``path`` as
    ``codec`` in ``container``, ``chunk`` frames per encoder call."""
    import av

    layout = "mono" if pcm.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for i in range(0, len(pcm), chunk):
            packed = np.ascontiguousarray(pcm[i : i + chunk].reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
