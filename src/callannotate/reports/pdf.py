# mypy: disable-error-code="import-untyped"
"""PDF report with ReportLab: summary, speaker timeline drawing, analytics, transcript.

Cyrillic needs a TrueType font with those glyphs: DejaVu Sans from Debian's
``fonts-dejavu-core`` (``/usr/share/fonts/truetype/dejavu``) is embedded; set
``CALLANNOTATE_PDF_FONT`` to another ``.ttf`` to override.
"""

from __future__ import annotations

import io
import os
import threading
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from callannotate.errors import ServiceUnavailable
from callannotate.pipeline.types import Annotation
from callannotate.reports.timeline import (
    SENTIMENT_COLORS,
    clock,
    speaker_colors,
    speaker_names,
    speaker_order,
    timeline_turns,
)

FONT = "CallAnnotateSans"
FONT_BOLD = "CallAnnotateSans-Bold"
_FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/local/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
)
_lock = threading.Lock()
_registered = False


def _find_font(name: str) -> Path | None:
    for folder in _FONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    return None


def register_fonts() -> None:
    """Register the embedded TrueType fonts with ReportLab once per process."""
    global _registered
    with _lock:
        if _registered:
            return
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        override = os.environ.get("CALLANNOTATE_PDF_FONT")
        regular = Path(override) if override else _find_font("DejaVuSans.ttf")
        if regular is None or not regular.is_file():
            raise ServiceUnavailable(
                "PDF export needs a TrueType font with Cyrillic glyphs: install Debian's "
                "fonts-dejavu-core or set CALLANNOTATE_PDF_FONT to a .ttf file"
            )
        bold = None if override else _find_font("DejaVuSans-Bold.ttf")
        pdfmetrics.registerFont(TTFont(FONT, str(regular)))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, str(bold or regular)))
        pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD)
        _registered = True


def _timeline_drawing(annotation: Annotation, width: float) -> object:
    from reportlab.graphics.shapes import Drawing, Line, Rect, String
    from reportlab.lib import colors

    turns = timeline_turns(annotation)
    labels = speaker_order(annotation)
    for t in turns:
        if t.speaker not in labels:
            labels.append(t.speaker)
    names = speaker_names(annotation)
    palette = speaker_colors(annotation)
    duration = max([annotation.recording.duration, *(t.end for t in turns), 1.0])
    row, left = 16.0, 90.0
    plot = width - left - 6
    height = row * max(1, len(labels)) + 18
    drawing = Drawing(width, height)
    top = height
    for i, label in enumerate(labels):
        y = top - (i + 1) * row
        drawing.add(
            Rect(left, y + 2, plot, row - 4, fillColor=colors.HexColor("#f0f0f0"), strokeColor=None)
        )
        drawing.add(
            String(
                left - 5,
                y + 5,
                names.get(label, label)[:18],
                fontName=FONT,
                fontSize=8,
                textAnchor="end",
            )
        )
    for t in turns:
        i = labels.index(t.speaker)
        y = top - (i + 1) * row
        x = left + plot * t.start / duration
        w = max(plot * (t.end - t.start) / duration, 0.4)
        color = colors.HexColor(palette.get(t.speaker, "#555555"))
        drawing.add(Rect(x, y + 3, w, row - 6, fillColor=color, strokeColor=None))
    axis = top - len(labels) * row - 2
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if duration / s <= 10),
        7200,
    )
    tick = 0.0
    while tick <= duration + 1e-9:
        x = left + plot * tick / duration
        drawing.add(Line(x, axis, x, axis - 3, strokeColor=colors.grey))
        drawing.add(
            String(x, axis - 11, clock(tick), fontName=FONT, fontSize=7, textAnchor="middle")
        )
        tick += step
    return drawing


