"""Liveness, readiness and service information."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from callannotate import __version__
from callannotate.api.deps import CurrentPrincipal, ManagerDep, QueueDep, SettingsDep
from callannotate.api.errors import error_json, error_responses
from callannotate.api.schemas import HealthBody, InfoBody, ReadyBody, StepModel
from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.pipeline import models as model_files
from callannotate.pipeline import registry

logger = logging.getLogger(__name__)

router = APIRouter(tags=["service"])

# Parameters that are structural, not interesting in /info.
_HIDDEN_PARAMS = {"class"}


@router.get("/health", response_model=HealthBody, summary="Liveness")
async def health() -> HealthBody:
    """The process is up and serving HTTP."""
    return HealthBody()


def _model_prefixes(params: dict[str, Any]) -> list[str]:
    """Prefixes of model-file declarations in a step's section (``file``, ``x_file``...)."""
    prefixes = []
    for key in params:
        if key.endswith("file") and not key.endswith("_files"):
            prefix = key[: -len("file")]
            if prefix and not prefix.endswith("_"):
                continue
            if params.get(prefix + "package") or params.get(prefix + "path"):
                prefixes.append(prefix)
    return prefixes


def check_models(settings: Settings) -> dict[str, str]:
    """Cheap model check: the config parses, each step's class module exists (not imported),
    and every declared model file is present with its sha256 (memoised per file)."""
    checks: dict[str, str] = {}
    try:
        config = registry.load_models_config(settings.models_config)
    except CallAnnotateError as exc:
        return {"models_config": exc.detail}
    except Exception as exc:  # YAML syntax errors and the like
        return {"models_config": f"{type(exc).__name__}: {exc}"}
    checks["models_config"] = "ok"
    for step, params in config.items():
        if not isinstance(params, dict):
            checks[f"model:{step}"] = "section is not a mapping"
            continue
        module = str(params.get("class", "")).partition(":")[0]
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            checks[f"model:{step}"] = f"processor module {module!r} is not importable"
            continue
        try:
            for section in (params, *(v for v in params.values() if isinstance(v, dict))):
                for prefix in _model_prefixes(section):
                    model_files.model_file(section, prefix=prefix)
        except CallAnnotateError as exc:
            checks[f"model:{step}"] = exc.detail
            continue
        checks[f"model:{step}"] = "ok"
    return checks


@router.get(
    "/ready",
    response_model=ReadyBody,
    summary="Readiness",
    responses=error_responses(503),
)
def ready(
    settings: SettingsDep, queue: QueueDep, manager: ManagerDep, principal: CurrentPrincipal
) -> ReadyBody | JSONResponse:
    """Models configured and present, queue folder writable, workers alive.

    503 with the error body naming every failing check otherwise.
    """
    checks = check_models(settings)
    checks["queue"] = "ok" if queue.writable() else f"queue folder {queue.root} is not writable"
    if manager is not None:
        checks["workers"] = "ok" if manager.alive() else "the embedded worker pool is not running"
        for worker in manager.workers():
            if worker.preload_error:
                checks[f"worker:{worker.name}"] = f"models did not load: {worker.preload_error}"
    else:
        checks["workers"] = "ok (external workers)"
    failing = {name: outcome for name, outcome in checks.items() if not outcome.startswith("ok")}
    if failing:
        detail = "; ".join(f"{name}: {outcome}" for name, outcome in failing.items())
        logger.warning("not ready: %s", detail)
        return error_json(503, "not_ready", detail)
    return ReadyBody(checks=checks)


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
    settings: SettingsDep, queue: QueueDep, manager: ManagerDep, principal: CurrentPrincipal
) -> InfoBody:
    models: list[StepModel] = []
    try:
        config = registry.load_models_config(settings.models_config)
    except Exception as exc:
        logger.warning("models config unreadable: %s", exc)
        config = {}
    for step, params in config.items():
        if not isinstance(params, dict):
            continue
        shown = {k: v for k, v in params.items() if k not in _HIDDEN_PARAMS}
        model = params.get("model")
        models.append(
            StepModel(
                step=step,
                processor=str(params.get("class", "")),
                model=str(model) if model is not None else None,
                params=shown,
            )
        )
    workers = [_as_dict(w) for w in manager.workers()] if manager is not None else []
    return InfoBody(
        version=__version__,
        models_config=str(settings.models_config),
        models=models,
        queue=queue.counts(),
        embedded_workers=manager is not None,
        workers=workers,
    )
