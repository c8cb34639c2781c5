"""Conversation analytics, per speaker and overall, from speaker turns and words.

Definitions (all times in seconds, rounded to milliseconds):

* **talk time**: length of the union of a speaker's (possibly overlapping) turns;
  **talk share**: talk time over the sum of all speakers' talk times.
* **speech time**: length of the union of everyone's turns; **silence time** is the rest of
  the recording. A **silence** is a pause between speech of at least ``min_silence``;
  ``longest_silence`` is the longest pause between speech (lead-in and trailing excluded).
* **overlap**: a stretch where two or more speakers talk at once (at least ``min_overlap``).
* **interruption**: speaker B starts while A is talking (overlapping at least
  ``min_overlap``) and A stops before B does: B took the floor. Back-channels ("mm-hm")
  that end while A goes on are overlaps, not interruptions.
* **turn**: a run of one speaker's exclusive segments with no other speaker between and no
  pause longer than ``turn_gap``; the **longest monologue** is the longest turn.
* **words per minute**: words attributed to the speaker over their talk time.

With no speaker turns (diarization skipped), speech comes from the utterances and the
per-speaker list is empty unless words carry speakers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from callannotate.pipeline.types import (
    ConversationStats,
    SpeakerStats,
    Turn,
    Utterance,
    Word,
)

Interval = tuple[float, float]


@dataclass(frozen=True)
class AnalyticsParams:
    min_silence: float = 1.0
    """Pauses at least this long count as silences."""
    min_overlap: float = 0.2
    """Overlaps shorter than this are ignored (diarization boundary jitter)."""
    turn_gap: float = 2.0
    """Same-speaker segments closer than this (nobody between) form one turn."""
    min_wpm_time: float = 1.0
    """Speaking rate is reported only for at least this much talk time."""


def _r(value: float) -> float:
    return round(float(value), 3)


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, merged intervals (touching ones are joined)."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def total(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Intersection of two sorted, disjoint interval lists."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def overlap_regions(by_speaker: dict[str, list[Interval]]) -> list[Interval]:
    """Stretches where at least two speakers are active."""
    events: list[tuple[float, int]] = []
    for intervals in by_speaker.values():
        for start, end in intervals:
            events.append((start, 1))
            events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    regions: list[Interval] = []
    active = 0
    opened = 0.0
    for time, delta in events:
        before = active
        active += delta
        if before < 2 <= active:
            opened = time
        elif before >= 2 > active and time > opened:
            regions.append((opened, time))
    return union(regions)


def speaker_intervals(turns: Sequence[Turn]) -> dict[str, list[Interval]]:
    """Each speaker's merged speech intervals, speakers in order of first appearance."""
    raw: dict[str, list[Interval]] = {}
    for turn in sorted(turns, key=lambda t: (t.start, t.end)):
        raw.setdefault(turn.speaker, []).append((turn.start, turn.end))
    return {speaker: union(intervals) for speaker, intervals in raw.items()}


def floor_turns(exclusive: Sequence[Turn], turn_gap: float) -> list[Turn]:
    """Merge consecutive same-speaker exclusive segments into turns (see module doc)."""
    merged: list[Turn] = []
    for seg in sorted(exclusive, key=lambda t: (t.start, t.end)):
        if merged and merged[-1].speaker == seg.speaker and seg.start - merged[-1].end <= turn_gap:
            last = merged[-1]
            merged[-1] = Turn(start=last.start, end=max(last.end, seg.end), speaker=seg.speaker)
        else:
            merged.append(Turn(start=seg.start, end=seg.end, speaker=seg.speaker))
    return merged


def interruptions(
    by_speaker: dict[str, list[Interval]], min_overlap: float
) -> list[tuple[str, str, float]]:
    """``(interrupter, interrupted, time)`` for every interruption (see module doc)."""
    found: list[tuple[str, str, float]] = []
    for b, b_intervals in by_speaker.items():
        for b_start, b_end in b_intervals:
            for a, a_intervals in by_speaker.items():
                if a == b:
                    continue
                for a_start, a_end in a_intervals:
                    if a_start < b_start < a_end:
                        shared = min(a_end, b_end) - b_start
                        if shared >= min_overlap and a_end < b_end:
                            found.append((b, a, b_start))
    found.sort(key=lambda f: f[2])
    return found


