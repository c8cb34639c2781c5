"""The report page: a self-contained HTML document (inline CSS, JS and SVG, no network).

The same page is the ``html`` export (no audio) and the report viewer served by the API
(with an ``<audio>`` player pointing at the job's audio): clicking a word or a time seeks the
audio, the word being spoken is highlighted, the timeline shows a playhead.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from importlib import resources
from string import Template

from callannotate.pipeline.types import Annotation, SpeakerStats, Utterance, Word
from callannotate.reports.timeline import (
    LEFT,
    PLOT,
    SENTIMENT_COLORS,
    WIDTH,
    clock,
    speaker_colors,
    speaker_names,
    timeline_svg,
)

LOW_CONFIDENCE = 0.5


@lru_cache(maxsize=4)
def _asset(name: str) -> str:
    return (
        resources.files("callannotate.reports")
        .joinpath("templates", name)
        .read_text(encoding="utf-8")
    )


def inline_scripts() -> tuple[str, ...]:
    """The exact text of each inline ``<script>`` of the page (fixed: the viewer's code).

    The API's CSP allows these by hash (:mod:`callannotate.api.headers`), so no other
    script can run on the report page.
    """
    page = Template(_asset("report.html")).safe_substitute(js=_asset("report.js"))
    return tuple(re.findall(r"<script>(.*?)</script>", page, flags=re.S))


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _sentiment_badge(label: str | None, score: float | None) -> str:
    if label is None or score is None:
        return ""
    return f'<span class="senti {label}" title="polarity {score:+.2f}">{label}</span>'


def _chip(label: str, name: str, color: str) -> str:
    return f'<span class="chip" style="background:{color}">{escape(name)}</span>'


def _word_span(index: int, word: Word) -> str:
    cls = "w low" if word.probability < LOW_CONFIDENCE else "w"
    return (
        f'<span class="{cls}" id="w{index}" data-s="{word.start:.3f}" data-e="{word.end:.3f}"'
        f' title="{clock(word.start, millis=True)} · p={word.probability:.2f}">'
        f"{escape(word.text)}</span>"
    )


def _utterance_html(
    utt: Utterance, words: list[Word], names: dict[str, str], colors: dict[str, str]
) -> str:
    label = utt.speaker or ""
    color = colors.get(label, "#555")
    name = names.get(label, label) or "—"
    span = words[utt.word_start : utt.word_end] if utt.word_end > utt.word_start else []
    if span:
        text = " ".join(_word_span(utt.word_start + k, w) for k, w in enumerate(span))
    else:
        text = escape(utt.text)
    extra = ""
    if utt.sentiment is not None:
        extra += " " + _sentiment_badge(utt.sentiment.label, utt.sentiment.score)
    if utt.emotion is not None:
        parts = [utt.emotion.label] if utt.emotion.label != "neutral" else []
        if utt.emotion.arousal is not None:
            parts.append(f"arousal {utt.emotion.arousal:.2f}")
        if parts:
            extra += f'<span class="emo">{escape(", ".join(parts))}</span>'
    return (
        f'<div class="utt" data-s="{utt.start:.3f}" data-e="{utt.end:.3f}">'
        f'<span class="ts" data-s="{utt.start:.3f}">{clock(utt.start)}</span>'
        f'<span class="spk" style="color:{color}">{escape(name)}</span>'
        f'<span class="txt">{text}{extra}</span></div>'
    )


def _overall_html(annotation: Annotation) -> str:
    stats = annotation.statistics
    if stats is None:
        return '<p class="empty">No statistics (the merge step did not run).</p>'
    items = [
        ("Duration", clock(stats.duration)),
        ("Speech", f"{clock(stats.speech_time)} ({_pct(stats.speech_time, stats.duration)})"),
        ("Silence", clock(stats.silence_time)),
        ("Longest silence", f"{stats.longest_silence:.1f} s"),
        ("Overlap", f"{stats.overlap_time:.1f} s in {stats.overlaps} stretches"),
        ("Turns", str(stats.turns)),
        ("Interruptions", str(stats.interruptions)),
        ("Longest monologue", f"{stats.longest_monologue:.1f} s"),
        ("Words", str(stats.words)),
        ("Words / min", _fmt(stats.words_per_minute, 0)),
    ]
    if stats.sentiment is not None:
        items.append(
            ("Overall sentiment", f"{stats.sentiment.label} ({stats.sentiment.score:+.2f})")
        )
    cells = "".join(f"<div><span>{escape(k)}</span><b>{escape(v)}</b></div>" for k, v in items)
    return f'<div class="kv">{cells}</div>'


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole > 0 else "–"


def _speaker_row(s: SpeakerStats, names: dict[str, str], colors: dict[str, str]) -> str:
    color = colors.get(s.speaker, "#888")
    width = max(1, round(80 * s.talk_share))
    bar = f'<span class="bar" style="width:{width}px;background:{color}"></span>'
    senti = _sentiment_badge(s.sentiment.label, s.sentiment.score) if s.sentiment else "–"
    emotion = "–"
    if s.emotion is not None:
        emotion = escape(s.emotion.label)
        if s.emotion.arousal is not None:
            emotion += f" · {s.emotion.arousal:.2f}"
    return (
        f"<tr><td>{_chip(s.speaker, names.get(s.speaker, s.speaker), color)}</td>"
        f"<td>{clock(s.talk_time)}</td><td>{bar}{100 * s.talk_share:.0f}%</td>"
        f"<td>{s.turns}</td><td>{s.words}</td><td>{_fmt(s.words_per_minute, 0)}</td>"
        f"<td>{s.interruptions}</td><td>{s.interrupted}</td><td>{s.overlap_time:.1f} s</td>"
        f"<td>{s.longest_monologue:.1f} s</td><td>{senti}</td><td>{emotion}</td></tr>"
    )


def _speakers_html(annotation: Annotation, names: dict[str, str], colors: dict[str, str]) -> str:
    stats = annotation.statistics
    if stats is None or not stats.speakers:
        return ""
    head = (
        "<tr><th>Speaker</th><th>Talk time</th><th>Share</th><th>Turns</th><th>Words</th>"
        "<th>Words/min</th><th>Interrupts</th><th>Interrupted</th><th>Overlap</th>"
        "<th>Longest monologue</th><th>Sentiment</th><th>Emotion · arousal</th></tr>"
    )
    rows = "".join(_speaker_row(s, names, colors) for s in stats.speakers)
    return f"<table>{head}{rows}</table>"


def _sentiment_html(annotation: Annotation, names: dict[str, str]) -> str:
    scored = [u for u in annotation.utterances if u.sentiment is not None]
    if not scored:
        return '<p class="empty">No sentiment (the sentiment step did not run).</p>'
    duration = max(annotation.recording.duration, max(u.end for u in scored), 1.0)
    width, height, mid = WIDTH, 80, 40
    bars = []
    for u in scored:
        assert u.sentiment is not None
        x = LEFT + PLOT * u.start / duration
        w = max(PLOT * (u.end - u.start) / duration, 1.0)
        h = abs(u.sentiment.score) * (mid - 4)
        y = mid - h if u.sentiment.score >= 0 else mid
        color = SENTIMENT_COLORS[u.sentiment.label]
        who = names.get(u.speaker or "", u.speaker or "")
        bars.append(
            f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{max(h, 1):.2f}"'
            f' fill="{color}"><title>{escape(who)} {clock(u.start)}: '
            f"{u.sentiment.score:+.2f}</title></rect>"
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkline" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="Sentiment over time">'
        f'<text x="122" y="14" text-anchor="end" font-size="11" fill="#444">positive</text>'
        f'<text x="122" y="{height - 4}" text-anchor="end" font-size="11"'
        ' fill="#444">negative</text>'
        f'<line x1="{LEFT}" y1="{mid}" x2="{LEFT + PLOT}" y2="{mid}" stroke="#bbb"/>'
        f"{''.join(bars)}</svg>"
    )
    counts = {
        k: sum(1 for u in scored if u.sentiment and u.sentiment.label == k)
        for k in ("positive", "neutral", "negative")
    }
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"{svg}<p>Utterances: {summary}.</p>"


def render_html(
    annotation: Annotation,
    *,
    audio_url: str | None = None,
    title: str | None = None,
) -> str:
    """The report page for ``annotation``; with ``audio_url`` it carries an audio player."""
    names = speaker_names(annotation)
    colors = speaker_colors(annotation)
    rec = annotation.recording
    title = title or rec.filename or "Call report"
    meta_parts = [
        clock(rec.duration),
        f"{rec.sample_rate} Hz",
        f"{rec.channels} ch",
        rec.channel_mode,
    ]
    if rec.languages:
        meta_parts.append("language: " + ", ".join(rec.languages))
    meta_parts.append(f"{len(names)} speakers")
    meta_parts.append(annotation.created_at.strftime("%Y-%m-%d %H:%M UTC"))
    player = (
        f'<audio id="player" controls preload="metadata" src="{escape(audio_url)}"></audio>'
        if audio_url
        else ""
    )
    legend = "".join(_chip(label, names[label], colors[label]) for label in names)
    transcript = (
        "\n".join(
            _utterance_html(u, annotation.words, names, colors) for u in annotation.utterances
        )
        or '<p class="empty">No transcript.</p>'
    )
    language = rec.languages[0] if rec.languages else "en"
    return Template(_asset("report.html")).substitute(
        lang=escape(language),
        generator=escape(annotation.generator),
        title=escape(title),
        meta=escape(" · ".join(meta_parts)),
        player=player,
        timeline=timeline_svg(annotation),
        legend=legend,
        overall=_overall_html(annotation),
        speakers=_speakers_html(annotation, names, colors),
        sentiment=_sentiment_html(annotation, names),
        transcript=transcript,
        footer=escape(f"{annotation.generator} · annotation schema {annotation.schema_version}"),
        css=_asset("report.css"),
        js=_asset("report.js"),
    )
