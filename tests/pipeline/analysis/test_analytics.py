"""Conversation analytics on hand-built timelines with known answers."""

from __future__ import annotations

import pytest

from callannotate.pipeline.analysis.analytics import (
    AnalyticsParams,
    compute_statistics,
    intersect,
    overlap_regions,
    union,
)
from callannotate.pipeline.types import ConversationStats, Turn, Utterance, Word


def t(start: float, end: float, speaker: str) -> Turn:
    return Turn(start=start, end=end, speaker=speaker)


def words_for(speaker: str, start: float, end: float, n: int) -> list[Word]:
    step = (end - start) / n
    return [
        Word(
            text="w",
            start=start + i * step,
            end=start + (i + 0.8) * step,
            probability=1.0,
            speaker=speaker,
        )
        for i in range(n)
    ]


# A talks 0-10, B interrupts at 9 and talks to 15 (A stopped at 10: interruption);
# A back-channels 12-12.5 inside B's turn (overlap, no interruption); pause 15-18;
# A talks 18-30; B talks 30-31 after a 0 s gap.
TURNS = [
    t(0, 10, "A"),
    t(9, 15, "B"),
    t(12, 12.5, "A"),
    t(18, 30, "A"),
    t(30, 31, "B"),
]
EXCLUSIVE = [
    t(0, 9, "A"),
    t(9, 12, "B"),
    t(12, 12.5, "A"),
    t(12.5, 15, "B"),
    t(18, 30, "A"),
    t(30, 31, "B"),
]


def stats_for(**kw: object) -> ConversationStats:
    words = words_for("A", 0, 9, 30) + words_for("B", 9, 15, 12) + words_for("A", 18, 30, 40)
    return compute_statistics(
        turns=TURNS,
        exclusive_turns=EXCLUSIVE,
        words=words,
        utterances=[],
        duration=40.0,
        **kw,  # type: ignore[arg-type]
    )


def test_interval_helpers() -> None:
    assert union([(3, 4), (0, 1), (0.5, 2), (2, 2.5)]) == [(0, 2.5), (3, 4)]
    assert intersect([(0, 5), (6, 8)], [(4, 7)]) == [(4, 5), (6, 7)]
    assert overlap_regions({"A": [(0, 5)], "B": [(4, 6)], "C": [(5.5, 7)]}) == [(4, 5), (5.5, 6)]


def test_overall_figures() -> None:
    s = stats_for()
    assert s.duration == 40.0
    assert s.speech_time == pytest.approx(15 + 13)  # 0-15 and 18-31
    assert s.silence_time == pytest.approx(12)
    assert s.overlap_time == pytest.approx(1.0 + 0.5)  # 9-10 and 12-12.5
    assert s.overlaps == 2
    assert s.silences == 1 and s.longest_silence == pytest.approx(3.0)
    assert s.interruptions == 1
    assert s.words == 82
    assert s.words_per_minute == pytest.approx(82 / (28 / 60), abs=0.1)


def test_per_speaker_figures() -> None:
    s = stats_for()
    a, b = s.speakers
    assert (a.speaker, b.speaker) == ("A", "B")
    assert a.talk_time == pytest.approx(10 + 0.5 + 12)
    assert b.talk_time == pytest.approx(6 + 1)
    assert a.talk_share + b.talk_share == pytest.approx(1.0, abs=1e-3)
    assert b.interruptions == 1 and a.interrupted == 1
    assert a.interruptions == 0 and b.interrupted == 0
    assert a.overlap_time == pytest.approx(1.5) and b.overlap_time == pytest.approx(1.5)
    # floor turns: A 0-9 | B 9-12 | A 12-12.5 | B 12.5-15 | A 18-30 | B 30-31
    assert a.turns == 3 and b.turns == 3
    assert a.longest_monologue == pytest.approx(12.0)
    assert s.turns == 6 and s.longest_monologue == pytest.approx(12.0)
    assert a.words == 70 and b.words == 12
    assert b.words_per_minute == pytest.approx(12 / (7 / 60), abs=0.1)


def test_turn_gap_merges_same_speaker_segments() -> None:
    exclusive = [t(0, 2, "A"), t(2.5, 4, "A"), t(10, 11, "A")]
    s = compute_statistics(
        turns=exclusive,
        exclusive_turns=exclusive,
        words=[],
        utterances=[],
        duration=12.0,
        params=AnalyticsParams(turn_gap=2.0),
    )
    assert s.turns == 2
    assert s.speakers[0].longest_monologue == pytest.approx(4.0)
    assert s.speakers[0].words_per_minute == 0.0


def test_without_diarization_uses_utterances() -> None:
    utts = [
        Utterance(start=1.0, end=3.0, speaker=None, text="hello"),
        Utterance(start=5.0, end=6.0, speaker=None, text="bye"),
    ]
    s = compute_statistics(turns=[], exclusive_turns=[], words=[], utterances=utts, duration=8.0)
    assert s.speech_time == pytest.approx(3.0)
    assert s.speakers == []
    assert s.longest_silence == pytest.approx(2.0)


def test_empty_recording() -> None:
    s = compute_statistics(turns=[], exclusive_turns=[], words=[], utterances=[], duration=5.0)
    assert s.speech_time == 0 and s.silence_time == 5.0 and s.turns == 0
    assert s.words_per_minute is None
