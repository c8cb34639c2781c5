"""What one export costs when rendered inside the request (docs/scale-out.md "Light work").

Builds the real annotation of the shared 30 s call sample (tests/reports/reports_sample.py)
and a long one made of that call repeated end to end (``--minutes``, default 60), then renders
every export format of each several times and prints the median time and size per format.

    .venv/bin/python benchmarks/export_cost.py [--minutes 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reports"))

from reports_sample import callsample_annotation

from callannotate.pipeline.types import Annotation
from callannotate.reports.exporters import FORMATS, export


def _shift(item: Any, offset: float) -> Any:
    """A copy of a timed item (turn, word, utterance with its words) ``offset`` s later."""
    update: dict[str, Any] = {"start": item.start + offset, "end": item.end + offset}
    words = getattr(item, "words", None)
    if isinstance(words, list):
        update["words"] = [_shift(w, offset) for w in words]
    return item.model_copy(update=update)


def repeated(base: Annotation, minutes: float) -> Annotation:
    """``base`` repeated end to end until it lasts ``minutes`` (statistics kept as they are:
    the exporters only print them)."""
    length = base.recording.duration
    copies = max(1, int(minutes * 60 / length))
    fields = ("turns", "exclusive_turns", "words", "utterances")
    out: dict[str, list[Any]] = {f: [] for f in fields}
    for k in range(copies):
        for f in fields:
            out[f].extend(_shift(item, k * length) for item in getattr(base, f))
    recording = base.recording.model_copy(update={"duration": length * copies})
    return base.model_copy(update={**out, "recording": recording})


def measure(name: str, annotation: Annotation, repeat: int) -> None:
    minutes = annotation.recording.duration / 60
    print(f"{name}: {minutes:.1f} min, {len(annotation.words)} words, "
          f"{len(annotation.utterances)} utterances")  # fmt: skip
    for fmt in FORMATS:
        times = []
        size = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            size = len(export(annotation, fmt))
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        print(f"  {fmt:<16} median {ms:8.1f} ms  {size / 1024:8.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = callsample_annotation()
    measure("call sample", base, args.repeat)
    measure("repeated call", repeated(base, args.minutes), max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
