"""Real CAM++ on FSDD: enroll two speakers, recognise a third take; the CLI end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from voices_testing import FSDD, needs_fsdd

from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.speakers.embedding import SpeakerEmbedder
from callannotate.voices import cli
from callannotate.voices.service import RecognitionParams, VoiceService, campp_embeddings
from callannotate.voices.store import VoiceStore

pytestmark = [pytest.mark.models, needs_fsdd]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> SpeakerEmbedder:
    emb = SpeakerEmbedder({}, tmp_path_factory.mktemp("models"))
    emb.ensure_loaded()
    return emb


def test_enroll_two_speakers_and_identify_a_third_take(
    tmp_path: Path, embedder: SpeakerEmbedder
) -> None:
    service = VoiceService(VoiceStore(tmp_path), embedder, RecognitionParams())
    voices = {}
    for speaker in ("jackson", "nicolas"):
        files = [(FSDD / f"{d}_{speaker}_0.wav", f"{d}.wav") for d in range(5)]
        voices[speaker] = service.enroll(speaker, service.samples_from_files(files))
    for speaker, other in (("jackson", "nicolas"), ("nicolas", "jackson")):
        # Three further takes of unseen digits, heard as one stretch of speech.
        waves = [decode(FSDD / f"{d}_{speaker}_30.wav").mono() for d in (6, 7, 8)]
        result = service.identify_wave(np.concatenate(waves))
        assert [c.name for c in result.candidates] == [speaker, other]
        assert result.candidates[0].score > result.candidates[1].score + 0.1
        emb = campp_embeddings(service.embedder, [np.concatenate(waves)], service.params)[0]
        lenient = VoiceService(service.store, embedder, RecognitionParams(threshold=0.3))
        match = lenient.identify({"S0": emb})["S0"]
        assert match.accepted and match.voice_id == voices[speaker].id, (speaker, match)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callannotate")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_enroll_list_identify(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    embedder: SpeakerEmbedder,
) -> None:
    monkeypatch.setenv("CALLANNOTATE_MODEL_CACHE_DIR", str(embedder.cache_dir))
    data = str(tmp_path / "data")
    takes = [str(FSDD / f"{d}_george_0.wav") for d in range(5)]
    assert run_cli(["voices", "--data-dir", data, "enroll", "George", *takes]) == 0
    assert "enrolled George" in capsys.readouterr().out
    assert run_cli(["voices", "--data-dir", data, "list"]) == 0
    assert "George  samples=5" in capsys.readouterr().out
    probe = str(FSDD / "9_george_40.wav")
    code = run_cli(["voices", "--data-dir", data, "identify", probe, "--json"])
    out = capsys.readouterr().out
    assert code in (0, 1) and '"name": "George"' in out
    assert Settings(data_dir=Path(data)).voices_dir.is_dir()
    assert run_cli(["voices", "--data-dir", data, "enroll", "X", str(tmp_path / "nope.wav")]) == 2


def test_identifier_on_a_synthetic_call(tmp_path: Path, embedder: SpeakerEmbedder) -> None:
    """The pipeline's recognition step on a two-speaker "call" made of FSDD takes."""
    from callannotate.pipeline.registry import models_settings
    from callannotate.pipeline.types import AudioBuffer, Speaker, Turn
    from callannotate.voices.service import Identifier

    section = models_settings(Settings()).recognition
    assert section is not None
    lenient = {"threshold": 0.3, "fused_threshold": 0.5}  # two voices: plain cosine
    ident = Identifier(section.model_copy(update=lenient), tmp_path / "models")
    service = ident.voice_service(tmp_path / "voices", embedder)
    for speaker in ("jackson", "george"):
        files = [(FSDD / f"{d}_{speaker}_0.wav", f"{d}.wav") for d in range(5)]
        service.enroll(speaker.title(), service.samples_from_files(files))

    pieces, turns, t = [], [], 0.0
    for speaker, label in (("george", "S0"), ("jackson", "S1"), ("nicolas", "S2")):
        for d in range(5, 10):
            w = decode(FSDD / f"{d}_{speaker}_40.wav").mono()
            pieces.append(w)
            turns.append(Turn(start=t, end=t + w.size / 16000, speaker=label))
            t += w.size / 16000
    buffer = AudioBuffer(np.concatenate(pieces)[None, :], 16000)
    speakers = [Speaker(label=s) for s in ("S0", "S1", "S2")]
    matches = ident.identify_speakers(
        buffer, turns, speakers, voices_dir=tmp_path / "voices", embedder=embedder
    )
    assert matches["S0"].accepted and matches["S0"].name == "George"
    assert matches["S1"].accepted and matches["S1"].name == "Jackson"
    assert matches["S2"].score < max(matches["S0"].score, matches["S1"].score)
