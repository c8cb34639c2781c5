"""Cost of one built-in alert check (``Conditions.evaluate``) over a large file queue.

The check runs in a thread every ``alerts.interval_s`` (30 s); it reuses the metrics
collector's folder listings, reads each running job's ``job.json`` (started_at) and lease, and
samples the job counters. Measured on a store of 10,000 jobs (9,000 completed, 500 failed,
400 queued, 100 running): the first check (every queued job.json read once) and the settled
checks after it.

    .venv/bin/python benchmarks/alerts.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState
from callannotate.observability.alerts.conditions import Conditions
from metrics import fill_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        queue = FileQueue(settings.queue_dir, settings.queue)
        counts = {
            JobState.COMPLETED: 9000,
            JobState.FAILED: 500,
            JobState.QUEUED: 400,
            JobState.RUNNING: 100,
        }
        fill_store(queue, counts)
        time.sleep(1.1)  # let the folders settle (the collector reuses settled listings)
        conditions = Conditions(settings, queue, None)
        t0 = time.perf_counter()
        conditions.evaluate()
        first = (time.perf_counter() - t0) * 1000
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            conditions.evaluate()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"alert check, 10,000 jobs: first {first:.1f} ms; settled "
            f"p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms ({args.repeats} checks)"
        )


if __name__ == "__main__":
    main()
