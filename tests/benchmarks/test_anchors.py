"""The anchor figures printed by the benchmarks match ``../shared/ANCHORS.md``."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
ANCHORS_MD = (
    Path(os.environ.get("CALLANNOTATE_SHARED_DATA", REPO.parent / "shared" / "data")).parent
    / "ANCHORS.md"
)


def _anchors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("anchors", REPO / "benchmarks" / "anchors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["anchors"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_verdicts_follow_the_direction_of_each_metric() -> None:
    anchors = _anchors()
    der = anchors.ANCHORS["der_ami"]  # lower is better
    assert anchors.verdict(der, 22.8) == "better"
    assert anchors.verdict(der, 30.0) == "worse"
    assert anchors.verdict(der, 27.4) == "tie"
    top1 = anchors.ANCHORS["spk_top1"]  # higher is better
    assert anchors.verdict(top1, 97.4) == "better"
    assert anchors.verdict(top1, 80.0) == "worse"
    line = anchors.side_by_side("wer_ru", 11.1)
    assert "ours 11.1%" in line and "11.1%" in line and line.endswith("TIE")
    assert anchors.side_by_side("count_ami", 3).endswith("WORSE")
    assert "ours 3 of 12" in anchors.side_by_side("count_ami", 3)


def test_every_anchor_figure_appears_in_the_shared_anchors_file() -> None:
    if not ANCHORS_MD.is_file():
        pytest.skip(f"{ANCHORS_MD} not found (set CALLANNOTATE_SHARED_DATA)")
    text = ANCHORS_MD.read_text()
    numbers = {float(n) for n in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)", text)}
    anchors = _anchors()
    for key, anchor in anchors.ANCHORS.items():
        assert anchor.value in numbers, f"{key}: {anchor.value} is not in {ANCHORS_MD}"
