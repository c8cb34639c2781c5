"""What a worker process runs: the job runner seam between the queue and the pipeline.

The queue manager and the worker process loop know nothing of the pipeline: they are given a
:class:`JobRunner` (picklable, because worker processes are spawned) with two methods,
``preload`` (once when a worker process starts) and ``run`` (one job). :class:`PipelineRunner`
is the real one, calling :func:`callannotate.pipeline.annotate`; tests give the manager fake
runners that sleep and report progress, so they need neither models nor recordings.

A running job is stopped cooperatively: the worker raises :class:`JobStopped` from the
progress hook once the manager asked it to stop (soft time limit). It is a ``BaseException``
so that no ``except Exception`` inside a step swallows it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from callannotate.config import Settings
from callannotate.observability.logging import job_context
from callannotate.pipeline.types import PartialHook, ProgressHook

log = logging.getLogger(__name__)


class JobStopped(BaseException):
    """The manager asked the worker to stop the job (``reason``: ``timeout``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JobRequest:
    """One job as the manager hands it to a worker process."""

    job_id: str
    audio: Path
    options: dict[str, Any]  # AnnotateOptions as JSON
    filename: str | None = None
    owner: str | None = None  # the job's owner: only their enrolled voices are matched


@dataclass(frozen=True)
class JobContext:
    """What a runner may use while it runs a job."""

    settings: Settings
    hook: ProgressHook  # raises JobStopped when the job must stop
    on_words: PartialHook  # transcribed words as they are decoded (job.partial events)


class JobRunner(Protocol):
    """Runs jobs inside a worker process; must be picklable (module-level class)."""

    def preload(self, settings: Settings) -> str | None:
        """Load what every job needs; returns an error message instead of raising."""
        ...

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        """Run one job and return its result JSON; raise to fail the job."""
        ...


class PipelineRunner:
    """The real runner: preloads the configured models, annotates with the pipeline.

    ``load_seconds`` holds each step's model load time after :meth:`preload` (the worker
    reports it to its manager, which exports it as ``callannotate_model_load_seconds``).
    """

    def __init__(self) -> None:
        self.load_seconds: dict[str, float] = {}

    def preload(self, settings: Settings) -> str | None:
        """Load the configured models; a model that cannot load is reported, not fatal."""
        if not settings.workers.preload_models:
            return None
        from callannotate.pipeline import registry

        errors: list[str] = []
        try:
            steps = registry.configured_steps(settings)
        except Exception as exc:
            return f"models config: {exc}"
        for step in steps:
            started = time.perf_counter()
            try:
                registry.preload(settings, [step])
                self.load_seconds[step] = time.perf_counter() - started
            except Exception as exc:  # any import/model error: report it, keep serving
                errors.append(f"{step}: {type(exc).__name__}: {exc}")
        if errors:
            message = "; ".join(errors)
            log.warning("models not loaded at worker start", extra={"reason": message})
            return message
        return None

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        from callannotate.pipeline import annotate
        from callannotate.pipeline.types import AnnotateOptions

        options = AnnotateOptions.model_validate(request.options)
        with job_context(request.job_id):
            annotation = annotate(
                request.audio,
                options,
                settings=ctx.settings,
                hook=ctx.hook,
                filename=request.filename,
                on_words=ctx.on_words,
                voice_owner=request.owner,
            )
        return annotation.model_dump_json()
