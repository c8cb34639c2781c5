"""Decoding and probing of the files call-centre users send (``pipeline/audio/decode.py``).

The fixtures are written at run time (a few kB each) with soundfile and PyAV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audio_encoding import encode_pcm
from callannotate.errors import InvalidAudio
from callannotate.pipeline.audio import decode as audio_io

SR = 16_000


def _tones(channels: int, seconds: float = 0.5) -> np.ndarray:
    """``(frames, channels)``: channel ``c`` carries a tone at amplitude ``0.05 * (c + 1)``."""
    t = np.arange(int(seconds * SR)) / SR
    return np.stack(
        [0.05 * (c + 1) * np.sin(2 * np.pi * (200.0 + 50.0 * c) * t) for c in range(channels)],
        axis=1,
    ).astype(np.float32)


@pytest.mark.parametrize("channels", [8, 12])
def test_a_many_channel_wav_decodes_with_every_channel_in_order(
    tmp_path: Path, channels: int
) -> None:
    """An 8-channel (7.1) WAV crashed the process (PyAV's planar frames of more than 8
    channels): the CLI died with SIGSEGV and a worker with it."""
    import soundfile

    path = tmp_path / f"ch{channels}.wav"
    soundfile.write(path, _tones(channels), SR, subtype="PCM_16")

    assert audio_io.probe(path).channels == channels
    audio = audio_io.decode(path)
    assert audio.channels == channels
    assert audio.sample_rate == SR
    assert abs(audio.frames - SR // 2) <= 32
    peaks = np.max(np.abs(audio.samples), axis=1)
    assert np.allclose(peaks, 0.05 * (np.arange(channels) + 1), atol=0.01)


def _encode(
    path: Path, container: str, codec: str, rate: int, seconds: float, channels: int = 1
) -> Path:
    """A warbling 440 Hz tone encoded with PyAV (``channels`` identical channels)."""
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440.0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    pcm = np.repeat((wave * 32767).astype(np.int16)[:, None], channels, axis=1)
    return encode_pcm(path, container, codec, rate, pcm)


def _scramble(path: Path, start: float, end: float, seed: int = 7) -> Path:
    """Overwrite the bytes from ``start`` to ``end`` (shares of the file) with noise."""
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    damaged = path.with_name("damaged-" + path.name)
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize(
    ("container", "codec", "name"), [("mp3", "libmp3lame", "a.mp3"), ("mp4", "aac", "a.m4a")]
)
def test_a_damaged_stretch_costs_that_stretch_not_the_call(
    tmp_path: Path, container: str, codec: str, name: str
) -> None:
    """600 damaged bytes in the middle of a 10 s MP3 or M4A (one or two packets the decoder
    refuses) made the whole file 'not audio' (422), while ffmpeg decodes it all but them."""
    path = _encode(tmp_path / name, container, codec, SR, 10.0)
    size = path.stat().st_size
    damaged = _scramble(path, 0.5, 0.5 + 600 / size)

    info = audio_io.probe(damaged)
    assert 9.3 < info.duration <= 10.2
    audio = audio_io.decode(damaged)
    assert abs(audio.duration - info.duration) < 0.05


def test_a_file_most_of_whose_packets_fail_is_refused(tmp_path: Path) -> None:
    path = _encode(tmp_path / "a.m4a", "mp4", "aac", SR, 10.0)
    damaged = _scramble(path, 0.1, 0.9)

    with pytest.raises(InvalidAudio, match="does not decode as audio") as probed:
        audio_io.probe(damaged)
    assert str(tmp_path) not in probed.value.detail
    with pytest.raises(InvalidAudio, match="does not decode as audio"):
        audio_io.decode(damaged)


@pytest.mark.parametrize(
    ("container", "codec", "ext"), [("mp3", "libmp3lame", "mp3"), ("adts", "aac", "aac")]
)
def test_files_joined_with_cat_decode_whole_across_the_rate_and_channel_change(
    tmp_path: Path, container: str, codec: str, ext: str
) -> None:
    """``cat mono-16k.mp3 stereo-22k.mp3 > call.mp3`` (a call recorder's parts joined):
    PyAV's resampler refused the first frame of the second part, the file was refused."""
    first = _encode(tmp_path / f"1.{ext}", container, codec, 16_000, 3.0)
    second = _encode(tmp_path / f"2.{ext}", container, codec, 22_050, 4.0, channels=2)
    joined = tmp_path / f"joined.{ext}"
    joined.write_bytes(first.read_bytes() + second.read_bytes())

    info = audio_io.probe(joined)
    assert info.channels == 1
    assert 6.8 < info.duration < 7.3
    audio = audio_io.decode(joined)
    assert audio.channels == 1
    assert audio.sample_rate == SR
    assert abs(audio.duration - info.duration) < 0.05
    assert np.max(np.abs(audio.samples[0, -SR:])) > 0.1  # the second part is there


def test_an_empty_file_is_named_empty(tmp_path: Path) -> None:
    """A 0-byte file was 'the content does not decode as audio: Invalid data found ...'
    (the API said 'empty' on upload, the CLI did not)."""
    path = tmp_path / "call.wav"
    path.touch()
    for read in (audio_io.probe, audio_io.decode):
        with pytest.raises(InvalidAudio, match=r"^the file is empty \(0 bytes\)$"):
            read(path)


def test_a_header_only_wav_is_empty_audio(tmp_path: Path) -> None:
    import wave

    path = tmp_path / "header.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes(b"")
    for read in (audio_io.probe, audio_io.decode):
        with pytest.raises(InvalidAudio, match="empty"):
            read(path)
