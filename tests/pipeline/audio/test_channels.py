"""Channel layout detection (`pipeline.audio.channels`) and what `annotate` does with it.

Unit tests on synthetic signals, then real recordings: the shared JFK clip (44.1 kHz
dual-mono) and an ``ffmpeg -ac 2`` copy of the call sample through ``callannotate annotate``
must give each word once (issue 15, item 14), and a real two-party stereo file stays
per-channel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from callannotate.pipeline.audio.channels import (
    ChannelLayout,
    as_mono,
    channel_layout,
    channel_stats,
)
from callannotate.pipeline.types import AudioBuffer

SR = 16_000
SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
LIBRIVOX = SHARED / "asr" / "en" / "librivox"
CALL = SHARED / "diarization" / "callsample"

Signal = npt.NDArray[np.float32]


def talker(seconds: float, seed: int, on: list[tuple[float, float]]) -> Signal:
    """Speech-like noise (a 4 Hz syllable envelope) during the ``on`` spans, silence else."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    x = rng.standard_normal(n) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed)) * 0.1
    gate = np.zeros(n)
    for a, b in on:
        gate[round(a * SR) : round(b * SR)] = 1.0
    return (x * gate + 1e-4 * rng.standard_normal(n)).astype(np.float32)


def stereo(left: Signal, right: Signal) -> AudioBuffer:
    return AudioBuffer(samples=np.stack([left, right]).astype(np.float32), sample_rate=SR)


A_TURNS = [(0.0, 2.0), (4.0, 6.0), (8.0, 9.0)]
B_TURNS = [(2.2, 4.0), (5.5, 8.0)]


def test_mono_and_more_than_two_channels() -> None:
    x = talker(3.0, 1, [(0, 3)])
    assert channel_layout(AudioBuffer(samples=x[None, :], sample_rate=SR)) == ChannelLayout.MONO
    three = AudioBuffer(samples=np.stack([x, x, x]), sample_rate=SR)
    assert channel_layout(three) == ChannelLayout.MULTI


def test_the_same_signal_twice_at_any_gain_is_dual_mono() -> None:
    a = talker(10.0, 1, A_TURNS)
    assert channel_layout(stereo(a, a)) == ChannelLayout.DUAL_MONO
    assert channel_layout(stereo(a, 0.3 * a)) == ChannelLayout.DUAL_MONO
    # a lossy copy: a little independent noise on one side
    noisy = a + 0.005 * np.random.default_rng(9).standard_normal(a.size).astype(np.float32)
    assert channel_layout(stereo(a, noisy)) == ChannelLayout.DUAL_MONO


def test_an_attenuated_delayed_echo_is_dual_mono() -> None:
    a = talker(10.0, 1, A_TURNS)
    delay = round(0.05 * SR)
    echo = 10 ** (-25 / 20) * np.concatenate([np.zeros(delay, np.float32), a[:-delay]])
    stats = channel_stats(a, echo, SR)
    assert abs(stats.correlation) < 0.2  # the delay hides it from the zero-lag correlation
    assert stats.dominance > 0.95 and stats.envelope_correlation > 0.8
    assert channel_layout(stereo(a, echo)) == ChannelLayout.DUAL_MONO


def test_an_echo_copy_is_reduced_to_its_source_not_mixed_with_it() -> None:
    # The mean of a source and its delayed echo repeats every syllable (Whisper wrote "Hi,
    # hello, hello, hello" for the call sample with a 120 ms echo at 0.4 on the other side).
    a = talker(10.0, 1, A_TURNS)
    delay = round(0.12 * SR)
    echo = (0.4 * np.concatenate([np.zeros(delay, np.float32), a[:-delay]])).astype(np.float32)
    for buffer in (stereo(a, echo), stereo(echo, a)):
        layout = channel_layout(buffer)
        assert layout == ChannelLayout.DUAL_MONO
        mono = as_mono(buffer, layout)
        assert mono.channels == 1 and np.array_equal(mono.samples[0], a)


def test_a_silent_channel() -> None:
    a = talker(10.0, 1, A_TURNS)
    hiss = talker(10.0, 2, [])  # only the -80 dB noise floor
    assert channel_layout(stereo(hiss, a)) == ChannelLayout.ONE_SILENT
    mixed = as_mono(stereo(hiss, a), ChannelLayout.ONE_SILENT)
    assert mixed.channels == 1 and np.array_equal(mixed.samples[0], a)  # the live channel
    assert np.allclose(as_mono(stereo(a, a), ChannelLayout.DUAL_MONO).samples[0], a)


