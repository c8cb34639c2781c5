"""Start a real Celery worker with a fake job runner (tests and benchmarks).

``python tests/jobs/celery_worker_main.py CONCURRENCY STEPS STEP_S [QUEUES [RUNNER]]``
(RUNNER: ``sleep``, default; ``stubborn``: blocks without progress reports; ``deaf``: also
ignores the soft time limit, so only the hard limit ends it; ``flaky``: the first two
attempts fail with a transient I/O error, counted in ``DATA_DIR/flaky-failures``;
``slowstart``: each child takes ``SLOW_START_S`` seconds (default 6) to preload, like real
models, longer than Celery's default wait for a new child's first message); settings
come from the environment (``CALLANNOTATE_DATA_DIR``, ``CALLANNOTATE_JOBS__BROKER_URL``,
``CALLANNOTATE_JOBS__QUEUE_PREFIX``, ...). The runner is :class:`fake_runners.SleepRunner`,
inherited by the worker's forked children, so jobs are short and need no models.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time

from fake_runners import SleepRunner, StubbornRunner
from flaky_runners import FlakyIORunner

from callannotate.config import Settings
from callannotate.jobs.executors.celery import run_celery_worker
from callannotate.jobs.runner import JobContext, JobRequest
from callannotate.observability.logging import configure_logging


class DeafRunner(SleepRunner):
    """Swallows every exception (the soft time limit too) and keeps computing."""

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=0, total=1)
        while True:
            try:
                time.sleep(600)
            except Exception:
                continue


def main() -> int:
    concurrency, steps, step_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    queues = sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] else None
    kind = sys.argv[5] if len(sys.argv) > 5 else "sleep"
    settings = Settings()
    configure_logging(settings.log)
    runners = {"sleep": SleepRunner(steps=steps, step_s=step_s)}
    runners["stubborn"] = StubbornRunner(block_s=600.0)
    runners["deaf"] = DeafRunner()
    runners["flaky"] = FlakyIORunner(Path(settings.data_dir) / "flaky-failures", failures=2)
    slow_start_s = float(os.environ.get("SLOW_START_S", "6"))
    runners["slowstart"] = SleepRunner(steps=steps, step_s=step_s, preload_s=slow_start_s)
    runner = runners[kind]
    return run_celery_worker(settings, runner, concurrency=concurrency, queues=queues)


if __name__ == "__main__":
    raise SystemExit(main())
