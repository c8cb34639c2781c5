"""Exports of annotations whose names and text a user or a CardDAV server controls: contact
and voice names with line breaks, control characters, timing arrows, bidi overrides and
formulas must not break the file formats nor run in a spreadsheet or a page."""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callannotate.pipeline.types import (
    Annotation,
    ContactRef,
    ExpectedContact,
    RecordingInfo,
    Speaker,
    Turn,
    Utterance,
    VoiceMatch,
)
from callannotate.reports import export
from callannotate.reports.timeline import MAX_NAME_CHARS, speaker_names

FAKE_CUE = "Ann\n\n99\n00:00:00,000 --> 00:59:00,000\nI owe you 1000 roubles"
HOSTILE_NAMES = [
    FAKE_CUE,
    "Bob\r\rEve",
    "Nul\x00\x07\x1b[31mEsc",
    "Line\u2028Sep\u2029Par\x85Nel",
    "Bidi \u202eevil\u202c \u2066iso\u2069",
]


def _named(annotation: Annotation, names: list[str]) -> Annotation:
    """``annotation`` with speakers named ``names`` (the first by a contact, the others by
    accepted voices) speaking one utterance each, the last one without a speaker."""
    hostile = annotation.model_copy(deep=True)
    utterances = hostile.utterances[: len(names) + 1]
    speakers = []
    for i, (name, u) in enumerate(zip(names, utterances, strict=False)):
        u.speaker = f"SPK {i}"
        speaker = Speaker(label=u.speaker)
        if i == 0:
            speaker.contact = ContactRef(id="c" * 32, name=name)
        else:
            speaker.voice = VoiceMatch(name=name, score=0.9, threshold=0.5, accepted=True)
        speakers.append(speaker)
    utterances[0].text = "text --> and\n\nmore\r\nlines\x00 end"
    utterances[-1].speaker = None
    utterances[-1].text = "00:00:01,000 --> 00:00:02,000"
    hostile.speakers = speakers
    hostile.utterances = utterances
    hostile.turns = hostile.exclusive_turns = []
    return hostile


def _bad_chars(line: str) -> list[str]:
    return [
        ch
        for ch in line
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or "\u202a" <= ch <= "\u202e"
    ]


def test_srt_cues_stay_one_line_whatever_the_names(ru_annotation: Annotation) -> None:
    """A name with blank lines and a timing line of its own, CR, NUL, line separators and
    bidi overrides; text with ``-->`` and a whole timing line: one 3-line block per cue."""
    hostile = _named(ru_annotation, HOSTILE_NAMES)
    srt = export(hostile, "srt").decode("utf-8")
    blocks = srt.rstrip("\n").split("\n\n")
    assert len(blocks) == len(hostile.utterances)
    for n, block in enumerate(blocks, start=1):
        index, timing, text = block.split("\n")
        assert index == str(n)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", timing)
        assert "-->" not in text and not _bad_chars(text), text
    assert blocks[0].split("\n")[2] == (
        "Ann 99 00:00:00,000 -> 00:59:00,000 I owe you 1000 roubles: text -> and more lines end"
    )
    assert blocks[1].split("\n")[2].startswith("Bob Eve: ")
    assert blocks[-1].split("\n")[2] == "00:00:01,000 -> 00:00:02,000"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing")
def test_ffmpeg_reads_as_many_srt_and_vtt_cues_as_utterances(
    ru_annotation: Annotation, tmp_path: Path
) -> None:
    hostile = _named(ru_annotation, HOSTILE_NAMES)
    for fmt in ("srt", "vtt"):
        source = tmp_path / f"in.{fmt}"
        source.write_bytes(export(hostile, fmt))
        out = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(source), "-f", "srt", "-"],
            check=True,
            capture_output=True,
        ).stdout.decode("utf-8")
        timings = re.findall(r"^\d\d:\d\d:\d\d,\d{3} --> ", out, flags=re.M)
        assert len(timings) == len(hostile.utterances), (fmt, out)


def test_vtt_voices_stay_on_the_cue_line(ru_annotation: Annotation) -> None:
    hostile = _named(ru_annotation, HOSTILE_NAMES)
    vtt = export(hostile, "vtt").decode("utf-8")
    blocks = vtt.rstrip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT"
    assert len(blocks) == len(hostile.utterances) + 1
    for block in blocks[1:]:
        timing, text = block.split("\n")
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", timing)
        assert "-->" not in text and not _bad_chars(text), text
    assert blocks[2].split("\n")[1].startswith("<v Bob Eve>")


def test_rttm_lines_have_ten_fields_whatever_the_labels() -> None:
    """RTTM is space-separated: labels with spaces, NUL, line separators or nothing at all,
    and a turn that ends before it starts, still give ten fields and a duration >= 0."""
    labels = ["SPEAKER 00", "", "a\x00b", "x\u2028\ny", "\t"]
    annotation = Annotation(
        recording=RecordingInfo(filename="my call.wav", duration=9.0, sample_rate=8000, channels=1),
        turns=[Turn(start=i, end=i + 0.5, speaker=label) for i, label in enumerate(labels)]
        + [Turn(start=7.0, end=6.0, speaker="S")],  # ends before it starts
    )
    lines = export(annotation, "rttm").decode("utf-8").split("\n")
    assert lines[-1] == ""
    fields = [line.split(" ") for line in lines[:-1]]
    assert len(fields) == len(labels) + 1
    for parts in fields:
        assert len(parts) == 10 and all(parts), parts
        assert float(parts[4]) >= 0
    assert [p[7] for p in fields] == ["SPEAKER_00", "unknown", "a_b", "x_y", "_", "S"]
    assert fields[0][1] == "my_call"