def test_two_parties_taking_turns_with_crosstalk_stay_two_party() -> None:
    a = talker(10.0, 1, A_TURNS)
    b = talker(10.0, 2, B_TURNS)
    assert channel_layout(stereo(a, b)) == ChannelLayout.TWO_PARTY
    leak = 10 ** (-20 / 20)
    assert channel_layout(stereo(a + leak * b, b + leak * a)) == ChannelLayout.TWO_PARTY


def test_silence_on_both_channels_is_not_an_error() -> None:
    z = np.zeros(SR, dtype=np.float32)
    assert channel_layout(stereo(z, z)) in set(ChannelLayout)
    short = np.zeros(10, dtype=np.float32)
    assert channel_layout(stereo(short, short)) in set(ChannelLayout)


# ----------------------------------------------------------------------------- real audio


def _two_party_call() -> AudioBuffer:
    """A LibriVox reader on the left, JFK on the right, overlapping twice, each channel
    leaking the other 30 dB down (as tests/pipeline/diarization builds it)."""
    from callannotate.pipeline.audio.decode import decode

    reader = [
        decode(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{i}.wav").mono()
        for i in ("0870", "0890", "0930")
    ]
    channels = np.zeros((2, 30 * SR), dtype=np.float32)
    placed = [(0, x, start) for x, start in zip(reader, (0.5, 16.0, 24.0), strict=True)]
    placed.append((1, decode(JFK).mono(), 7.0))
    for channel, wave, start in placed:
        first = round(start * SR)
        channels[channel, first : first + len(wave)] += wave
    return AudioBuffer(samples=channels + 10 ** (-30 / 20) * channels[::-1], sample_rate=SR)


needs_voices = pytest.mark.skipif(
    not (LIBRIVOX.is_dir() and JFK.is_file()),
    reason=f"shared recordings not found under {SHARED} (set CALLANNOTATE_SHARED_DATA)",
)


@needs_voices
def test_real_recordings_layouts() -> None:
    from callannotate.pipeline.audio.decode import decode

    assert channel_layout(decode(JFK)) == ChannelLayout.DUAL_MONO
    assert channel_layout(_two_party_call()) == ChannelLayout.TWO_PARTY


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _cli_words(path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[str]]:  # type: ignore[type-arg]
    """``callannotate annotate`` (the CLI's own entry point) with VAD + transcription."""
    from callannotate.cli import main

    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(out / "data"))
    args = ["annotate", str(path), "--out", str(out), "--format", "json", "--quiet"]
    code = main([*args, "--steps", "vad,transcribe", "--language", "en"])
    assert code == 0
    annotation = json.loads((out / f"{path.stem}.json").read_text())
    return annotation, [w for u in annotation["utterances"] for w in _words(u["text"])]


@pytest.mark.models
@needs_voices
def test_jfk_dual_mono_through_the_cli_gives_each_word_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jiwer

    annotation, words = _cli_words(JFK, tmp_path, monkeypatch)
    assert annotation["recording"]["channels"] == 2
    assert annotation["recording"]["channel_mode"] == "mix (dual-mono)"
    reference = _words(JFK.with_suffix(".txt").read_text())
    assert len(reference) == 22
    # before: both channels transcribed, 44 words and a WER of 100 %
    assert jiwer.wer(" ".join(reference), " ".join(words)) < 0.1


@pytest.mark.models
@pytest.mark.skipif(not (CALL / "sample.wav").is_file(), reason=f"{CALL} not found")
def test_an_ffmpeg_stereo_copy_of_the_call_gives_each_word_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "call-stereo.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(CALL / "sample.wav"), "-ac", "2", str(copy)],
        check=True,
    )
    annotation, words = _cli_words(copy, tmp_path / "out", monkeypatch)
    assert annotation["recording"]["channels"] == 2
    assert annotation["recording"]["channel_mode"] == "mix (dual-mono)"
    reference = [
        w
        for line in (CALL / "sample.stm").read_text().splitlines()
        if not line.startswith(";;") and len(line.split(maxsplit=5)) == 6
        for w in _words(line.split(maxsplit=5)[5])
    ]
    # before: 148 words, every word twice
    assert 0.8 * len(reference) <= len(words) <= 1.2 * len(reference)
