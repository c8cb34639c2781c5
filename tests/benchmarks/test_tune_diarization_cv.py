"""The search of ``benchmarks/tune_diarization_cv.py``: count penalty and joint stage."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def cv() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import tune_diarization_cv

        return tune_diarization_cv
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_objective_adds_the_penalty_per_wrong_count(cv: ModuleType) -> None:
    from tune_codec_threshold import Score

    right = Score(confusion=1.0, miss=0.0, fa=0.0, total=10.0, speakers=2, truth=2)
    wrong = Score(confusion=0.0, miss=1.0, fa=0.0, total=10.0, speakers=1, truth=3)
    assert cv.objective([right, wrong], 0.0) == pytest.approx(10.0)
    assert cv.objective([right, wrong], 1.5) == pytest.approx(11.5)


def test_joint_search_crosses_a_ridge_the_coordinate_search_cannot(cv: ModuleType) -> None:
    # Best at (1, 1); moving either setting alone from (0, 0) costs more.
    table = {(0.0, 0.0): 1.0, (1.0, 0.0): 2.0, (0.0, 1.0): 2.0, (1.0, 1.0): 0.0}
    values = [[0.0, 1.0], [0.0, 1.0]]
    start = (0.0, 0.0)
    assert cv.coordinate_search(table.__getitem__, start, values, 2) == start
    assert cv.joint_search(table.__getitem__, start, values, [0, 1]) == (1.0, 1.0)
    assert cv.joint_search(table.__getitem__, start, values, [0]) == start