def test_csv_formula_after_a_list_separator_is_neutralised(ru_annotation: Annotation) -> None:
    """Excel in a Russian locale splits a CSV on ``;`` (and a line end always starts a row):
    a name ``x;=cmd|...;`` would put the formula alone in a cell there."""
    hostile = ru_annotation.model_copy(deep=True)
    label = hostile.utterances[0].speaker
    for speaker in hostile.speakers:
        if speaker.label == label:
            speaker.voice = VoiceMatch(
                name="Ivan;=cmd|' /C calc'!A0;", score=0.9, threshold=0.5, accepted=True
            )
    hostile.utterances[0].text = "ok\n=1+1\r\n@SUM(A1)\t+2;-3"
    hostile.words[0].text = "a;@b"
    for fmt in ("csv", "words.csv"):
        raw = export(hostile, fmt).decode("utf-8-sig")
        for segment in re.split(r"[;\t\r\n]", raw):
            assert not segment.lstrip('"').startswith(("=", "+", "-", "@")), (fmt, segment)
    text = export(hostile, "csv").decode("utf-8-sig")
    assert "Ivan;'=cmd|' /C calc'!A0;" in text
    assert "ok\n'=1+1\r\n'@SUM(A1)\t'+2;'-3" in text


def test_html_page_escapes_names_title_and_language(ru_annotation: Annotation) -> None:
    """Names, the file name (the page title) and the language land in text or quoted
    attributes only, escaped: no tag, attribute or script of theirs reaches the page."""
    hostile = ru_annotation.model_copy(deep=True)
    evil = "</script><img src=x onerror=alert(1)>\"' style=x onclick=alert(2) javascript:"
    hostile.speakers[0].contact = ContactRef(id="c" * 32, name=evil)
    hostile.speakers[1].voice = VoiceMatch(name=evil, score=0.9, threshold=0.5, accepted=True)
    hostile.recording.filename = evil + ".wav"
    hostile.recording.languages = ['ru" onload="alert(3)']
    page = export(hostile, "html").decode("utf-8")
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert 'onload="alert' not in page and '" style=x' not in page
    assert page.count("<script>") == 1 and page.count("</script>") == 1
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;" in page


def test_pdf_is_dated_by_the_annotation_and_reproducible(ru_annotation: Annotation) -> None:
    """The PDF's creation date is the annotation's (in UTC), not the render time in the
    server's time zone, so the CLI, the API and an async export give the same bytes."""
    annotation = ru_annotation.model_copy(
        update={"created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}
    )
    pdf = export(annotation, "pdf")
    assert b"/CreationDate (D:20260102030405+00'00')" in pdf
    assert b"/ModDate (D:20260102030405+00'00')" in pdf
    assert export(annotation, "pdf") == pdf


def test_pdf_renders_hostile_and_foreign_names(ru_annotation: Annotation) -> None:
    """Markup, NUL, bidi overrides, emoji, CJK, Arabic and a 10 000-character name."""
    names = [
        '<font name="x">"&amp;</b>',
        "Nul\x00\x0b",
        "😀 李雷 مرحبا עברית \u202eevil",
        "N" * 10_000,
    ]
    hostile = _named(ru_annotation, names)
    hostile.recording.filename = "<b>" + "Я" * 10_000 + ".wav"
    assert export(hostile, "pdf").startswith(b"%PDF-")


def test_empty_and_zero_length_annotations_export() -> None:
    """No audio (duration 0), no speech, no words, no speakers: every format renders."""
    empty = Annotation(recording=RecordingInfo(duration=0.0, sample_rate=8000, channels=1))
    blank = empty.model_copy(
        update={
            "speakers": [Speaker(label="")],
            "utterances": [Utterance(start=0, end=0, speaker=None, text=" \n ")],
        }
    )
    for annotation in (empty, blank):
        assert export(annotation, "srt") == b""
        assert export(annotation, "vtt") == b"WEBVTT\n"
        for fmt in ("json", "csv", "words.csv", "rttm", "html", "pdf"):
            export(annotation, fmt)


def test_long_contact_names_are_shortened_in_every_export(ru_annotation: Annotation) -> None:
    """A hostile address book's 10 000-character names are repeated per utterance: they made
    a one-hour call's PDF take ~54 s and its page 25 MB; display names stop at 80 chars."""
    hostile = ru_annotation.model_copy(deep=True)
    hostile.speakers[0].contact = ContactRef(id="c" * 32, name="Н" * 10_000)
    hostile.speakers[1].expected_contact = ExpectedContact(
        id="d" * 32, name="Иван " * 2_000, role="caller", match="unverified"
    )
    names = speaker_names(hostile)
    assert all(len(name) <= MAX_NAME_CHARS for name in names.values())
    assert names["SPEAKER_00"] == "Н" * (MAX_NAME_CHARS - 1) + "…"
    assert names["SPEAKER_01"].startswith("Иван Иван") and names["SPEAKER_01"].endswith(
        "… (by number)"
    )
    for fmt in ("csv", "srt", "vtt", "html"):
        text = export(hostile, fmt).decode("utf-8-sig")
        assert "Н" * MAX_NAME_CHARS not in text and "Иван " * 20 not in text, fmt
