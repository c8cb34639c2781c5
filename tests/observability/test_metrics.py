"""Metrics of jobs, results and the scrape-time collector, on a real file queue."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from queue_testing_local import submit

from callannotate.config import MetricsSettings, QueueSettings
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability import collector
from callannotate.observability.metrics import (
    failure_reason,
    observe_job_event,
    observe_model_load,
    observe_result,
    render,
)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("error", "state", "reason"),
    [
        ("cancelled", "cancelled", "cancelled"),
        ("timeout: the job ran longer than workers.job_timeout_s (1 s)", "failed", "timeout"),
        ("worker process died (exit code -9)", "failed", "worker_died"),
        # the file queue's words for a job whose runner died (a SIGKILLed Celery child, a
        # lost worker machine): retried, then given up
        ("interrupted: the process running the job died (attempt 1 of 3)", "queued", "worker_died"),
        (
            "interrupted: the process running the job died; gave up after 3 attempts",
            "failed",
            "worker_died",
        ),
        ("invalid_audio: no audio stream", "failed", "invalid_audio"),
        ("model_unavailable: whisper missing", "failed", "model_unavailable"),
        ("made_up_code: x", "failed", "error"),
        ("ValueError: job 3f2a... user 42 broke", "failed", "error"),
        (None, "failed", "error"),
    ],
)
def test_failure_reasons_are_a_fixed_vocabulary(error: str | None, state: str, reason: str) -> None:
    assert failure_reason(error, state=state) == reason


def test_job_events_count_submissions_outcomes_and_durations() -> None:
    before = {
        "sub": value("callannotate_jobs_submitted_total"),
        "done": value("callannotate_jobs_completed_total"),
        "fail": value("callannotate_jobs_failed_total", reason="invalid_audio"),
        "retry": value("callannotate_jobs_retried_total", reason="worker_died"),
        "dur": value("callannotate_job_duration_seconds_count", outcome="completed"),
    }

    def emit(kind: str, job_id: str, **data: object) -> None:
        observe_job_event(JobEvent(type=kind, job_id=job_id, owner="u", data=dict(data)))  # type: ignore[arg-type]

    emit("job.queued", "a" * 32, state="queued", attempts=0)
    emit("job.started", "a" * 32, worker="w0", attempt=1)
    emit("job.queued", "a" * 32, state="queued", attempts=1, reason="worker process died (1)")
    emit("job.started", "a" * 32, worker="w0", attempt=2)
    emit("job.completed", "a" * 32, attempts=2)
    emit("job.queued", "b" * 32, state="queued", attempts=0)
    emit("job.started", "b" * 32, worker="w0", attempt=1)
    emit("job.failed", "b" * 32, state="failed", error="invalid_audio: not audio")

    assert value("callannotate_jobs_submitted_total") - before["sub"] == 2
    assert value("callannotate_jobs_completed_total") - before["done"] == 1
    assert value("callannotate_jobs_failed_total", reason="invalid_audio") - before["fail"] == 1
    assert value("callannotate_jobs_retried_total", reason="worker_died") - before["retry"] == 1
    assert (
        value("callannotate_job_duration_seconds_count", outcome="completed") - before["dur"] == 1
    )
    # no job id ever becomes a label value
    assert "a" * 32 not in render().decode()


def test_results_give_step_times_rtf_and_audio_seconds() -> None:
    steps_before = value("callannotate_pipeline_step_duration_seconds_count", step="transcribe")
    audio_before = value("callannotate_audio_processed_seconds_total")
    rtf_before = value("callannotate_job_real_time_factor_sum")
    result = {
        "recording": {"duration": 120.0},
        "steps": [
            {"name": "transcribe", "status": "done", "seconds": 12.5},
            {"name": "emotion", "status": "skipped", "seconds": 0.0},
            {"name": "diarize", "status": "done", "seconds": "bad"},
        ],
    }
    observe_result(result, elapsed_s=30.0)
    assert (
        value("callannotate_pipeline_step_duration_seconds_count", step="transcribe") - steps_before
        == 1
    )
    assert value("callannotate_pipeline_step_duration_seconds_count", step="emotion") == 0
    assert value("callannotate_audio_processed_seconds_total") - audio_before == 120.0
    assert value("callannotate_job_real_time_factor_sum") - rtf_before == pytest.approx(0.25)
    observe_result({"steps": "garbage", "recording": None}, elapsed_s=1.0)  # ignored, no raise


def test_model_load_times() -> None:
    before = value("callannotate_model_load_seconds_count", step="vad")
    observe_model_load({"vad": 0.3, "bad": "x", 7: 1.0})
    observe_model_load(None)
    assert value("callannotate_model_load_seconds_count", step="vad") - before == 1


def test_collector_reads_the_queue_at_scrape_time(tmp_path: Path) -> None:
    queue = FileQueue(tmp_path / "queue", QueueSettings())
    old = submit(queue, created_at=time.time() - 600)
    submit(queue)
    running = submit(queue, created_at=time.time() - 3600)
    claimed = queue.claim("host:1:w0")  # the oldest one
    assert claimed is not None and claimed.id == running.id
    done = submit(queue, created_at=time.time() - 7200)
    assert queue.claim("host:1:w0") is not None
    queue.complete(done.id, b"{}")
    source = collector.install(queue, None, MetricsSettings(queue_wait_sla_s=42))
    try:
        families = {f.name: f for f in text_string_to_metric_families(render().decode())}
        states = {s.labels["state"]: s.value for s in families["callannotate_jobs"].samples}
        assert states == {"queued": 2, "running": 1, "completed": 1, "failed": 0, "archived": 0}
        assert families["callannotate_queue_depth"].samples[0].value == 2
        oldest = families["callannotate_queue_oldest_waiting_seconds"].samples[0].value
        assert 590 < oldest < 700, oldest
        assert families["callannotate_worker_heartbeat_age_seconds"].samples[0].value < 60
        assert families["callannotate_workers_alive"].samples[0].value == 0
        assert families["callannotate_data_dir_free_bytes"].samples[0].value > 0
        sla = {s.labels["kind"]: s.value for s in families["callannotate_sla_seconds"].samples}
        assert sla["queue_wait"] == 42
        # settled folders are not listed again; a job leaving incoming changes the figures
        for folder in ("incoming", "completed"):
            past = time.time() - 10
            os.utime(queue.root / folder, (past, past))
        render()
        assert queue.claim("host:1:w1") is not None  # takes the oldest queued job (old)
        fam = {f.name: f for f in text_string_to_metric_families(render().decode())}
        assert fam["callannotate_queue_depth"].samples[0].value == 1
        assert fam["callannotate_queue_oldest_waiting_seconds"].samples[0].value < 60
        assert old.id not in render().decode()
    finally:
        collector.uninstall(source)
    assert "callannotate_queue_depth" not in render().decode()


def test_a_stale_lease_shows_as_heartbeat_age(tmp_path: Path) -> None:
    queue = FileQueue(tmp_path / "queue", QueueSettings(lease_seconds=60))
    job = submit(queue)
    assert queue.claim("host:1:w0") is not None
    lock = queue.job_dir(job.id) / ".lock"
    lease = json.loads(lock.read_text())
    stale = time.time() + 60 - 500  # last renewed 500 s ago
    lease["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(stale))
    lock.write_text(json.dumps(lease))
    source = collector.install(queue, None, MetricsSettings())
    try:
        fam = {f.name: f for f in text_string_to_metric_families(render().decode())}
        age = fam["callannotate_worker_heartbeat_age_seconds"].samples[0].value
        assert 490 < age < 560
    finally:
        collector.uninstall(source)
