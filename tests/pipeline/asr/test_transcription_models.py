"""Real Whisper models (tiny.en and base from their packages) on the shared evaluation audio."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from callannotate.pipeline.asr.transcription import SpeakerRegion, Transcriber, TranscriptionInput
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.types import Word

pytestmark = pytest.mark.models


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


JFK = _shared_data() / "asr" / "en" / "jfk" / "jfk.flac"
RU = _shared_data() / "asr" / "ru"
needs_jfk = pytest.mark.skipif(
    not JFK.is_file(), reason=f"{JFK} not found (set CALLANNOTATE_SHARED_DATA)"
)
needs_ru = pytest.mark.skipif(
    not (RU / "ru.csv").is_file(), reason=f"{RU} not found (set CALLANNOTATE_SHARED_DATA)"
)
JFK_TEXT = (
    "and so my fellow americans ask not what your country can do for you "
    "ask what you can do for your country"
)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower().replace("ё", "е")).split())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Transcriber:
    proc = Transcriber({"model": "tiny.en"}, cache, threads=2)
    proc.ensure_loaded()
    return proc


@pytest.fixture(scope="module")
def base(cache: Path) -> Transcriber:
    proc = Transcriber({"model": "base"}, cache, threads=2)
    proc.ensure_loaded()
    return proc


@needs_jfk
def test_tiny_en_jfk_words_and_speakers(tiny: Transcriber) -> None:
    audio = decode(JFK).mono()
    regions = [SpeakerRegion(0.0, 5.0, "A"), SpeakerRegion(5.0, 11.5, "B")]
    result = tiny.process(TranscriptionInput(audio=audio, language="auto", regions=regions))
    assert _norm(result.text) == JFK_TEXT
    assert result.language == "en"
    words = result.words
    assert all(0 <= w.start <= w.end <= 11.5 for w in words)
    assert all(0 < w.probability <= 1 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert words[0].speaker == "A" and words[-1].speaker == "B"
    assert {s.speaker for s in result.segments} <= {"A", "B"}


@needs_jfk
def test_tiny_en_jfk_partial_words_match_the_result(tiny: Transcriber) -> None:
    audio = decode(JFK).mono()
    regions = [SpeakerRegion(0.0, 5.0, "A"), SpeakerRegion(5.0, 11.5, "B")]
    batches: list[list[Word]] = []
    result = tiny.process(
        TranscriptionInput(audio=audio, language="en", regions=regions),
        on_words=batches.append,
    )
    assert batches and all(batches)
    partial = [w for batch in batches for w in batch]
    # every word was sent once, with its speaker, before the result came back
    assert partial == result.words
    assert partial[0].speaker == "A" and partial[-1].speaker == "B"


@needs_jfk
def test_base_jfk_detects_english(base: Transcriber) -> None:
    audio = decode(JFK).mono()
    result = base.process(TranscriptionInput(audio=audio, language="auto", channel_speaker="CH0"))
    assert _norm(result.text) == JFK_TEXT
    assert result.language == "en" and result.language_probability > 0.5
    assert {w.speaker for w in result.words} == {"CH0"}
    country = [w for w in result.words if _norm(w.text) == "country"]
    assert len(country) == 2 and country[-1].end > 9.0


@needs_ru
def test_base_russian_wer_bound(base: Transcriber) -> None:
    import jiwer

    with open(RU / "ru.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    audio = decode(RU / row["wav_filename"]).mono()
    result = base.process(TranscriptionInput(audio=audio, language="auto"))
    assert result.language == "ru"
    wer = jiwer.wer(_norm(row["transcript"]), _norm(result.text))
    assert wer <= 0.25, result.text
