"""Fixtures for the voices tests: a shared model cache and a fake embedder."""

from __future__ import annotations

from pathlib import Path

import pytest
from voices_testing import FakeEmbedder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test session, so CAM++ is exported to ONNX once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()
