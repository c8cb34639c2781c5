"""Helpers for the voices tests: FSDD location and a fake embedder."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callannotate.pipeline.speakers.embedding import EMBEDDING_DIM, SpeakerEmbedder, l2_normalize


def shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


FSDD = shared_data() / "speakers" / "fsdd" / "recordings"
needs_fsdd = pytest.mark.skipif(
    not FSDD.is_dir(), reason=f"{FSDD} not found (set CALLANNOTATE_SHARED_DATA)"
)


def fsdd_takes(speaker: str, digits: Sequence[int], index: int) -> list[Path]:
    return [FSDD / f"{d}_{speaker}_{index}.wav" for d in digits]


def fsdd_speaker(path: Path) -> str:
    m = re.match(r"\d_([a-z]+)_\d+\.wav$", path.name)
    assert m
    return m.group(1)


class FakeEmbedder(SpeakerEmbedder):
    """Unit-test double: the embedding is a fixed random direction chosen by the audio's
    loudest sample value (so tests control "who" speaks by the amplitude)."""

    def __init__(self) -> None:
        super().__init__({}, Path("/nonexistent"))
        self._loaded = True
        self.calls = 0

    def load_model(self) -> None:  # pragma: no cover - never loads anything
        pass

    @staticmethod
    def direction(key: int) -> np.ndarray:
        rng = np.random.default_rng(key)
        return l2_normalize(rng.standard_normal(EMBEDDING_DIM).astype(np.float32))

    def embed_batch(self, waves: Sequence[Any], hook: Any = None) -> np.ndarray:
        self.calls += 1
        out = [self.direction(round(float(np.max(np.abs(w))) * 10)) for w in waves]
        return np.stack(out).astype(np.float32)
