"""Merge step: speakers for words, utterance splitting, a tidy timeline."""

from __future__ import annotations

import itertools

import numpy as np

from callannotate.pipeline.analysis.alignment import (
    AlignmentParams,
    assign_speakers,
    build_annotation_parts,
    build_utterances,
    exclusive_from_turns,
    join_words,
)
from callannotate.pipeline.types import AudioBuffer, Turn, Word


def w(text: str, start: float, end: float, speaker: str | None = None) -> Word:
    return Word(text=text, start=start, end=end, probability=0.9, speaker=speaker)


TURNS = [
    Turn(start=0.0, end=2.0, speaker="A"),
    Turn(start=2.0, end=4.0, speaker="B"),
    Turn(start=6.0, end=8.0, speaker="A"),
]


def test_word_gets_speaker_of_largest_overlap() -> None:
    words = [w("one", 0.5, 1.0), w("straddles", 1.8, 2.5), w("mostly-a", 1.5, 2.1)]
    got = [x.speaker for x in assign_speakers(words, TURNS)]
    assert got == ["A", "B", "A"]


def test_word_outside_any_turn_gets_nearest_speaker() -> None:
    words = [w("late", 4.3, 4.6), w("early", 5.5, 5.8), w("after", 9.0, 9.5)]
    got = [x.speaker for x in assign_speakers(words, TURNS)]
    assert got == ["B", "A", "A"]


def test_zero_length_word_uses_containing_turn() -> None:
    assert assign_speakers([w("x", 3.0, 3.0)], TURNS)[0].speaker == "B"


def test_no_turns_leaves_words_unchanged() -> None:
    words = [w("hi", 0.0, 0.5)]
    assert assign_speakers(words, []) == words


def test_many_turns_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    bounds = np.cumsum(rng.uniform(0.2, 2.0, 200))
    turns = [
        Turn(start=float(a), end=float(b), speaker=f"S{i % 3}")
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
        if i % 5 != 4  # leave gaps
    ]
    words = []
    for _ in range(500):
        s = float(rng.uniform(0, bounds[-1] + 2))
        words.append(w("x", s, s + float(rng.uniform(0.0, 0.8))))
    fast = assign_speakers(words, turns)
    for word, got in zip(words, fast, strict=True):
        best: dict[str, float] = {}
        for t in turns:
            ov = min(t.end, word.end) - max(t.start, word.start)
            if word.end == word.start:
                ov = 1e-9 if t.start <= word.start < t.end else 0.0
            if ov > 0:
                best[t.speaker] = best.get(t.speaker, 0.0) + ov
        if best:
            assert got.speaker == max(best.items(), key=lambda kv: kv[1])[0]
        else:
            gap = min(max(t.start - word.end, word.start - t.end, 0.0) for t in turns)
            nearest = {
                t.speaker
                for t in turns
                if abs(max(t.start - word.end, word.start - t.end, 0.0) - gap) < 1e-9
            }
            assert got.speaker in nearest


def test_sanitize_sorts_clips_and_drops_empty() -> None:
    words = [
        w("b", 3.0, 2.5),
        w("  ", 1.0, 1.2),
        Word.model_construct(text="a", start=-0.5, end=0.4, probability=1.3, speaker=None),
        w("c", 9.5, 11.0),
    ]
    clean = build_annotation_parts(words, [], [], None, duration=10.0).words
    assert [x.text for x in clean] == ["a", "b", "c"]
    assert clean[0].start == 0.0 and clean[0].probability == 1.0
    assert clean[1].end == clean[1].start == 3.0
    assert clean[2].end == 10.0
    assert all(x.end >= x.start for x in clean)


def test_utterances_split_on_speaker_sentence_and_pause() -> None:
    words = [
        w("Hello", 0.0, 0.3, "A"),
        w("there.", 0.35, 0.6, "A"),
        w("How", 0.7, 0.9, "A"),
        w("are", 0.95, 1.1, "A"),
        w("you?", 1.15, 1.4, "A"),
        w("Fine", 1.5, 1.8, "B"),
        w("thanks", 1.85, 2.1, "B"),
        w("anyway", 4.0, 4.4, "B"),
    ]
    utts = build_utterances(words)
    assert [u.text for u in utts] == ["Hello there.", "How are you?", "Fine thanks", "anyway"]
    assert [u.speaker for u in utts] == ["A", "A", "B", "B"]
    assert [(u.word_start, u.word_end) for u in utts] == [(0, 2), (2, 5), (5, 7), (7, 8)]
    assert utts[2].start == 1.5 and utts[2].end == 2.1


def test_utterances_split_when_too_long() -> None:
    words = [w(f"w{i}", i * 0.5, i * 0.5 + 0.4, "A") for i in range(40)]
    utts = build_utterances(words, AlignmentParams(max_duration=5.0))
    assert len(utts) >= 4
    assert all(u.end - u.start <= 5.0 for u in utts)
    assert sum(u.word_end - u.word_start for u in utts) == 40


def test_join_words_whisper_and_bare_tokens() -> None:
    assert join_words([" Hello,", " world", "!"]) == "Hello, world!"
    assert join_words(["Привет", ",", "мир", "!"]) == "Привет, мир!"


def test_exclusive_from_overlapping_turns() -> None:
    turns = [Turn(start=0, end=5, speaker="A"), Turn(start=2, end=3, speaker="B")]
    got = exclusive_from_turns(turns)
    assert [(t.start, t.end, t.speaker) for t in got] == [
        (0, 2, "A"),
        (2, 3, "B"),
        (3, 5, "A"),
    ]


def test_build_annotation_parts_end_to_end() -> None:
    audio = AudioBuffer(np.zeros((1, 16000 * 10), dtype=np.float32), 16000)
    words = [
        Word(text=" Good", start=0.1, end=0.4, probability=0.9),
        Word(text=" morning.", start=0.45, end=0.9, probability=0.9),
        Word(text=" Hi", start=2.1, end=2.3, probability=0.8),
        Word(text=" beyond", start=9.8, end=10.7, probability=0.8),
    ]
    turns = [Turn(start=0.0, end=1.0, speaker="A"), Turn(start=2.0, end=10.0, speaker="B")]
    parts = build_annotation_parts(words, turns, turns, audio, language="en")
    assert [x.speaker for x in parts.words] == ["A", "A", "B", "B"]
    assert parts.words[-1].end == 10.0
    assert all(x.language == "en" for x in parts.words)
    assert [u.text for u in parts.utterances] == ["Good morning.", "Hi", "beyond"]
    assert parts.statistics.duration == 10.0
    assert {s.speaker for s in parts.statistics.speakers} == {"A", "B"}
    assert parts.utterances[0].sentiment is None  # no analyzer given


def test_only_missing_keeps_channel_speakers() -> None:
    words = [w("mine", 0.5, 1.0, "CH1"), w("unknown", 2.5, 3.0)]
    got = assign_speakers(words, TURNS, only_missing=True)
    assert [x.speaker for x in got] == ["CH1", "B"]
    assert [x.speaker for x in assign_speakers(words, TURNS)] == ["A", "B"]
