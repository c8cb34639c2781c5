"""Emotion: lexicon categories and the acoustic arousal estimate on synthetic and real audio."""

from __future__ import annotations

import numpy as np
import pytest

from callannotate.pipeline.analysis.emotion import (
    EMOTIONS,
    acoustic_arousal,
    dominant,
    load_emotion_lexicon,
    prosody,
    text_emotion_scores,
)
from callannotate.pipeline.analysis.sentiment import SentimentAnalyzer
from callannotate.pipeline.types import AudioBuffer, Utterance

RATE = 16000


def voice(f0: float, seconds: float, amplitude: float) -> np.ndarray:
    """A buzzy harmonic tone: crude voiced speech at pitch ``f0``."""
    t = np.arange(int(RATE * seconds)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    return (amplitude * x / np.max(np.abs(x))).astype(np.float32)


def test_lexicons_load() -> None:
    en = load_emotion_lexicon("en")
    ru = load_emotion_lexicon("ru")
    assert "joy" in en["happy"] and "anger" in ru["злиться"]
    assert all(c in EMOTIONS for cats in ru.values() for c in cats)


def test_nrc_lexicon_is_opt_in_and_offline() -> None:
    pytest.importorskip("nrclex", reason="nrclex (optional, research-use lexicon) not installed")
    nrc = load_emotion_lexicon("en", "nrc")
    assert len(nrc) > 3000 and "fear" in nrc["abandon"]


def test_scores_and_label() -> None:
    lex = load_emotion_lexicon("en")
    scores = text_emotion_scores(["happy", "angry", "angry", "table"], lex)
    assert scores["anger"] == pytest.approx(2 / 3, abs=1e-3)
    assert dominant(scores) == "anger"
    assert dominant(text_emotion_scores(["table"], lex)) == "neutral"


def test_negated_emotion_words_do_not_count() -> None:
    a = SentimentAnalyzer()
    assert a.emotion_scores("I am not happy", "en")["joy"] == 0.0
    assert a.emotion_scores("Я не рад", "ru")["joy"] == 0.0
    assert a.emotion_scores("Я очень рад!", "ru")["joy"] == 1.0


def test_prosody_measures_pitch_and_level() -> None:
    low = prosody(voice(120.0, 1.0, 0.1), RATE)
    high = prosody(voice(240.0, 1.0, 0.5), RATE)
    assert low.pitch_semitones is not None and high.pitch_semitones is not None
    assert high.pitch_semitones - low.pitch_semitones == pytest.approx(12.0, abs=1.0)
    assert low.loudness_db is not None and high.loudness_db is not None
    assert high.loudness_db - low.loudness_db == pytest.approx(14.0, abs=1.5)
    silent = prosody(np.zeros(RATE, dtype=np.float32), RATE)
    assert silent.voiced_frames == 0


def test_arousal_is_relative_to_the_speaker() -> None:
    calm = [voice(110.0, 1.0, 0.1) for _ in range(3)]
    excited = voice(180.0, 1.0, 0.6)
    gap = np.zeros(RATE // 2, dtype=np.float32)
    pieces, utts, t = [], [], 0.0
    for i, seg in enumerate([*calm, excited]):
        pieces += [seg, gap]
        utts.append(Utterance(start=t, end=t + 1.0, speaker="A", text=f"u{i}"))
        t += 1.5
    utts.append(Utterance(start=t, end=t + 0.05, speaker="A", text="tiny"))
    audio = AudioBuffer(np.concatenate(pieces)[None, :], RATE)
    levels = acoustic_arousal(utts, audio)
    assert levels[-1] is None  # too short to measure
    calm_levels = [x for x in levels[:3] if x is not None]
    assert len(calm_levels) == 3 and all(0.3 < x < 0.7 for x in calm_levels)
    assert levels[3] is not None and levels[3] > 0.85
