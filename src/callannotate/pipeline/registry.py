"""Creates processors from the typed ``config/models.yaml`` and keeps one loaded instance per
process.

Each step name maps to one processor class (:func:`processor_class`, imported lazily so the
API process does not import model code it never runs). Workers call :func:`get_processor`
for every job; the model is loaded on first use (or at worker start with :func:`preload`)
and reused afterwards.
"""

from __future__ import annotations

import threading
from typing import Any

from callannotate.config import Settings
from callannotate.errors import ConfigError
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.settings import ModelsSettings, load_models_settings

_lock = threading.Lock()
_instances: dict[tuple[str, str], MLProcessor[Any, Any]] = {}


def processor_class(step: str) -> type[MLProcessor[Any, Any]]:
    """The class implementing ``step`` (a section name of ``models.yaml``)."""
    if step == "preprocess":
        from callannotate.pipeline.audio.preprocess import Preprocessor

        return Preprocessor
    if step == "vad":
        from callannotate.pipeline.audio.vad import VoiceActivityDetector

        return VoiceActivityDetector
    if step == "embedding":
        from callannotate.pipeline.speakers.embedding import SpeakerEmbedder

        return SpeakerEmbedder
    if step == "diarize":
        from callannotate.pipeline.diarization import Diarizer

        return Diarizer
    if step == "transcription":
        from callannotate.pipeline.asr.transcription import Transcriber

        return Transcriber
    if step == "sentiment":
        from callannotate.pipeline.analysis.sentiment import SentimentProcessor

        return SentimentProcessor
    if step == "recognition":
        from callannotate.voices.service import Identifier

        return Identifier
    raise ConfigError(f"no processor for step {step!r}")


def models_settings(settings: Settings) -> ModelsSettings:
    """The typed models file of ``settings`` (``ConfigError`` when it is missing or wrong)."""
    return load_models_settings(settings.models_config)


def step_config(settings: Settings, step: str) -> dict[str, Any]:
    """``step``'s resolved section as a plain mapping (benchmarks apply overrides to it and
    pass it back to the processor, which validates it again)."""
    return models_settings(settings).section(step).model_dump()


def configured_steps(settings: Settings) -> list[str]:
    return models_settings(settings).steps()


def get_processor(settings: Settings, step: str) -> MLProcessor[Any, Any]:
    """The process-wide instance of ``step``'s processor, created on first use (not loaded)."""
    section = models_settings(settings).section(step)
    key = (str(settings.models_config), step)
    with _lock:
        proc = _instances.get(key)
        if proc is None:
            proc = processor_class(step)(section, settings.model_cache, settings.workers.threads)
            _instances[key] = proc
    return proc


def loaded_processor(settings: Settings, step: str) -> MLProcessor[Any, Any]:
    proc = get_processor(settings, step)
    proc.ensure_loaded()
    return proc


def preload(settings: Settings, steps: list[str] | None = None) -> None:
    """Load every configured step's model now (worker start-up)."""
    for step in steps or configured_steps(settings):
        loaded_processor(settings, step)


def loaded_steps() -> list[str]:
    """Steps whose model is loaded in this process (the worker registry reports them)."""
    with _lock:
        return sorted({step for (_, step), proc in _instances.items() if proc.loaded})


def release_all() -> None:
    with _lock:
        for proc in _instances.values():
            proc.cleanup()
        _instances.clear()
