"""Fixtures for the report tests: sample annotations and completed jobs in a real queue."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reports_sample import (
    CALL_WAV,
    callsample_annotation,
    russian_annotation,
)

from callannotate.config import ApiSettings, Settings
from callannotate.pipeline.types import Annotation


@pytest.fixture(scope="session")
def ru_annotation() -> Annotation:
    return russian_annotation()


@pytest.fixture(scope="session")
def call_annotation() -> Annotation:
    if not CALL_WAV.is_file():
        pytest.skip(
            f"shared evaluation data not found at {CALL_WAV} (set CALLANNOTATE_SHARED_DATA)"
        )
    return callsample_annotation()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api=ApiSettings(embedded_workers=False))
