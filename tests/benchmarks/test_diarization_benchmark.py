"""The diarization benchmark's input delay: audio moved later, turns moved back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from callannotate.pipeline.diarization import DiarizationResult
from callannotate.pipeline.types import AudioBuffer, Turn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `anchors`
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_diarization", BENCHMARKS / "diarization.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_delayed_prepends_silence_on_every_channel() -> None:
    bench = _benchmark()
    samples = np.ones((2, 16000), dtype=np.float32)
    out = bench.delayed(AudioBuffer(samples, 16000), 0.25)
    assert out.samples.shape == (2, 20000)
    assert not out.samples[:, :4000].any() and out.samples[:, 4000:].all()
    assert bench.delayed(AudioBuffer(samples, 16000), 0.0).samples is samples


def test_turns_are_moved_back_and_clipped_at_zero() -> None:
    bench = _benchmark()
    result = DiarizationResult(
        turns=[
            Turn(start=0.1, end=0.2, speaker="A"),  # inside the added silence: dropped
            Turn(start=0.2, end=1.5, speaker="A"),  # starts before 0 once moved: clipped
            Turn(start=2.0, end=3.0, speaker="B"),
        ]
    )
    ann = bench.to_annotation(result, "clip", delay_s=0.25)
    spans = sorted(
        (round(s.start, 3), round(s.end, 3), label)
        for s, _, label in ann.itertracks(yield_label=True)
    )
    assert spans == [(0.0, 1.25, "A"), (1.75, 2.75, "B")]
