"""Speaker colours, time formatting and the speaker-timeline picture (inline SVG)."""

from __future__ import annotations

from html import escape

from callannotate.pipeline.types import Annotation, Turn

PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
)
WIDTH = 1000
LEFT = 130
PLOT = WIDTH - LEFT - 24
SENTIMENT_COLORS = {"positive": "#2ca02c", "neutral": "#9e9e9e", "negative": "#d62728"}


def speaker_order(annotation: Annotation) -> list[str]:
    """Speaker labels in a stable order: declared speakers first, then first appearance."""
    seen: list[str] = [s.label for s in annotation.speakers]
    for source in (annotation.turns, annotation.exclusive_turns, annotation.utterances):
        for item in source:
            label = item.speaker
            if label and label not in seen:
                seen.append(label)
    return seen


def speaker_colors(annotation: Annotation) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(speaker_order(annotation))}


#: Longest display name (characters): an address book may hold any length, and each name is
#: repeated per utterance in the page, the PDF and the subtitles.
MAX_NAME_CHARS = 80


def short_name(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """``name`` cut to ``limit`` characters, ending in ``…`` when it was longer."""
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def speaker_names(annotation: Annotation) -> dict[str, str]:
    """Display name per label, best first: the contact the recognised voice is linked to, the
    recognised voice's name, the contact the call's number points to (confirmed, or marked
    "(by number)" while no voice confirms it), else the label; at most
    :data:`MAX_NAME_CHARS` characters (a 10 000-character contact name made a one-hour
    call's PDF take a minute and its page 25 MB)."""
    names = {label: label for label in speaker_order(annotation)}
    for speaker in annotation.speakers:
        voice = speaker.voice
        expected = speaker.expected_contact
        if speaker.contact is not None and speaker.contact.name:
            names[speaker.label] = short_name(speaker.contact.name)
        elif voice is not None and voice.accepted and voice.name:
            names[speaker.label] = short_name(voice.name)
        elif expected is not None and expected.name and expected.match != "contradicted":
            suffix = "" if expected.match == "confirmed" else " (by number)"
            names[speaker.label] = short_name(expected.name, MAX_NAME_CHARS - len(suffix)) + suffix
    return names


def clock(seconds: float, *, millis: bool = False) -> str:
    """``m:ss`` (or ``h:mm:ss``); with ``millis`` ``h:mm:ss.mmm``."""
    seconds = max(0.0, seconds)
    if millis:
        ms = round(seconds * 1000)
        h, rem = divmod(ms, 3_600_000)
        m, rem = divmod(rem, 60_000)
        s, ms = divmod(rem, 1000)
        return f"{h}:{m:02d}:{s:02d}.{ms:03d}"
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def timeline_turns(annotation: Annotation) -> list[Turn]:
    """What the timeline draws: speaker turns, else exclusive turns, else utterances."""
    if annotation.turns:
        return list(annotation.turns)
    if annotation.exclusive_turns:
        return list(annotation.exclusive_turns)
    return [
        Turn(start=u.start, end=u.end, speaker=u.speaker or "speech")
        for u in annotation.utterances
        if u.end > u.start
    ]


def _tick_step(duration: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration / step <= 12:
            return float(step)
    return 7200.0


def timeline_svg(annotation: Annotation, *, row: int = 26) -> str:
    """One row per speaker with a bar per turn, a time axis and a playhead (``#playhead``)."""
    turns = timeline_turns(annotation)
    duration = max(
        [annotation.recording.duration, *(t.end for t in turns)]
        if turns
        else [annotation.recording.duration]
    )
    duration = duration or 1.0
    labels = speaker_order(annotation) or sorted({t.speaker for t in turns})
    for t in turns:
        if t.speaker not in labels:
            labels.append(t.speaker)
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    names = speaker_names(annotation)
    width, left, plot = WIDTH, LEFT, PLOT
    height = row * max(1, len(labels)) + 28
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="Speaker timeline" data-duration="{duration:.3f}"'
        f' data-left="{left}" data-plot="{plot}">'
    ]
    for i, label in enumerate(labels):
        y = i * row
        out.append(
            f'<rect x="{left}" y="{y + 2}" width="{plot}" height="{row - 4}" fill="#f3f3f3"/>'
            f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" font-size="12"'
            f' font-family="DejaVu Sans, Arial, sans-serif">{escape(names.get(label, label))}'
            "</text>"
        )
    for t in turns:
        y = labels.index(t.speaker) * row
        x = left + plot * t.start / duration
        w = max(plot * (t.end - t.start) / duration, 0.5)
        out.append(
            f'<rect class="turn" x="{x:.2f}" y="{y + 4}" width="{w:.2f}" height="{row - 8}"'
            f' fill="{colors[t.speaker]}" data-s="{t.start:.3f}"><title>'
            f"{escape(names.get(t.speaker, t.speaker))} {clock(t.start)}–{clock(t.end)}"
            "</title></rect>"
        )
    axis_y = row * max(1, len(labels)) + 4
    step = _tick_step(duration)
    tick = 0.0
    while tick <= duration + 1e-9:
        x = left + plot * tick / duration
        out.append(
            f'<line x1="{x:.2f}" y1="{axis_y - 4}" x2="{x:.2f}" y2="{axis_y + 2}"'
            ' stroke="#666"/>'
            f'<text x="{x:.2f}" y="{axis_y + 16}" text-anchor="middle" font-size="11"'
            f' font-family="DejaVu Sans, Arial, sans-serif" fill="#444">{clock(tick)}</text>'
        )
        tick += step
    out.append(
        f'<line id="playhead" x1="{left}" y1="0" x2="{left}" y2="{axis_y}" stroke="#000"'
        ' stroke-width="2" visibility="hidden"/>'
    )
    out.append("</svg>")
    return "".join(out)