def render_pdf(annotation: Annotation, *, title: str | None = None) -> bytes:
    """The PDF report as bytes."""
    register_fonts()
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    buf = io.BytesIO()
    rec = annotation.recording
    title = title or rec.filename or "Call report"
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=title,
        author=annotation.generator,
        creator=annotation.generator,
        invariant=True,  # the same annotation gives the same bytes (API, CLI, async export)
    )
    base = ParagraphStyle("base", fontName=FONT, fontSize=9, leading=12)
    h1 = ParagraphStyle("h1", parent=base, fontName=FONT_BOLD, fontSize=15, leading=19)
    h2 = ParagraphStyle(
        "h2", parent=base, fontName=FONT_BOLD, fontSize=11, leading=15, spaceBefore=8, spaceAfter=4
    )
    small = ParagraphStyle("small", parent=base, fontSize=8, textColor=colors.grey)
    names = speaker_names(annotation)
    palette = speaker_colors(annotation)

    story: list[object] = [Paragraph(escape(title), h1)]
    meta = [clock(rec.duration), f"{rec.sample_rate} Hz", f"{rec.channels} ch", rec.channel_mode]
    if rec.languages:
        meta.append("language: " + ", ".join(rec.languages))
    meta.append(annotation.created_at.strftime("%Y-%m-%d %H:%M UTC"))
    story.append(Paragraph(escape(" · ".join(meta)), small))
    story.append(Paragraph("Speaker timeline", h2))
    story.append(_timeline_drawing(annotation, doc.width))

    table_style = TableStyle(
        [
            ("FONTNAME", (0, 0), (-1, -1), FONT),
            ("FONTNAME", (0, 0), (-1, 0), FONT_BOLD),
            ("FONTSIZE", (0, 0), (-1, -1), 8),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
            ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd")),
            ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ]
    )
    stats = annotation.statistics
    if stats is not None:
        story.append(Paragraph("Conversation analytics", h2))
        overall = [
            ["Duration", clock(stats.duration), "Speech", clock(stats.speech_time)],
            [
                "Silence",
                clock(stats.silence_time),
                "Longest silence",
                f"{stats.longest_silence:.1f} s",
            ],
            [
                "Overlap",
                f"{stats.overlap_time:.1f} s ({stats.overlaps})",
                "Turns",
                str(stats.turns),
            ],
            [
                "Interruptions",
                str(stats.interruptions),
                "Longest monologue",
                f"{stats.longest_monologue:.1f} s",
            ],
            [
                "Words",
                str(stats.words),
                "Words/min",
                "–" if stats.words_per_minute is None else f"{stats.words_per_minute:.0f}",
            ],
        ]
        if stats.sentiment is not None:
            overall.append(
                ["Sentiment", f"{stats.sentiment.label} {stats.sentiment.score:+.2f}", "", ""]
            )
        t = Table(overall, hAlign="LEFT")
        t.setStyle(
            TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), FONT),
                    ("FONTSIZE", (0, 0), (-1, -1), 8),
                    ("TEXTCOLOR", (0, 0), (0, -1), colors.grey),
                    ("TEXTCOLOR", (2, 0), (2, -1), colors.grey),
                ]
            )
        )
        story.append(t)
        if stats.speakers:
            rows: list[list[str]] = [
                [
                    "Speaker",
                    "Talk",
                    "Share",
                    "Turns",
                    "Words",
                    "WPM",
                    "Interr.",
                    "Overlap",
                    "Monologue",
                    "Sentiment",
                ]
            ]
            for s in stats.speakers:
                rows.append(
                    [
                        names.get(s.speaker, s.speaker)[:24],
                        clock(s.talk_time),
                        f"{100 * s.talk_share:.0f}%",
                        str(s.turns),
                        str(s.words),
                        "–" if s.words_per_minute is None else f"{s.words_per_minute:.0f}",
                        str(s.interruptions),
                        f"{s.overlap_time:.1f} s",
                        f"{s.longest_monologue:.1f} s",
                        f"{s.sentiment.label} {s.sentiment.score:+.2f}" if s.sentiment else "–",
                    ]
                )
            st = Table(rows, hAlign="LEFT", repeatRows=1)
            st.setStyle(table_style)
            story.append(Spacer(1, 4))
            story.append(st)

    story.append(Paragraph("Transcript", h2))
    if not annotation.utterances:
        story.append(Paragraph("No transcript.", small))
    for u in annotation.utterances:
        label = u.speaker or ""
        color = palette.get(label, "#555555")
        who = escape(names.get(label, label) or "—")
        extra = ""
        if u.sentiment is not None:
            extra = (
                f' <font size="7" color="{SENTIMENT_COLORS[u.sentiment.label]}">'
                f"[{u.sentiment.label} {u.sentiment.score:+.2f}]</font>"
            )
        story.append(
            Paragraph(
                f'<font color="#1565c0">{clock(u.start)}</font> '
                f'<font name="{FONT_BOLD}" color="{color}">{who}:</font> {escape(u.text)}{extra}',
                base,
            )
        )
    story.append(Spacer(1, 8))
    story.append(
        Paragraph(
            escape(f"{annotation.generator} · annotation schema {annotation.schema_version}"), small
        )
    )
    stamp = _pdf_date(annotation.created_at)
    doc.build(story, onFirstPage=lambda canvas, _doc: canvas.setDateFormatter(lambda *_: stamp))
    return buf.getvalue()


def _pdf_date(moment: datetime) -> str:
    """``moment`` as a PDF date string in UTC (the document's creation and modification date:
    when the annotation was made, not when it was rendered, nor in the server's time zone)."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("D:%Y%m%d%H%M%S+00'00'")
