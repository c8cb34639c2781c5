"""Liveness, readiness and service information: public routes.

They answer without credentials (load balancers, probes, version checks), so what an
anonymous or non-admin caller gets holds nothing internal: no paths, no worker processes,
no queue figures, no step classes or parameters, and a failing ``/ready`` names only the
checks that fail. An admin (or anyone with ``auth.enabled`` off, the local admin) gets the
full picture.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from callannotate import __version__
from callannotate.api.deps import ExecutorDep, OptionalPrincipal, QueueDep, SettingsDep
from callannotate.api.errors import error_json, error_responses
from callannotate.api.schemas import HealthBody, InfoBody, ReadyBody, StepModel
from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.observability.health import dependency_outcomes, is_failing, public_outcome
from callannotate.pipeline import registry
from callannotate.pipeline.readiness import check_configured_models
from callannotate.pipeline.settings import ModelsSettings, load_models_settings
from callannotate.resilience.breakers import statuses as breaker_statuses
from callannotate.security.principal import Principal

logger = logging.getLogger(__name__)

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthBody, summary="Liveness")
async def health() -> HealthBody:
    """The process is up and serving HTTP."""
    return HealthBody()


def check_models(settings: Settings) -> dict[str, str]:
    """The models file parses (typed, unknown keys rejected) and every file each configured
    step will load is present with its sha256 (memoised per file); failures name it."""
    try:
        models = load_models_settings(settings.models_config)
    except CallAnnotateError as exc:
        return {"models_config": exc.detail}
    return {"models_config": "ok", **check_configured_models(models)}


@router.get(
    "/ready",
    response_model=ReadyBody,
    summary="Readiness",
    responses=error_responses(503),
)
def ready(
    settings: SettingsDep, queue: QueueDep, executor: ExecutorDep, principal: OptionalPrincipal
) -> ReadyBody | JSONResponse:
    """Models configured and present, queue folder writable, and a job submitted now would
    start: a worker process has loaded its models (or jobs run in external workers).

    503 with the error body naming every failing check otherwise.
    """
    checks = check_models(settings)
    checks["queue"] = "ok" if queue.writable() else f"queue folder {queue.root} is not writable"
    checks.update(dependency_outcomes(settings, queue))  # disk, database, Redis, ..., contacts
    workers_ready, checks["workers"] = executor.readiness()
    if not workers_ready and checks["workers"].startswith("ok"):
        checks["workers"] = f"not ready: {checks['workers']}"
    for worker in executor.workers():
        if worker.preload_error:
            checks[f"worker:{worker.name}"] = f"models did not load: {worker.preload_error}"
    # "degraded" (contacts server down) is shown, never a reason for 503
    failing = {name: outcome for name, outcome in checks.items() if is_failing(outcome)}
    # circuit breakers guard optional dependencies: shown, never a reason for 503
    breaker_states = {status.name: status.state for status in breaker_statuses()}
    if failing:
        detail = "; ".join(f"{name}: {outcome}" for name, outcome in failing.items())
        logger.warning("not ready: %s", detail)
        if not _detailed(principal):
            detail = "failing checks: " + ", ".join(failing)
        else:
            opened = [name for name, state in breaker_states.items() if state != "closed"]
            detail += f"; circuits open: {', '.join(opened)}" if opened else ""
        return error_json(503, "not_ready", detail)
    if not _detailed(principal):
        return ReadyBody(checks={name: public_outcome(o) for name, o in checks.items()})
    return ReadyBody(checks=checks, breakers=breaker_states)


def _detailed(principal: Principal | None) -> bool:
    """Whether the caller may see internals (paths, processes, failing details)."""
    return principal is not None and principal.is_admin


_FOLDERS = re.compile(r"(?:[A-Za-z]:)?[^\s,()]*[\\/]")


def _public_model_name(model: str | None) -> str | None:
    """A model's description without folders (``whisper /srv/m/big (...)`` -> ``whisper
    big (...)``)."""
    return None if model is None else _FOLDERS.sub("", model)


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: v for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return dict(obj)
    return {"worker": str(obj)}


@router.get("/info", response_model=InfoBody, summary="Version, models, queue and workers")
def info(
    settings: SettingsDep, queue: QueueDep, executor: ExecutorDep, principal: OptionalPrincipal
) -> InfoBody:
    """Version and configured models; for an admin also the models file, step classes and
    parameters, queue depth and worker processes."""
    detailed = _detailed(principal)
    models: list[StepModel] = []
    try:
        configured = load_models_settings(settings.models_config)
    except CallAnnotateError as exc:
        logger.warning("models config unreadable: %s", exc.detail)
        configured = ModelsSettings()
    for step in configured.steps():
        section = configured.section(step)
        cls = registry.processor_class(step)
        describe = getattr(section, "describe_model", None)
        model = describe() if callable(describe) else None
        if not detailed:
            models.append(StepModel(step=step, model=_public_model_name(model)))
            continue
        models.append(
            StepModel(
                step=step,
                processor=f"{cls.__module__}:{cls.__qualname__}",
                model=model,
                params=section.model_dump(mode="json"),
            )
        )
    if not detailed:
        return InfoBody(version=__version__, models=models)
    workers = [_as_dict(w) for w in executor.workers()]
    return InfoBody(
        version=__version__,
        models_config=str(settings.models_config),
        models=models,
        queue=queue.counts(),
        embedded_workers=executor.embedded,
        workers=workers,
    )
