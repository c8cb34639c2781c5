"""Creates processors from ``config/models.yaml`` and keeps one loaded instance per process.

Workers call :func:`get_processor` for every job; the model is loaded on first use (or at
worker start with :func:`preload`) and reused afterwards.
"""

from __future__ import annotations

import importlib
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from callannotate.config import Settings
from callannotate.errors import ModelUnavailable
from callannotate.pipeline.base import MLProcessor

_lock = threading.Lock()
_instances: dict[tuple[str, str], MLProcessor[Any, Any]] = {}


@lru_cache(maxsize=8)
def _read_yaml(path: str, mtime: float) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path}: expected a mapping of step name to settings")
    return data


def load_models_config(path: Path) -> dict[str, dict[str, Any]]:
    """The parsed models file; every value is a mapping of that step's parameters."""
    if not path.is_file():
        raise ModelUnavailable(f"models config {path} does not exist")
    return _read_yaml(str(path), path.stat().st_mtime)


def step_config(settings: Settings, step: str) -> dict[str, Any]:
    config = load_models_config(settings.models_config)
    if step not in config:
        raise ModelUnavailable(f"step {step!r} is not configured in {settings.models_config}")
    return dict(config[step])


def configured_steps(settings: Settings) -> list[str]:
    return list(load_models_config(settings.models_config))


def get_processor(settings: Settings, step: str) -> MLProcessor[Any, Any]:
    """The process-wide instance of ``step``'s processor, created on first use (not loaded)."""
    key = (str(settings.models_config), step)
    with _lock:
        proc = _instances.get(key)
        if proc is None:
            params = step_config(settings, step)
            target = str(params.get("class", ""))
            module_name, _, class_name = target.partition(":")
            if not module_name or not class_name:
                raise ModelUnavailable(f"step {step!r} has no `class: module:Class` entry")
            cls = getattr(importlib.import_module(module_name), class_name)
            proc = cls(params, settings.model_cache, threads=settings.workers.threads)
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


def release_all() -> None:
    with _lock:
        for proc in _instances.values():
            proc.cleanup()
        _instances.clear()
