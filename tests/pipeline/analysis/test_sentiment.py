"""Sentiment (VADER for English, pymorphy3 lexicon for Russian) and per-speaker aggregation."""

from __future__ import annotations

import pytest

from callannotate.pipeline.analysis.sentiment import (
    SentimentAnalyzer,
    SentimentInput,
    SentimentProcessor,
    aggregate_sentiment,
    clauses,
    detect_script_language,
    label_for,
)
from callannotate.pipeline.types import ConversationStats, SpeakerStats, Utterance


@pytest.fixture(scope="module")
def analyzer() -> SentimentAnalyzer:
    a = SentimentAnalyzer()
    a.load()
    return a


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Thank you so much, that was really helpful!", "positive"),
        ("This is terrible, I am very angry.", "negative"),
        ("I am calling about my order from Tuesday.", "neutral"),
        ("Спасибо большое, вы очень помогли!", "positive"),
        ("Это ужасно, у меня ничего не работает.", "negative"),
        ("Я очень недоволен обслуживанием.", "negative"),
        ("Мой номер договора сто двадцать три.", "neutral"),
        ("Нет проблем, всё хорошо.", "positive"),
        ("Не очень хорошо получилось.", "negative"),
        ("Интернет не работает третий день", "negative"),
    ],
)
def test_labels(analyzer: SentimentAnalyzer, text: str, label: str) -> None:
    assert analyzer.sentiment(text).label == label


def test_russian_negation_flips_and_boosters_amplify(analyzer: SentimentAnalyzer) -> None:
    plain = analyzer.polarity("это хорошо", "ru")
    assert plain > 0
    assert analyzer.polarity("это не хорошо", "ru") < 0
    assert analyzer.polarity("это очень хорошо", "ru") > plain
    assert analyzer.polarity("это немного плохо", "ru") > analyzer.polarity("это плохо", "ru")


def test_russian_contrast_weighs_the_second_clause(analyzer: SentimentAnalyzer) -> None:
    assert analyzer.polarity("Оператор вежливый, но проблема ужасная", "ru") < 0


def test_inflected_forms_are_lemmatised(analyzer: SentimentAnalyzer) -> None:
    assert analyzer.polarity("отвратительного обслуживания", "ru") < -0.3
    assert analyzer.polarity("прекрасными", "ru") > 0.3


def test_other_languages_are_neutral(analyzer: SentimentAnalyzer) -> None:
    s = analyzer.sentiment("Das ist wunderbar", "de")
    assert s.label == "neutral" and s.score == 0.0


def test_helpers() -> None:
    assert detect_script_language("Привет, how are you") == "en"
    assert detect_script_language("Привет, как дела") == "ru"
    assert detect_script_language("123 !") is None
    assert clauses("Нет, всё хорошо! Спасибо") == [["нет"], ["все", "хорошо"], ["спасибо"]]
    assert label_for(0.05) == "positive" and label_for(-0.049) == "neutral"


def test_annotate_utterances_and_speakers(analyzer: SentimentAnalyzer) -> None:
    utts = [
        Utterance(start=0, end=2, speaker="A", text="Thank you, that is great!", language="en"),
        Utterance(start=2, end=3, speaker="B", text="Это возмутительно!", language="ru"),
        Utterance(start=3, end=7, speaker="B", text="Всё плохо, я разочарован.", language="ru"),
    ]
    done = analyzer.annotate_utterances(utts)
    assert [u.sentiment.label for u in done if u.sentiment] == [
        "positive",
        "negative",
        "negative",
    ]
    assert done[0].emotion is not None and done[0].emotion.label == "joy"
    assert done[1].emotion is not None and done[1].emotion.label == "anger"
    assert done[0].emotion.arousal is None  # no audio given
    stats = ConversationStats(
        duration=7,
        speech_time=7,
        silence_time=0,
        overlap_time=0,
        longest_silence=0,
        turns=3,
        interruptions=0,
        speakers=[
            SpeakerStats(
                speaker=s,
                talk_time=1,
                talk_share=0.5,
                turns=1,
                words=1,
                words_per_minute=None,
                interruptions=0,
                longest_monologue=1,
            )
            for s in ("A", "B")
        ],
    )
    out = analyzer.annotate_statistics(stats, done)
    assert out.speakers[0].sentiment is not None and out.speakers[0].sentiment.label == "positive"
    assert out.speakers[1].sentiment is not None and out.speakers[1].sentiment.label == "negative"
    assert out.speakers[1].emotion is not None
    assert out.sentiment is not None
    # duration-weighted: B's 4 s utterance weighs 4x the 1 s one
    b = [u for u in done if u.speaker == "B"]
    expected = sum(u.sentiment.score * (u.end - u.start) for u in b if u.sentiment) / 5
    assert out.speakers[1].sentiment.score == pytest.approx(expected, abs=1e-3)


def test_mixed_script_utterance_uses_its_script(analyzer: SentimentAnalyzer) -> None:
    utt = Utterance(start=0, end=1, speaker="A", text="This is awful", language="ru")
    assert analyzer.annotate_utterances([utt])[0].sentiment.label == "negative"  # type: ignore[union-attr]


def test_aggregate_of_nothing_is_none() -> None:
    assert aggregate_sentiment([]) is None


def test_processor_wraps_the_analyzer(tmp_path: object) -> None:
    calls: list[tuple[str, int, int]] = []
    proc = SentimentProcessor({"emotion_lexicon": "builtin"}, tmp_path)  # type: ignore[arg-type]

    def hook(step: str, *, completed: int, total: int) -> None:
        calls.append((step, completed, total))

    utts = [Utterance(start=0, end=1, speaker="A", text="I love it", language="en")]
    out = proc.process(SentimentInput(utterances=utts), hook)
    assert out[0].sentiment is not None and out[0].sentiment.label == "positive"
    assert calls == [("sentiment", 0, 1), ("sentiment", 1, 1)]
    assert proc.loaded
