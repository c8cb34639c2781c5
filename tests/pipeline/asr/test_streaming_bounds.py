"""The streaming transcriber keeps a bounded window of audio, whatever the client sends.

Continuous sound that the VAD takes for speech but in which Whisper hears no words (noise,
music) never ends an utterance nor commits a word: the buffer, and the audio of every
decode, grew with the stream (issue 15.8).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from callannotate.pipeline.asr.streaming import StreamingOptions, StreamingTranscriber
from callannotate.pipeline.asr.transcription import WhisperEngine
from callannotate.pipeline.types import Float32Array

SR = 16000


class WordlessEngine:
    """Hears nothing, records how much audio each decode got."""

    multilingual = False

    def __init__(self) -> None:
        self.lengths: list[float] = []

    def decode(self, audio: Float32Array, language: str | None, **kw: Any) -> Any:
        self.lengths.append(audio.shape[0] / SR)
        return [], "en", 1.0, False


class AlwaysSpeech:
    def __init__(self) -> None:
        self._carry = 0

    def push(self, samples: Float32Array) -> Float32Array:
        total = self._carry + samples.shape[0]
        self._carry = total % 512
        return np.ones(total // 512, dtype=np.float32)


def test_buffer_and_decodes_stay_bounded_when_nothing_is_ever_committed() -> None:
    engine = WordlessEngine()
    options = StreamingOptions(language="en", min_chunk_s=1.0, max_buffer_s=20.0)
    stream = StreamingTranscriber(cast(WhisperEngine, engine), options, vad=AlwaysSpeech())
    noise = np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32)
    for _ in range(180):  # three minutes, one second at a time
        stream.push(noise)
        assert stream.state.buffer.shape[0] <= 1.5 * 20.0 * SR + SR
    assert stream.audio_time == 180.0
    assert max(engine.lengths) <= 1.5 * 20.0 + 1.0
    assert stream.state.buffer_start > 150.0  # the window follows the stream
    final = stream.finish()
    assert final[-1].type == "final" and final[-1].words == []
