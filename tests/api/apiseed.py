"""Small recordings and results the API tests seed their stores with."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from callannotate.pipeline.types import (
    Annotation,
    RecordingInfo,
    Speaker,
    Turn,
    Utterance,
    Word,
)


def tone_wav(path: Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """A mono 16-bit WAV of a 300 Hz tone."""
    t = np.arange(int(rate * seconds)) / rate
    data = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def one_word_annotation() -> Annotation:
    """The result of a 1 s call with one speaker saying "hello"."""
    return Annotation(
        recording=RecordingInfo(
            filename="call.wav", duration=1.0, sample_rate=8000, channels=1, format="wav"
        ),
        speakers=[Speaker(label="SPEAKER_00", speech_duration=0.8)],
        turns=[Turn(start=0.1, end=0.9, speaker="SPEAKER_00")],
        words=[Word(text="hello", start=0.1, end=0.5, probability=0.9, speaker="SPEAKER_00")],
        utterances=[Utterance(start=0.1, end=0.5, speaker="SPEAKER_00", text="hello", word_end=1)],
    )
