"""A real Celery worker whose fake runner reports what the pipeline does: model load times,
step seconds and the recording's duration (tests/integration/test_celery_metrics.py).

``python tests/observability/celery_metrics_worker.py CONCURRENCY STEP_S``; settings come from
the environment (``CALLANNOTATE_DATA_DIR``, ``CALLANNOTATE_JOBS__*``,
``CALLANNOTATE_METRICS__PORT``).
The runner is inherited by the worker's forked children, so jobs need no models.
"""

from __future__ import annotations

import json
import os
import sys
import time

from callannotate.config import Settings
from callannotate.jobs.executors.celery import run_celery_worker
from callannotate.jobs.runner import JobContext, JobRequest
from callannotate.observability.logging import configure_logging

AUDIO_S = 12.0  # the "recording" of every job


class TimedRunner:
    """Preloads two "models" (0.25 s and 0.5 s) and runs a job as one ``decode`` step."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.load_seconds: dict[str, float] = {}

    def preload(self, settings: Settings) -> str | None:
        self.load_seconds = {"vad": 0.25, "transcribe": 0.5}
        return None

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        started = time.perf_counter()
        ctx.hook("decode", completed=0, total=1)
        time.sleep(self.step_s)
        ctx.hook("decode", completed=1, total=1)
        seconds = time.perf_counter() - started
        return json.dumps(
            {
                "job_id": request.job_id,
                "pid": os.getpid(),
                "recording": {"duration": AUDIO_S},
                "steps": [{"name": "decode", "status": "done", "seconds": seconds}],
            }
        )


def main() -> int:
    concurrency, step_s = int(sys.argv[1]), float(sys.argv[2])
    settings = Settings()
    configure_logging(settings.log)
    return run_celery_worker(settings, TimedRunner(step_s), concurrency=concurrency)


if __name__ == "__main__":
    raise SystemExit(main())