def speech_gaps(speech: Sequence[Interval]) -> list[Interval]:
    """Pauses between consecutive speech intervals (lead-in and trailing excluded)."""
    return [(speech[i][1], speech[i + 1][0]) for i in range(len(speech) - 1)]


def compute_statistics(
    *,
    turns: Sequence[Turn],
    exclusive_turns: Sequence[Turn],
    words: Sequence[Word],
    utterances: Sequence[Utterance],
    duration: float,
    params: AnalyticsParams | None = None,
) -> ConversationStats:
    """Per-speaker and overall statistics. ``turns`` may overlap; ``exclusive_turns`` not."""
    p = params or AnalyticsParams()
    by_speaker = speaker_intervals(turns)
    if not by_speaker:  # no diarization: speech from utterances, grouped by their speaker
        pseudo = [
            Turn(start=u.start, end=u.end, speaker=u.speaker or "")
            for u in utterances
            if u.end > u.start
        ]
        by_speaker = speaker_intervals(pseudo)
    exclusive = list(exclusive_turns) or [
        Turn(start=s, end=e, speaker=spk) for spk, iv in by_speaker.items() for s, e in iv
    ]
    speech = union(iv for intervals in by_speaker.values() for iv in intervals)
    speech_time = total(speech)
    overlaps = [r for r in overlap_regions(by_speaker) if r[1] - r[0] >= p.min_overlap]
    all_gaps = speech_gaps(speech)
    gaps = [g for g in all_gaps if g[1] - g[0] >= p.min_silence]
    floor = floor_turns(exclusive, p.turn_gap)
    found = interruptions(by_speaker, p.min_overlap)

    word_counts: dict[str, int] = {}
    for word in words:
        if word.speaker is not None:
            word_counts[word.speaker] = word_counts.get(word.speaker, 0) + 1
    talk = {spk: total(iv) for spk, iv in by_speaker.items()}
    talk_sum = sum(talk.values())

    speakers: list[SpeakerStats] = []
    for spk, intervals in by_speaker.items():
        if not spk:
            continue
        others = union(iv for other, ivs in by_speaker.items() if other != spk for iv in ivs)
        own_turns = [t for t in floor if t.speaker == spk]
        n_words = word_counts.get(spk, 0)
        wpm = n_words / (talk[spk] / 60.0) if talk[spk] >= p.min_wpm_time else None
        speakers.append(
            SpeakerStats(
                speaker=spk,
                talk_time=_r(talk[spk]),
                talk_share=_r(talk[spk] / talk_sum) if talk_sum > 0 else 0.0,
                turns=len(own_turns),
                words=n_words,
                words_per_minute=round(wpm, 1) if wpm is not None else None,
                interruptions=sum(1 for f in found if f[0] == spk),
                interrupted=sum(1 for f in found if f[1] == spk),
                longest_monologue=_r(max((t.end - t.start for t in own_turns), default=0.0)),
                overlap_time=_r(total(intersect(intervals, others))),
            )
        )
    n_words = len(words)
    overall_wpm = n_words / (speech_time / 60.0) if speech_time >= p.min_wpm_time else None
    return ConversationStats(
        duration=_r(duration),
        speech_time=_r(speech_time),
        silence_time=_r(max(0.0, duration - speech_time)),
        overlap_time=_r(total(overlaps)),
        longest_silence=_r(max((g[1] - g[0] for g in all_gaps), default=0.0)),
        turns=len(floor),
        interruptions=len(found),
        speakers=speakers,
        overlaps=len(overlaps),
        silences=len(gaps),
        words=n_words,
        words_per_minute=round(overall_wpm, 1) if overall_wpm is not None else None,
        longest_monologue=_r(max((t.end - t.start for t in floor), default=0.0)),
    )
