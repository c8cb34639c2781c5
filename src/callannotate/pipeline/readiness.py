"""Which model files the configured steps will load, and whether they are all present.

``/ready`` and ``callannotate config check`` ask :func:`check_configured_models`; the answer
follows the typed settings exactly (a ``transcription`` naming a model that does not exist,
or a ``path:`` that is not there, is reported by name), and each file's sha256 is checked
once per process (memoised by size and mtime), as loading it would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from callannotate.errors import CallAnnotateError, ModelUnavailable
from callannotate.pipeline.asr.whisper_models import check_packaged, own_model_dir
from callannotate.pipeline.models import model_file
from callannotate.pipeline.settings import ModelSource, ModelsSettings, TranscriptionSettings

Check = Callable[[], object]


def _whisper(name: str | None, fallback: str, path: Path | None, sha256: str | None) -> Check:
    if path is not None:
        return lambda: own_model_dir(Path(path), sha256)
    return lambda: check_packaged(name or fallback)


def _transcription_checks(cfg: TranscriptionSettings) -> Iterator[tuple[str, Check]]:
    yield "transcription", _whisper(cfg.model, cfg.model, cfg.path, cfg.sha256)
    stream = cfg.streaming
    yield (
        "transcription.streaming.model",
        _whisper(stream.model, cfg.model, stream.path, None),
    )
    yield (
        "transcription.streaming.multilingual_model",
        _whisper(stream.multilingual_model, cfg.model, stream.multilingual_path, None),
    )


def _source(source: ModelSource) -> Check:
    return lambda: model_file(source)


def model_checks(models: ModelsSettings) -> Iterator[tuple[str, Check]]:
    """``(place, check)`` for every model file the configured steps load."""
    if models.vad is not None:
        yield "vad", _source(models.vad)
    if models.embedding is not None:
        yield "embedding", _source(models.embedding)
    if models.diarize is not None:
        d = models.diarize
        yield "diarize.segmentation", _source(d.segmentation)
        yield "diarize.embedding", _source(d.embedding)
        if d.count_weight < 1.0:
            yield "diarize.count_model", _source(d.count_model)
    if models.transcription is not None:
        yield from _transcription_checks(models.transcription)
    if models.recognition is not None:
        r = models.recognition
        if r.ge2e.enabled:
            yield "recognition.ge2e", _source(r.ge2e)
        if models.embedding is None:  # no shared embedder: recognition loads its own
            yield "recognition.embedding", _source(r.embedding)


def check_configured_models(models: ModelsSettings) -> dict[str, str]:
    """``{"model:<step>": "ok" | what is missing}`` for every configured step.

    A step without model files (``preprocess``, ``sentiment``) is ``ok``; a step with
    several files reports each missing one as ``place: detail``.
    """
    problems: dict[str, list[str]] = {step: [] for step in models.steps()}
    for place, check in model_checks(models):
        step = place.split(".", 1)[0]
        try:
            check()
        except CallAnnotateError as exc:
            problems[step].append(f"{place}: {exc.detail}")
        except OSError as exc:
            problems[step].append(f"{place}: {ModelUnavailable(str(exc)).detail}")
    return {f"model:{step}": "; ".join(found) or "ok" for step, found in problems.items()}
