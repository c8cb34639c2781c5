"""Merge step: words get speakers, words group into utterances, and the timeline is made tidy.

* Each word gets the speaker of the *exclusive* (non-overlapping) turn that overlaps it most;
  a word that overlaps no turn gets the nearest turn's speaker (whisperX's idea, typed).
* Utterances are split where the speaker changes, after a sentence end (``. ! ? …``), at a
  pause longer than ``max_pause`` and when one grows past ``max_duration``.
* The timeline is consistent: words sorted by start, ``end >= start``, all inside
  ``[0, duration]``; empty words dropped.

:func:`build_annotation_parts` runs the whole merge plus analytics; the pipeline's ``align``
step calls it once it has words and turns, and its ``sentiment`` step then scores the
utterances and statistics (:func:`add_sentiment` does both for callers outside the
pipeline).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from callannotate.pipeline.analysis.analytics import AnalyticsParams, compute_statistics
from callannotate.pipeline.types import AudioBuffer, ConversationStats, Turn, Utterance, Word

if TYPE_CHECKING:
    from callannotate.pipeline.analysis.sentiment import SentimentAnalyzer

_SENTENCE_END = re.compile(r"[.!?…？！。]+[\"'»”’)\]]*$")
_NO_SPACE_BEFORE = re.compile(r"^[.,!?;:…%)\]»”’]")


@dataclass(frozen=True)
class AlignmentParams:
    """How words are grouped into utterances."""

    max_pause: float = 1.0
    """Start a new utterance after a pause longer than this many seconds."""
    max_duration: float = 30.0
    """Start a new utterance when the current one would grow longer than this."""
    split_on_sentence_end: bool = True


def _r(value: float) -> float:
    return round(value, 3)


def clip_interval(start: float, end: float, duration: float | None) -> tuple[float, float]:
    """``(start, end)`` with ``0 <= start <= end (<= duration)``."""
    start = max(0.0, float(start))
    end = max(0.0, float(end))
    if duration is not None:
        start = min(start, duration)
        end = min(end, duration)
    return start, max(start, end)


def _sanitize(words: Sequence[Word], duration: float | None) -> list[tuple[Word, str]]:
    """Words with stripped text, clipped times and ``end >= start``, sorted by time (stable),
    each with its original text; words whose text is empty after stripping are dropped."""
    pairs: list[tuple[Word, str]] = []
    for word in words:
        text = word.text.strip()
        if not text:
            continue
        start, end = clip_interval(word.start, word.end, duration)
        clean = word.model_copy(
            update={
                "text": text,
                "start": _r(start),
                "end": _r(end),
                "probability": min(1.0, max(0.0, word.probability)),
            }
        )
        pairs.append((clean, word.text))
    pairs.sort(key=lambda p: (p[0].start, p[0].end))
    return pairs


def sanitize_turns(turns: Sequence[Turn], duration: float | None = None) -> list[Turn]:
    """Turns clipped to the audio, zero-length ones dropped, sorted by start."""
    out: list[Turn] = []
    for turn in turns:
        start, end = clip_interval(turn.start, turn.end, duration)
        if end > start:
            out.append(Turn(start=_r(start), end=_r(end), speaker=turn.speaker))
    out.sort(key=lambda t: (t.start, t.end, t.speaker))
    return out


def exclusive_from_turns(turns: Sequence[Turn]) -> list[Turn]:
    """A non-overlapping timeline from possibly overlapping turns.

    Used only when diarization gave no exclusive turns. Where turns overlap, the speaker who
    started most recently holds the floor (an interjection splits the longer turn).
    """
    ordered = sorted(turns, key=lambda t: (t.start, t.end))
    bounds = sorted({t.start for t in ordered} | {t.end for t in ordered})
    pieces: list[Turn] = []
    for left, right in itertools.pairwise(bounds):
        if right <= left:
            continue
        active = [t for t in ordered if t.start < right and t.end > left]
        if not active:
            continue
        speaker = max(active, key=lambda t: (t.start, -t.end)).speaker
        if pieces and pieces[-1].speaker == speaker and pieces[-1].end == left:
            pieces[-1] = Turn(start=pieces[-1].start, end=right, speaker=speaker)
        else:
            pieces.append(Turn(start=left, end=right, speaker=speaker))
    return pieces


def _best_speaker(
    word: Word, turns: list[Turn], starts: list[float], max_end: list[float]
) -> str | None:
    """Speaker of the turn overlapping ``word`` most, else of the nearest turn.

    ``turns`` are sorted by start; ``max_end[j]`` is the latest end among ``turns[: j + 1]``,
    so the backward scan stops as soon as no earlier turn can reach the word.
    """
    if not turns:
        return None
    point = word.end <= word.start
    # turns that start before the word ends (or at/before its instant)
    idx = bisect.bisect_right(starts, word.start) if point else bisect.bisect_left(starts, word.end)
    overlap: dict[str, float] = {}
    j = idx - 1
    while j >= 0 and max_end[j] > word.start:
        turn = turns[j]
        if point:
            amount = 1e-9 if turn.start <= word.start < turn.end else 0.0
        else:
            amount = min(turn.end, word.end) - max(turn.start, word.start)
        if amount > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + amount
        j -= 1
    if overlap:
        return max(overlap.items(), key=lambda kv: kv[1])[0]
    best: tuple[float, str] | None = None
    if idx - 1 >= 0:  # the earlier turn that ends latest
        k = idx - 1
        while turns[k].end < max_end[idx - 1]:
            k -= 1
        best = (max(0.0, word.start - turns[k].end), turns[k].speaker)
    if idx < len(turns):
        gap = max(0.0, turns[idx].start - word.end)
        if best is None or gap < best[0]:
            best = (gap, turns[idx].speaker)
    return best[1] if best else None


def assign_speakers(
    words: Sequence[Word], exclusive_turns: Sequence[Turn], *, only_missing: bool = False
) -> list[Word]:
    """Each word gets the speaker of the exclusive turn overlapping it most (else nearest).

    With no turns at all the words are returned unchanged. With ``only_missing`` words that
    already carry a speaker (per-channel transcription) keep it.
    """
    turns = sorted(exclusive_turns, key=lambda t: (t.start, t.end))
    if not turns:
        return list(words)
    starts = [t.start for t in turns]
    max_end: list[float] = []
    for t in turns:
        max_end.append(max(t.end, max_end[-1]) if max_end else t.end)
    return [
        w
        if only_missing and w.speaker is not None
        else w.model_copy(update={"speaker": _best_speaker(w, turns, starts, max_end)})
        for w in words
    ]


def join_words(texts: Sequence[str]) -> str:
    """Join word texts into readable text.

    Whisper-style tokens carry their own leading space (``" Hello"``) and are concatenated;
    bare tokens are joined with spaces, except before punctuation.
    """
    if any(t[:1].isspace() for t in texts):
        return re.sub(r"\s+", " ", "".join(texts)).strip()
    out = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if out and not _NO_SPACE_BEFORE.match(text):
            out += " "
        out += text
    return out


def ends_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text.strip()))


def build_utterances(
    words: Sequence[Word],
    params: AlignmentParams | None = None,
    *,
    raw_texts: Sequence[str] | None = None,
) -> list[Utterance]:
    """Group time-sorted words into utterances (see the module docstring for the rules).

    ``word_start``/``word_end`` index into ``words``. ``raw_texts`` (same length as
    ``words``) lets the caller keep whisper's spacing for the joined text.
    """
    params = params or AlignmentParams()
    texts = list(raw_texts) if raw_texts is not None else [w.text for w in words]
    groups: list[tuple[int, int]] = []
    first = 0
    for i in range(1, len(words) + 1):
        if i < len(words):
            prev, cur = words[i - 1], words[i]
            split = (
                cur.speaker != prev.speaker
                or (params.split_on_sentence_end and ends_sentence(prev.text))
                or cur.start - prev.end > params.max_pause
                or cur.end - words[first].start > params.max_duration
            )
            if not split:
                continue
        groups.append((first, i))
        first = i
    utterances: list[Utterance] = []
    for a, b in groups:
        chunk = words[a:b]
        if not chunk:
            continue
        languages = Counter(w.language for w in chunk if w.language)
        utterances.append(
            Utterance(
                start=_r(chunk[0].start),
                end=_r(max(w.end for w in chunk)),
                speaker=chunk[0].speaker,
                text=join_words(texts[a:b]),
                language=languages.most_common(1)[0][0] if languages else None,
                word_start=a,
                word_end=b,
            )
        )
    return utterances


@dataclass(frozen=True)
class AnnotationParts:
    """What the merge step adds to an ``Annotation``."""

    words: list[Word]
    utterances: list[Utterance]
    statistics: ConversationStats
    exclusive_turns: list[Turn]
    turns: list[Turn]


def build_annotation_parts(
    words: Sequence[Word],
    exclusive_turns: Sequence[Turn],
    turns: Sequence[Turn],
    audio: AudioBuffer | None,
    *,
    duration: float | None = None,
    language: str | None = None,
    sentiment: SentimentAnalyzer | None = None,
    params: AlignmentParams | None = None,
    analytics: AnalyticsParams | None = None,
    keep_word_speakers: bool = False,
) -> AnnotationParts:
    """Merge words with speaker turns, build utterances and statistics.

    ``duration`` defaults to the audio's duration (seconds). ``language`` is the detected
    language used for words/utterances that carry none. ``keep_word_speakers`` keeps the
    speakers words already have (per-channel mode: the channel is the speaker) and only
    fills in missing ones. When ``sentiment`` is given, each
    utterance gets a sentiment and emotion (acoustic arousal from ``audio``) and each speaker
    an overall sentiment.
    """
    if duration is None:
        duration = audio.duration if audio is not None else None
    clean_turns = sanitize_turns(turns, duration)
    clean_exclusive = sanitize_turns(exclusive_turns, duration)
    if not clean_exclusive and clean_turns:
        clean_exclusive = exclusive_from_turns(clean_turns)
    pairs = _sanitize(words, duration)
    clean = [w for w, _ in pairs]
    raw_texts = [text for _, text in pairs]  # keeps whisper's spacing for joined text
    with_speakers = assign_speakers(clean, clean_exclusive, only_missing=keep_word_speakers)
    if language:
        with_speakers = [
            w if w.language else w.model_copy(update={"language": language}) for w in with_speakers
        ]
    utterances = build_utterances(with_speakers, params, raw_texts=raw_texts)
    total = (
        duration
        if duration is not None
        else max([w.end for w in with_speakers] + [t.end for t in clean_turns] + [0.0])
    )
    stats = compute_statistics(
        turns=clean_turns or clean_exclusive,
        exclusive_turns=clean_exclusive,
        words=with_speakers,
        utterances=utterances,
        duration=total,
        params=analytics,
    )
    parts = AnnotationParts(
        words=with_speakers,
        utterances=utterances,
        statistics=stats,
        exclusive_turns=clean_exclusive,
        turns=clean_turns,
    )
    return parts if sentiment is None else add_sentiment(parts, sentiment, audio)


def add_sentiment(
    parts: AnnotationParts, sentiment: SentimentAnalyzer, audio: AudioBuffer | None
) -> AnnotationParts:
    """``parts`` with a sentiment and emotion for each utterance (acoustic arousal from
    ``audio``) and an overall sentiment for each speaker and the conversation."""
    utterances = sentiment.annotate_utterances(parts.utterances, audio)
    stats = sentiment.annotate_statistics(parts.statistics, utterances)
    return replace(parts, utterances=utterances, statistics=stats)
