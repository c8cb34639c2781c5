"""The processor contract every model-backed pipeline step follows.

A processor is created from its typed section of ``config/models.yaml`` (a
:class:`~callannotate.pipeline.settings.StepSettings`; a plain mapping is validated into it,
so benchmarks can pass overrides), loads its model once (``load_model``), serves many
``process`` calls, and frees memory in ``cleanup``. Heavy imports (onnxruntime, ctranslate2,
torch) belong inside ``load_model``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from callannotate.pipeline.settings import StepSettings, parse_section
from callannotate.pipeline.types import ProgressHook, null_hook

In = TypeVar("In")
Out = TypeVar("Out")


class MLProcessor(ABC, Generic[In, Out]):
    """A model-backed step. Subclasses set ``name`` and ``settings_type`` (narrowing the
    ``settings`` annotation) and implement the three methods."""

    name: str = "processor"
    settings_type: ClassVar[type[StepSettings]] = StepSettings
    settings: StepSettings

    def __init__(
        self, settings: StepSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        self.settings = parse_section(self.settings_type, settings)
        self.cache_dir = cache_dir
        self.threads = threads
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def ensure_loaded(self) -> None:
        """Load the model once; safe to call from several threads."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self.load_model()
                self._loaded = True

    @abstractmethod
    def load_model(self) -> None:
        """Locate, verify and load the weights. Raise ``ModelUnavailable`` when missing."""

    @abstractmethod
    def process(self, data: In, hook: ProgressHook = null_hook) -> Out:
        """Run the step on one input."""

    def cleanup(self) -> None:
        """Release the model; a later ``ensure_loaded`` loads it again."""
        self._loaded = False

    def describe(self) -> str:
        """Short model description for reports and ``/info``."""
        return self.name
