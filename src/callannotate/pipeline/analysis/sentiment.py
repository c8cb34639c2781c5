"""Sentiment and emotion per utterance and per speaker, Russian and English, fully offline.

* English sentiment: VADER (``vaderSentiment`` ships its lexicon, MIT); the compound score
  is the polarity, labels at +-0.05 as VADER recommends.
* Russian sentiment: a lexicon over pymorphy3 lemmas (``lexicons/ru_sentiment.json``,
  written for this project, VADER's -4..4 scale) with negation ("не работает"), boosters
  ("очень"), contrast ("но") and VADER's normalisation ``s / sqrt(s^2 + 15)``.
* Emotion: lexicon categories (see :mod:`callannotate.pipeline.analysis.emotion`), valence = the
  sentiment polarity, arousal from pitch/energy when audio is given.
* Per speaker: the duration-weighted mean polarity of their utterances.

Other languages get a neutral sentiment with score 0 (and acoustic arousal only).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

from callannotate.pipeline.analysis.emotion import (
    EMOTIONS,
    acoustic_arousal,
    dominant,
    load_emotion_lexicon,
    text_emotion_scores,
)
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.settings import SentimentSettings
from callannotate.pipeline.types import (
    AudioBuffer,
    ConversationStats,
    Emotion,
    ProgressHook,
    Sentiment,
    Step,
    Utterance,
    null_hook,
)

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
_LATIN = re.compile(r"[a-z]", re.IGNORECASE)
_CLAUSE = re.compile(r"[,.;:!?…—–()\[\]\"«»]+|\s-\s")
THRESHOLD = 0.05
EN_NEGATORS = frozenset(
    [
        "not",
        "no",
        "never",
        "nor",
        "cannot",
        "can't",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "wasn't",
        "aren't",
        "won't",
    ]
)


def label_for(score: float) -> Literal["positive", "neutral", "negative"]:
    if score >= THRESHOLD:
        return "positive"
    if score <= -THRESHOLD:
        return "negative"
    return "neutral"


def detect_script_language(text: str) -> str | None:
    """'ru' or 'en' by the letters used; ``None`` when the text has no letters."""
    cyr = len(_CYRILLIC.findall(text))
    lat = len(_LATIN.findall(text))
    if cyr == 0 and lat == 0:
        return None
    return "ru" if cyr >= lat else "en"


def tokenize(text: str) -> list[str]:
    return [t.lower().replace("ё", "е") for t in _TOKEN.findall(text)]


def clauses(text: str) -> list[list[str]]:
    """Lower-cased word tokens per clause (split at punctuation)."""
    return [tok for part in _CLAUSE.split(text) if (tok := tokenize(part))]


class _Lemmatizer(Protocol):
    def __call__(self, token: str) -> str: ...


@dataclass(frozen=True)
class RuLexicon:
    lemmas: dict[str, float]
    negated: dict[str, float]
    negators: frozenset[str]
    boosters: dict[str, float]
    contrast: frozenset[str]


@lru_cache(maxsize=1)
def load_ru_lexicon() -> RuLexicon:
    path = resources.files("callannotate.pipeline.analysis").joinpath("lexicons/ru_sentiment.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return RuLexicon(
        lemmas={k: float(v) for k, v in data["lemmas"].items()},
        negated={k: float(v) for k, v in data["negated"].items()},
        negators=frozenset(data["negators"]),
        boosters={k: float(v) for k, v in data["boosters"].items()},
        contrast=frozenset(data["contrast"]),
    )


def negated_flags(clause: Sequence[str], negators: frozenset[str]) -> list[bool]:
    """True for each lemma with a negator at most two words before it in the clause."""
    return [any(w in negators for w in clause[max(0, i - 2) : i]) for i in range(len(clause))]


def ru_polarity(clauses: Sequence[Sequence[str]], lexicon: RuLexicon, exclaim: int = 0) -> float:
    """VADER-style compound polarity in ``[-1, 1]`` for Russian lemmas split into clauses.

    Negation and boosters reach at most a few words back and never across a clause
    boundary (punctuation), so "нет, всё хорошо" stays positive.
    """
    scores: list[float] = []
    flat: list[str] = []
    for clause in clauses:
        flags = negated_flags(clause, lexicon.negators)
        for i, lemma in enumerate(clause):
            negated = flags[i]
            if negated and lemma in lexicon.negated:
                value = lexicon.negated[lemma]
            elif lemma in lexicon.lemmas and lemma not in lexicon.boosters:
                value = lexicon.lemmas[lemma]
                window = clause[max(0, i - 3) : i]
                for back, word in enumerate(reversed(window)):
                    boost = lexicon.boosters.get(word)
                    if boost is not None:
                        damp = 1.0 if back == 0 else 0.9 if back == 1 else 0.8
                        value += math.copysign(1.0, value) * boost * damp * 3.0
                if negated:
                    value *= -0.74
            else:
                value = 0.0
            scores.append(value)
            flat.append(lemma)
    for i, lemma in enumerate(flat):  # "но": what follows weighs more than what precedes
        if lemma in lexicon.contrast:
            scores = [s * 0.5 for s in scores[:i]] + [s * 1.5 for s in scores[i:]]
            break
    total = sum(scores)
    if total:
        total += math.copysign(min(exclaim, 4) * 0.292, total)
    return max(-1.0, min(1.0, total / math.sqrt(total * total + 15.0)))


def _en_lemma_candidates(token: str) -> list[str]:
    out = [token]
    for suffix, repl in (
        ("ies", "y"),
        ("es", ""),
        ("s", ""),
        ("ed", ""),
        ("ed", "e"),
        ("ing", ""),
        ("ing", "e"),
        ("ly", ""),
    ):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            out.append(token[: -len(suffix)] + repl)
    return out


class SentimentAnalyzer:
    """Scores text and utterances. Loads VADER and pymorphy3 on first use (thread-safe)."""

    def __init__(self, emotion_lexicon: Literal["builtin", "nrc"] = "builtin") -> None:
        self.emotion_lexicon = emotion_lexicon
        self._lock = threading.Lock()
        self._vader: Any = None
        self._morph: Any = None

    def load(self) -> None:
        with self._lock:
            if self._vader is None:
                from vaderSentiment.vaderSentiment import (
                    SentimentIntensityAnalyzer,
                )

                self._vader = SentimentIntensityAnalyzer()
            if self._morph is None:
                import pymorphy3

                self._morph = pymorphy3.MorphAnalyzer(lang="ru")
            load_ru_lexicon()

    def _ru_lemma(self, token: str) -> str:
        if self._morph is None:
            self.load()
        return str(self._morph.parse(token)[0].normal_form).replace("ё", "е")

    def lemma_clauses(self, text: str, language: str) -> list[list[str]]:
        """Lemmas (ru) or lower-cased tokens (other languages) per clause."""
        parts = clauses(text)
        if language == "ru":
            return [[self._ru_lemma(t) for t in part] for part in parts]
        return parts

    def polarity(self, text: str, language: str | None = None) -> float:
        """Polarity in ``[-1, 1]``; 0 for languages other than ru/en."""
        language = language or detect_script_language(text)
        if language == "en":
            if self._vader is None:
                self.load()
            return float(self._vader.polarity_scores(text)["compound"])
        if language == "ru":
            return ru_polarity(self.lemma_clauses(text, "ru"), load_ru_lexicon(), text.count("!"))
        return 0.0

    def sentiment(self, text: str, language: str | None = None) -> Sentiment:
        score = round(self.polarity(text, language), 3)
        return Sentiment(label=label_for(score), score=score)

    def emotion_scores(self, text: str, language: str | None = None) -> dict[str, float]:
        language = language or detect_script_language(text)
        if language not in ("ru", "en"):
            return dict.fromkeys(EMOTIONS, 0.0)
        source: Literal["builtin", "nrc"] = (
            self.emotion_lexicon if language == "en" else ("builtin")
        )
        lexicon = load_emotion_lexicon(language, source)
        negators = load_ru_lexicon().negators if language == "ru" else EN_NEGATORS
        kept: list[str] = []
        for clause in self.lemma_clauses(text, language):
            flags = negated_flags(clause, negators)
            kept.extend(t for t, neg in zip(clause, flags, strict=True) if not neg)
        if language == "en":
            kept = [next((c for c in _en_lemma_candidates(t) if c in lexicon), t) for t in kept]
        return text_emotion_scores(kept, lexicon)

    def _utterance_language(self, utt: Utterance) -> str | None:
        script = detect_script_language(utt.text)
        if utt.language in ("ru", "en") and script is not None and script != utt.language:
            return script  # e.g. an English phrase inside a Russian call
        return utt.language or script

    def annotate_utterances(
        self, utterances: Sequence[Utterance], audio: AudioBuffer | None = None
    ) -> list[Utterance]:
        """Utterances with ``sentiment`` and ``emotion`` filled in."""
        arousal = (
            acoustic_arousal(utterances, audio) if audio is not None else ([None] * len(utterances))
        )
        out: list[Utterance] = []
        for utt, level in zip(utterances, arousal, strict=True):
            language = self._utterance_language(utt)
            senti = self.sentiment(utt.text, language)
            scores = self.emotion_scores(utt.text, language)
            emotion = Emotion(
                label=dominant(scores),
                scores=scores,
                valence=senti.score,
                arousal=level,
            )
            out.append(utt.model_copy(update={"sentiment": senti, "emotion": emotion}))
        return out

    def annotate_statistics(
        self, stats: ConversationStats, utterances: Sequence[Utterance]
    ) -> ConversationStats:
        """Per-speaker and overall sentiment/emotion: duration-weighted utterance means."""
        speakers = [
            s.model_copy(
                update={
                    "sentiment": aggregate_sentiment(
                        [u for u in utterances if u.speaker == s.speaker]
                    ),
                    "emotion": aggregate_emotion([u for u in utterances if u.speaker == s.speaker]),
                }
            )
            for s in stats.speakers
        ]
        return stats.model_copy(
            update={"speakers": speakers, "sentiment": aggregate_sentiment(utterances)}
        )


def _weight(utt: Utterance) -> float:
    return max(utt.end - utt.start, 0.2)


def aggregate_sentiment(utterances: Sequence[Utterance]) -> Sentiment | None:
    scored = [u for u in utterances if u.sentiment is not None]
    if not scored:
        return None
    weights = [_weight(u) for u in scored]
    mean = sum(w * u.sentiment.score for w, u in zip(weights, scored, strict=True) if u.sentiment)
    score = round(mean / sum(weights), 3)
    return Sentiment(label=label_for(score), score=score)


def aggregate_emotion(utterances: Sequence[Utterance]) -> Emotion | None:
    scored = [u for u in utterances if u.emotion is not None]
    if not scored:
        return None
    weights = [_weight(u) for u in scored]
    totals = dict.fromkeys(EMOTIONS, 0.0)
    for w, u in zip(weights, scored, strict=True):
        if u.emotion is not None:
            for k in EMOTIONS:
                totals[k] += w * u.emotion.scores.get(k, 0.0)
    norm = sum(totals.values())
    scores = {k: round(v / norm, 3) if norm else 0.0 for k, v in totals.items()}
    valences = [
        (w, u.emotion.valence)
        for w, u in zip(weights, scored, strict=True)
        if u.emotion is not None and u.emotion.valence is not None
    ]
    arousals = [
        (w, u.emotion.arousal)
        for w, u in zip(weights, scored, strict=True)
        if u.emotion is not None and u.emotion.arousal is not None
    ]
    return Emotion(
        label=dominant(scores),
        scores=scores,
        valence=round(sum(w * v for w, v in valences) / sum(w for w, _ in valences), 3)
        if valences
        else None,
        arousal=round(sum(w * a for w, a in arousals) / sum(w for w, _ in arousals), 3)
        if arousals
        else None,
    )


@dataclass(frozen=True)
class SentimentInput:
    utterances: list[Utterance]
    audio: AudioBuffer | None = None


class SentimentProcessor(MLProcessor[SentimentInput, list[Utterance]]):
    """The ``sentiment`` step (:class:`~callannotate.pipeline.settings.SentimentSettings`)."""

    name: Step = Step.SENTIMENT
    settings_type = SentimentSettings
    settings: SentimentSettings

    def __init__(
        self, settings: SentimentSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self.analyzer = SentimentAnalyzer(self.settings.emotion_lexicon)

    def load_model(self) -> None:
        self.analyzer.load()

    def process(self, data: SentimentInput, hook: ProgressHook = null_hook) -> list[Utterance]:
        self.ensure_loaded()
        hook(self.name, completed=0, total=1)
        out = self.analyzer.annotate_utterances(data.utterances, data.audio)
        hook(self.name, completed=1, total=1)
        return out

    def describe(self) -> str:
        return f"vader+ru-lexicon/{self.analyzer.emotion_lexicon}-emotions+prosody"
