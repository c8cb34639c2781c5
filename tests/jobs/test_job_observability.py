"""A job's worker carries the id of the request that queued it into its log lines, and the
manager turns the worker's reports into metrics (model load, step times, audio, RTF)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

import pytest
from manager_testing import Harness, make_settings
from prometheus_client import REGISTRY
from queue_testing import new_job

from callannotate.config import Settings
from callannotate.jobs.models import JobState
from callannotate.jobs.runner import JobContext, JobRequest


class LoggingRunner:
    """Logs one line inside the job and returns an annotation-shaped result."""

    load_seconds: ClassVar[dict[str, float]] = {"vad": 0.25}

    def preload(self, settings: Settings) -> str | None:
        return None

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=1, total=1)
        logging.getLogger("callannotate.test.worker").warning("inside the job")
        return json.dumps(
            {
                "recording": {"duration": 30.0},
                "steps": [
                    {"name": "decode", "status": "done", "seconds": 0.5},
                    {"name": "transcribe", "status": "done", "seconds": 4.0},
                ],
            }
        )


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_worker_log_lines_carry_the_request_id_and_results_become_metrics(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    harness = Harness(settings, LoggingRunner())
    loads = value("callannotate_model_load_seconds_count", step="vad")
    steps = value("callannotate_pipeline_step_duration_seconds_count", step="transcribe")
    audio = value("callannotate_audio_processed_seconds_total")
    await harness.manager.start()
    try:
        job = new_job(harness.queue)
        # what the API's intake stores from X-Request-ID (tests/api/test_api_metrics.py)
        path = harness.queue.job_dir(job.id) / "job.json"
        doc = json.loads(path.read_text())
        doc["request_id"] = "req-observability-1"
        path.write_text(json.dumps(doc))
        harness.manager.wake()
        done = await harness.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
    finally:
        await harness.manager.stop()
    lines = [
        json.loads(line)
        for line in capfd.readouterr().err.splitlines()
        if line.startswith("{") and "inside the job" in line
    ]
    assert lines, "the worker's log line was not captured"
    assert lines[0]["job.id"] == job.id
    assert lines[0]["http.request.id"] == "req-observability-1"
    assert lines[0]["trace.id"] == "req-observability-1"
    assert value("callannotate_model_load_seconds_count", step="vad") - loads == 1
    assert (
        value("callannotate_pipeline_step_duration_seconds_count", step="transcribe") - steps == 1
    )
    assert value("callannotate_audio_processed_seconds_total") - audio == 30.0
