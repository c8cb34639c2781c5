"""Exports: each a pure function ``Annotation -> bytes``.

Formats (:data:`FORMATS`): ``json`` (the annotation itself), ``csv`` (one row per utterance),
``words.csv`` (one row per word), ``srt`` and ``vtt`` (one cue per utterance, speaker
prefixed / as a WebVTT voice), ``rttm`` (speaker turns, NIST RTTM), ``html`` (the
self-contained report page) and ``pdf``. CSV files are UTF-8 with a BOM so spreadsheet
programs open Cyrillic correctly, and text cells that a spreadsheet would read as a formula
(starting with ``=``, ``+``, ``-``, ``@``, tab or CR: a voice named ``=HYPERLINK(...)``) are
prefixed with a single quote, as OWASP's CSV-injection guidance says; numeric cells are
written as numbers and left alone. A formula character right after a ``;``, tab, CR or LF
inside a cell gets the same quote: a spreadsheet whose list separator is ``;`` (Excel in a
Russian locale) or that splits on tabs or line ends would start a new cell there.

Subtitles (SRT, VTT) put each cue's speaker name and text on one line: control characters
(CR, LF, NUL ...) and line separators become spaces and bidi embedding / override / isolate
controls are dropped, so a contact whose name holds blank lines cannot end the cue or start a
new one, nor reverse what follows; ``-->`` inside a name or text becomes ``->`` (an SRT
timing line is any line with that arrow, and converters unescape VTT text into SRT). RTTM
fields are single tokens: whitespace and control characters in a label become ``_``, an
empty label is ``unknown``, and a duration is never negative.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

from callannotate.errors import BadRequest
from callannotate.pipeline.types import Annotation
from callannotate.reports.timeline import speaker_names, timeline_turns


@dataclass(frozen=True)
class ExportFormat:
    name: str
    media_type: str
    extension: str
    render: Callable[[Annotation], bytes]
    description: str


def _stem(annotation: Annotation) -> str:
    name = annotation.recording.filename or "annotation"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    stem = re.sub(r"[^\w.-]+", "_", stem, flags=re.UNICODE).strip("._") or "annotation"
    return stem[:80]


def export_json(annotation: Annotation) -> bytes:
    """The annotation, indented, ending with a newline (as ``callannotate annotate`` writes it)."""
    return annotation.model_dump_json(indent=2).encode("utf-8") + b"\n"


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# a formula character after a character some spreadsheet starts a new cell at
_INNER_FORMULA = re.compile(r"(?<=[;\t\r\n])(?=[=+\-@\t\r])")


class _Num(str):
    """A number already formatted for CSV: never neutralised (``-0.250`` stays a number)."""


def _num(value: float, digits: int = 3) -> _Num:
    return _Num(f"{value:.{digits}f}")


def csv_cell(value: object) -> object:
    """``value`` safe for a spreadsheet: text that would start a formula gets a ``'`` prefix,
    at the start and after each ``;``, tab, CR or LF inside it."""
    if not isinstance(value, str) or isinstance(value, _Num):
        return value
    value = _INNER_FORMULA.sub("'", value)
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _csv_bytes(rows: list[list[object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def export_utterances_csv(annotation: Annotation) -> bytes:
    names = speaker_names(annotation)
    rows: list[list[object]] = [
        [
            "index",
            "start",
            "end",
            "speaker",
            "speaker_name",
            "text",
            "language",
            "sentiment",
            "sentiment_score",
            "emotion",
            "valence",
            "arousal",
            "word_start",
            "word_end",
        ]
    ]
    for i, u in enumerate(annotation.utterances):
        rows.append(
            [
                i,
                _num(u.start),
                _num(u.end),
                u.speaker or "",
                names.get(u.speaker or "", u.speaker or ""),
                u.text,
                u.language or "",
                u.sentiment.label if u.sentiment else "",
                _num(u.sentiment.score) if u.sentiment else "",
                u.emotion.label if u.emotion else "",
                "" if u.emotion is None or u.emotion.valence is None else _num(u.emotion.valence),
                "" if u.emotion is None or u.emotion.arousal is None else _num(u.emotion.arousal),
                u.word_start,
                u.word_end,
            ]
        )
    return _csv_bytes(rows)


def export_words_csv(annotation: Annotation) -> bytes:
    owner: dict[int, int] = {}
    for i, u in enumerate(annotation.utterances):
        for k in range(u.word_start, u.word_end):
            owner[k] = i
    rows: list[list[object]] = [
        ["index", "start", "end", "speaker", "text", "probability", "language", "utterance"]
    ]
    for i, w in enumerate(annotation.words):
        rows.append(
            [
                i,
                _num(w.start),
                _num(w.end),
                w.speaker or "",
                w.text,
                _num(w.probability),
                w.language or "",
                owner.get(i, ""),
            ]
        )
    return _csv_bytes(rows)


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def _one_line(text: str) -> str:
    """``text`` on one line: control characters and line / paragraph separators become spaces,
    runs of whitespace one space, bidi embedding / override / isolate controls are dropped."""
    spaced = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text.translate(_BIDI_CONTROLS)
    )
    return " ".join(spaced.split())


def _cue_line(text: str) -> str:
    """One subtitle line: :func:`_one_line` without the timing arrow ``-->``."""
    return re.sub(r"-{2,}>", "->", _one_line(text))


def _cues(annotation: Annotation) -> list[tuple[float, float, str | None, str]]:
    cues = []
    for u in annotation.utterances:
        text = _cue_line(u.text)
        if not text:
            continue
        end = u.end if u.end > u.start else u.start + 0.5
        cues.append((u.start, end, u.speaker, text))
    return cues


def export_srt(annotation: Annotation) -> bytes:
    names = speaker_names(annotation)
    blocks = []
    for n, (start, end, speaker, text) in enumerate(_cues(annotation), start=1):
        name = _cue_line(names.get(speaker, speaker)) if speaker else ""
        line = f"{name}: {text}" if name else text
        blocks.append(f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{line}\n")
    return "\n".join(blocks).encode("utf-8")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export_vtt(annotation: Annotation) -> bytes:
    names = speaker_names(annotation)
    out = ["WEBVTT", ""]
    for start, end, speaker, text in _cues(annotation):
        out.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}")
        if speaker:
            voice = _vtt_escape(_cue_line(names.get(speaker, speaker)))
            out.append(f"<v {voice}>{_vtt_escape(text)}</v>")
        else:
            out.append(_vtt_escape(text))
        out.append("")
    return "\n".join(out).encode("utf-8")


def _rttm_token(value: str, empty: str) -> str:
    """``value`` as one RTTM field: whitespace and unprintable characters become ``_``."""
    runs = groupby(value, key=lambda ch: ch.isspace() or not ch.isprintable())
    return "".join("_" if bad else "".join(chars) for bad, chars in runs) or empty


def export_rttm(annotation: Annotation) -> bytes:
    """NIST RTTM ``SPEAKER`` lines (speaker turns; utterances when diarization did not run)."""
    uri = _rttm_token(_stem(annotation), "annotation")
    lines = []
    for t in sorted(timeline_turns(annotation), key=lambda t: (t.start, t.end)):
        speaker = _rttm_token(t.speaker, "unknown")
        duration = max(0.0, t.end - t.start)
        lines.append(f"SPEAKER {uri} 1 {t.start:.3f} {duration:.3f} <NA> <NA> {speaker} <NA> <NA>")
    return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")


def export_html(annotation: Annotation) -> bytes:
    from callannotate.reports.html import render_html

    return render_html(annotation).encode("utf-8")


def export_pdf(annotation: Annotation) -> bytes:
    from callannotate.reports.pdf import render_pdf

    return render_pdf(annotation)


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("json", "application/json", "json", export_json, "The annotation."),
        ExportFormat(
            "csv",
            "text/csv; charset=utf-8",
            "utterances.csv",
            export_utterances_csv,
            "One row per utterance.",
        ),
        ExportFormat(
            "words.csv",
            "text/csv; charset=utf-8",
            "words.csv",
            export_words_csv,
            "One row per word.",
        ),
        ExportFormat(
            "srt",
            "application/x-subrip; charset=utf-8",
            "srt",
            export_srt,
            "SubRip subtitles, one cue per utterance.",
        ),
        ExportFormat(
            "vtt",
            "text/vtt; charset=utf-8",
            "vtt",
            export_vtt,
            "WebVTT subtitles with speaker voices.",
        ),
        ExportFormat(
            "rttm", "text/plain; charset=utf-8", "rttm", export_rttm, "Speaker turns (NIST RTTM)."
        ),
        ExportFormat(
            "html", "text/html; charset=utf-8", "html", export_html, "Self-contained report page."
        ),
        ExportFormat("pdf", "application/pdf", "pdf", export_pdf, "Printable report."),
    )
}


def get_format(fmt: str) -> ExportFormat:
    """The export format called ``fmt`` (case-insensitive); ``BadRequest`` when unknown."""
    found = FORMATS.get(fmt.strip().lower())
    if found is None:
        raise BadRequest(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return found


def export(annotation: Annotation, fmt: str) -> bytes:
    """``annotation`` rendered as ``fmt`` (one of :data:`FORMATS`)."""
    return get_format(fmt).render(annotation)


def export_filename(annotation: Annotation, fmt: str) -> str:
    """A download file name such as ``call.utterances.csv``."""
    return f"{_stem(annotation)}.{get_format(fmt).extension}"
