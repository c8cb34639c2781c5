"""Live-stream decoders: raw PCM and WebM/Opus, decoded piece by piece, holding a bounded
amount of decoded audio (issue 15.8).

Compressed audio expands ~100x into float32: one large message of low-bitrate Opus used to
be decoded whole into memory. The container decoder now waits while ``max_buffered_s`` of
decoded audio is not taken, and hands it out in pieces.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest

from callannotate.pipeline.audio.stream_decode import ContainerDecoder, PcmDecoder

SR = 16000


def opus_webm(seconds: float, bitrate: int | None = 8000) -> bytes:
    """A 440 Hz tone as WebM/Opus, by default at a low bitrate (what a phone-quality stream
    sends; ``None``: libopus's own bitrate)."""
    rate = 48000
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        if bitrate is not None:
            stream.bit_rate = bitrate
        for i in range(0, tone.shape[0], 960):
            chunk = np.zeros(960, dtype=np.float32)
            part = tone[i : i + 960]
            chunk[: part.shape[0]] = part
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def test_a_long_compressed_message_comes_out_in_bounded_pieces() -> None:
    data = opus_webm(60.0)
    decoder = ContainerDecoder("webm", max_buffered_s=5.0)
    pieces = [decoder.feed(data)]  # one message holding a minute
    while decoder.backlog:
        pieces.append(decoder.feed(b""))
    while (rest := decoder.close()).size:
        pieces.append(rest)
    sizes = [p.shape[0] for p in pieces]
    assert max(sizes) <= 5.0 * SR + 0.1 * SR  # the limit plus at most one frame
    assert abs(sum(sizes) - 60 * SR) <= 0.05 * SR  # all of it, in order
    assert len(pieces) >= 12
    assert decoder.error is None


def test_release_stops_a_decoder_that_waits_for_its_output_to_be_taken() -> None:
    decoder = ContainerDecoder("webm", max_buffered_s=1.0)
    piece = decoder.feed(opus_webm(20.0))
    assert 0 < piece.shape[0] <= 1.1 * SR
    decoder.release()  # the client went away: nothing more is taken
    deadline = time.monotonic() + 10
    while decoder._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not decoder._thread.is_alive()
    assert not decoder.backlog


def test_pcm_decoder_returns_what_it_was_fed() -> None:
    decoder = PcmDecoder()
    out = decoder.feed(np.zeros(16000, dtype="<i2").tobytes())
    assert out.shape[0] == 16000 and not decoder.backlog
    assert decoder.close().size == 0


def test_pcm_decoder_handles_split_samples() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    dec = PcmDecoder()
    out = np.concatenate([dec.feed(pcm[:3]), dec.feed(pcm[3:])])
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_webm_opus_stream_decodes_incrementally() -> None:
    data = opus_webm(2.0, bitrate=None)
    dec = ContainerDecoder("webm")
    parts = [dec.feed(data[i : i + 1000]) for i in range(0, len(data), 1000)]
    parts.append(dec.close())
    samples = np.concatenate(parts)
    assert dec.error is None
    assert samples.shape[0] == pytest.approx(2 * SR, abs=0.05 * SR)
    assert 0.15 < float(np.sqrt(np.mean(samples[SR // 2 : SR] ** 2))) < 0.25


def test_garbage_container_reports_error() -> None:
    from callannotate.errors import InvalidAudio

    dec = ContainerDecoder("webm")
    dec.feed(b"this is not webm" * 100)
    with pytest.raises(InvalidAudio):
        dec.close()
