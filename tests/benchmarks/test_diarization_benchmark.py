"""The diarization benchmark: input delay (audio moved later, turns moved back), the codec
list and ffmpeg commands of ``--codecs``, and how it reaches the ``annotate`` entry point."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationResult
from callannotate.pipeline.types import AudioBuffer, Turn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `anchors`
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_diarization", BENCHMARKS / "diarization.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_delayed_prepends_silence_on_every_channel() -> None:
    bench = _benchmark()
    samples = np.ones((2, 16000), dtype=np.float32)
    out = bench.delayed(AudioBuffer(samples, 16000), 0.25)
    assert out.samples.shape == (2, 20000)
    assert not out.samples[:, :4000].any() and out.samples[:, 4000:].all()
    assert bench.delayed(AudioBuffer(samples, 16000), 0.0).samples is samples


def test_turns_are_moved_back_and_clipped_at_zero() -> None:
    bench = _benchmark()
    result = DiarizationResult(
        turns=[
            Turn(start=0.1, end=0.2, speaker="A"),  # inside the added silence: dropped
            Turn(start=0.2, end=1.5, speaker="A"),  # starts before 0 once moved: clipped
            Turn(start=2.0, end=3.0, speaker="B"),
        ]
    )
    ann = bench.to_annotation(result, "clip", delay_s=0.25)
    spans = sorted(
        (round(s.start, 3), round(s.end, 3), label)
        for s, _, label in ann.itertracks(yield_label=True)
    )
    assert spans == [(0.0, 1.25, "A"), (1.75, 2.75, "B")]


def _codecs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_codecs", BENCHMARKS / "audio_codecs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


LISTING = """Encoders:
 V..... = Video
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC
 A....D pcm_mulaw            PCM mu-law / G.711 mu-law
 A....D libgsm               libgsm GSM (codec gsm)
 A....D g723_1               G.723.1
 A..... libopus              libopus Opus (codec opus)
 A....D libmp3lame           libmp3lame MP3 (MPEG audio layer 3) (codec mp3)
 S..... srt                  SubRip subtitle
"""


def test_encoder_listing_keeps_audio_encoders_only() -> None:
    codecs = _codecs()
    assert codecs.parse_encoders(LISTING) == {
        "pcm_mulaw",
        "libgsm",
        "g723_1",
        "libopus",
        "libmp3lame",
    }


def test_plan_names_the_stand_in_for_a_missing_amr_encoder() -> None:
    codecs = _codecs()
    chosen, notes = codecs.plan(codecs.parse_encoders(LISTING))
    assert [c.name for c in chosen] == [
        "g711u",
        "gsm",
        "g723_1",
        "opus16",
        "mp3_24",
        "mp3_32",
        "mp3_64",
    ]
    assert len(notes) == 1 and "libopencore_amrnb missing" in notes[0] and "G.723.1" in notes[0]
    everything = {c.encoder for c in codecs.CODECS}
    chosen, notes = codecs.plan(everything)
    assert [c.name for c in chosen] == [c.name for c in codecs.CODECS] and notes == []
    chosen, notes = codecs.plan(everything - {"libopencore_amrnb", "libopus"})
    assert "amrnb" not in [c.name for c in chosen] and "opus16" not in [c.name for c in chosen]
    assert len(notes) == 2 and all("skipped" in n for n in notes)


def test_ffmpeg_command_writes_mono_with_the_codec_arguments(tmp_path: Path) -> None:
    codecs = _codecs()
    gsm = next(c for c in codecs.CODECS if c.name == "gsm")
    cmd = codecs.ffmpeg_command("ffmpeg", tmp_path / "a.wav", tmp_path / "a.gsm", gsm)
    assert cmd[0] == "ffmpeg" and cmd[-1] == str(tmp_path / "a.gsm")
    assert cmd[cmd.index("-i") + 1] == str(tmp_path / "a.wav")
    assert cmd[cmd.index("-ac") + 1] == "1" and cmd[cmd.index("-ar") + 1] == "8000"
    assert cmd[cmd.index("-c:a") + 1] == "libgsm"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_every_planned_codec_encodes_a_file_that_decodes_back(tmp_path: Path) -> None:
    codecs = _codecs()
    ffmpeg = codecs.ffmpeg_binary()
    t = np.arange(8000) / 16000
    source = tmp_path / "tone.wav"
    sf.write(source, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    chosen, _ = codecs.plan(codecs.available_encoders(ffmpeg))
    assert len(chosen) >= 5
    for codec in chosen:
        path = codecs.encode(ffmpeg, source, tmp_path, codec)
        assert path.suffix == codec.suffix
        audio = decode(path)
        assert audio.sample_rate == 16000 and audio.channels == 1
        assert abs(audio.duration - 0.5) < 0.1, codec.name


def test_prepare_delays_the_file_it_hands_to_the_entry_point(tmp_path: Path) -> None:
    bench = _benchmark()
    source = tmp_path / "clip.wav"
    sf.write(source, np.full(16000, 0.5, dtype=np.float32), 16000, subtype="FLOAT")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert bench.prepare(source, scratch, 0.0, None, "ffmpeg") == source
    out = decode(bench.prepare(source, scratch, 0.25, None, "ffmpeg"))
    assert out.samples.shape == (1, 20000)
    assert not out.samples[:, :4000].any() and np.allclose(out.samples[:, 4000:], 0.5)


def test_set_overrides_reach_the_annotate_entry_point_through_a_models_file(
    tmp_path: Path,
) -> None:
    from callannotate.config import Settings
    from callannotate.pipeline.registry import step_config

    bench = _benchmark()
    settings = Settings()
    params = {**step_config(settings, "diarize"), "threshold": 0.5}
    patched = bench.settings_with(settings, params, tmp_path)
    assert patched.models_config == tmp_path / "models.yaml"
    assert step_config(patched, "diarize")["threshold"] == 0.5
    assert step_config(patched, "vad") == step_config(settings, "vad")
