"""Emotion: basic categories from a word lexicon (ru, en) and acoustic arousal (any language).

Text emotion counts lexicon hits per category (Ekman's six: joy, anger, sadness, fear,
surprise, disgust) over lemmas; the label is the category with most hits, ``neutral`` when
none hit. The built-in lexicon (``lexicons/emotion.json``) is written for this project. The
NRC Emotion Lexicon shipped by the ``nrclex`` package can replace it for English
(``lexicon="nrc"``), but its terms allow research use only, so it is never the default.

Acoustic arousal is estimated per utterance from loudness and pitch (autocorrelation F0)
relative to the same speaker's baseline in the same recording, and mapped to ``[0, 1]``
with a logistic: 0.5 is the speaker's usual level, higher is louder/higher-pitched/more
varied speech. It needs no language model and works for any language.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
import numpy.typing as npt

from callannotate.errors import ModelUnavailable
from callannotate.pipeline.types import AudioBuffer, Utterance

ANALYSIS_RATE = 8000
EMOTIONS: tuple[str, ...] = ("joy", "anger", "sadness", "fear", "surprise", "disgust")

Lexicon = dict[str, frozenset[str]]  # lemma -> categories


@lru_cache(maxsize=4)
def load_emotion_lexicon(language: str, source: Literal["builtin", "nrc"] = "builtin") -> Lexicon:
    """The lemma -> categories map for ``language`` ('en' or 'ru')."""
    if source == "nrc" and language == "en":
        try:
            from nrclex.core import (  # research use only: opt-in
                _load_bundled_lexicon,
            )
        except ImportError as exc:
            raise ModelUnavailable(
                "emotion_lexicon 'nrc' needs the nrclex package (pip install --no-deps nrclex)"
            ) from exc

        raw: dict[str, list[str]] = _load_bundled_lexicon()
        return {
            word: frozenset(c for c in cats if c in EMOTIONS)
            for word, cats in raw.items()
            if any(c in EMOTIONS for c in cats)
        }
    path = resources.files("callannotate.pipeline.analysis").joinpath("lexicons/emotion.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    table: dict[str, set[str]] = {}
    for category, words in data.get(language, {}).items():
        for word in words:
            table.setdefault(word, set()).add(category)
    return {word: frozenset(cats) for word, cats in table.items()}


def text_emotion_scores(lemmas: Sequence[str], lexicon: Lexicon) -> dict[str, float]:
    """Share of lexicon hits per category (sums to 1 when anything hit, else all zero)."""
    counts = dict.fromkeys(EMOTIONS, 0.0)
    for lemma in lemmas:
        for category in lexicon.get(lemma, ()):
            counts[category] += 1.0
    hits = sum(counts.values())
    if hits:
        counts = {k: round(v / hits, 3) for k, v in counts.items()}
    return counts


def dominant(scores: dict[str, float]) -> str:
    best = max(EMOTIONS, key=lambda k: scores.get(k, 0.0))
    return best if scores.get(best, 0.0) > 0 else "neutral"


# ----------------------------------------------------------------------------- acoustics


@dataclass(frozen=True)
class ProsodyFeatures:
    """Loudness and pitch of one stretch of speech; ``None`` when nothing is voiced."""

    loudness_db: float | None
    pitch_semitones: float | None
    pitch_spread: float | None
    voiced_frames: int


def _frames(x: npt.NDArray[np.float32], size: int, hop: int) -> npt.NDArray[np.float32]:
    if x.shape[0] < size:
        return np.zeros((0, size), dtype=np.float32)
    count = 1 + (x.shape[0] - size) // hop
    idx = np.arange(size)[None, :] + hop * np.arange(count)[:, None]
    out: npt.NDArray[np.float32] = x[idx]
    return out


def prosody(
    samples: npt.NDArray[np.float32],
    sample_rate: int,
    *,
    fmin: float = 70.0,
    fmax: float = 400.0,
) -> ProsodyFeatures:
    """Loudness (dBFS of the active frames) and F0 statistics of a mono segment.

    Audio above 8 kHz is first resampled to 8 kHz (telephone band; 4x less work at 16 kHz).
    """
    if sample_rate > ANALYSIS_RATE and sample_rate % ANALYSIS_RATE == 0:
        from scipy.signal import resample_poly

        samples = resample_poly(samples, 1, sample_rate // ANALYSIS_RATE).astype(np.float32)
        sample_rate = ANALYSIS_RATE
    size = int(0.04 * sample_rate)
    hop = int(0.02 * sample_rate)
    frames = _frames(samples.astype(np.float32), size, hop)
    if frames.shape[0] == 0:
        return ProsodyFeatures(None, None, None, 0)
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames**2, axis=1) + 1e-12)
    db = 20.0 * np.log10(rms + 1e-12)
    active = (db > db.max() - 30.0) & (db > -60.0)
    if not active.any():
        return ProsodyFeatures(None, None, None, 0)
    loud = float(np.mean(db[active]))
    voiced = frames[active] * np.hanning(size).astype(np.float32)
    nfft = 1 << (2 * size - 1).bit_length()
    spec = np.fft.rfft(voiced, n=nfft, axis=1)
    acf = np.fft.irfft(np.abs(spec) ** 2, n=nfft, axis=1)[:, :size]
    acf = acf / (acf[:, :1] + 1e-12)
    lo = max(1, int(sample_rate / fmax))
    hi = min(size - 1, int(sample_rate / fmin))
    if hi <= lo:
        return ProsodyFeatures(loud, None, None, 0)
    window = acf[:, lo:hi]
    lag = np.argmax(window, axis=1) + lo
    peak = window[np.arange(window.shape[0]), lag - lo]
    periodic = peak > 0.45
    if periodic.sum() < 3:
        return ProsodyFeatures(loud, None, None, int(periodic.sum()))
    f0 = sample_rate / lag[periodic].astype(np.float64)
    semis = 12.0 * np.log2(f0 / 100.0)
    return ProsodyFeatures(
        loudness_db=loud,
        pitch_semitones=float(np.median(semis)),
        pitch_spread=float(np.std(semis)),
        voiced_frames=int(periodic.sum()),
    )


def _robust_z(values: list[float | None], floor: float) -> list[float]:
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return [0.0 for _ in values]
    med = float(np.median(known))
    mad = float(np.median(np.abs(np.asarray(known) - med))) * 1.4826
    scale = max(mad, floor)
    return [0.0 if v is None else (v - med) / scale for v in values]


def acoustic_arousal(utterances: Sequence[Utterance], audio: AudioBuffer) -> list[float | None]:
    """Arousal in ``[0, 1]`` per utterance, relative to each speaker's own baseline.

    ``None`` for utterances with no usable audio (too short or silent). For a speaker with a
    single measurable utterance the value is 0.5.
    """
    mono = audio.mono()
    rate = audio.sample_rate
    feats: list[ProsodyFeatures | None] = []
    for utt in utterances:
        a, b = int(utt.start * rate), int(utt.end * rate)
        segment = mono[max(0, a) : max(0, b)]
        feats.append(prosody(segment, rate) if segment.shape[0] >= int(0.1 * rate) else None)
    out: list[float | None] = [None] * len(utterances)
    speakers = {u.speaker for u in utterances}
    for speaker in speakers:
        idx = [
            i
            for i, u in enumerate(utterances)
            if u.speaker == speaker and (f := feats[i]) is not None and f.loudness_db is not None
        ]
        if not idx:
            continue
        chosen = [f for i in idx if (f := feats[i]) is not None]
        z_loud = _robust_z([f.loudness_db for f in chosen], floor=3.0)
        z_pitch = _robust_z([f.pitch_semitones for f in chosen], floor=1.5)
        z_spread = _robust_z([f.pitch_spread for f in chosen], floor=0.75)
        for k, i in enumerate(idx):
            raw = 0.5 * z_loud[k] + 0.35 * z_pitch[k] + 0.15 * z_spread[k]
            out[i] = round(1.0 / (1.0 + math.exp(-raw)), 3)
    return out
