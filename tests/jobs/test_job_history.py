"""``Job.history``: every attempt with its outcome and error, written by the file queue for
both executors; transient errors of a job are retried, permanent ones fail it at once (real
worker processes with fake runners)."""

from __future__ import annotations

from pathlib import Path

from flaky_runners import FlakyIORunner, UndecodableRunner
from manager_testing import Harness, make_settings
from queue_testing import MakeJob, new_job

from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState
from callannotate.resilience.retry import is_transient


def test_each_attempt_is_recorded_with_its_outcome(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    assert queue.get(job.id).history == []
    assert queue.claim("host:1:w1") is not None
    running = queue.get(job.id).history
    assert [(a.attempt, a.worker, a.outcome) for a in running] == [(1, "host:1:w1", "running")]
    queue.fail(job.id, "OSError: [Errno 5] Input/output error", retry=True)
    assert queue.claim("host:1:w2") is not None
    queue.complete(job.id, b"{}")
    history = queue.get(job.id).history
    assert [(a.attempt, a.outcome, a.error) for a in history] == [
        (1, "retried", "OSError: [Errno 5] Input/output error"),
        (2, "completed", None),
    ]
    assert all(a.ended_at is not None and a.ended_at >= a.started_at for a in history)


def test_final_failure_release_and_cancel_are_recorded(queue: FileQueue, make_job: MakeJob) -> None:
    released = make_job()
    assert queue.claim("w") is not None
    queue.release(released.id)
    assert queue.claim("w") is not None
    queue.fail(released.id, "invalid_audio: not audio")
    assert [(a.attempt, a.outcome) for a in queue.get(released.id).history] == [
        (1, "released"),
        (1, "failed"),
    ]
    assert queue.get(released.id).history[-1].error == "invalid_audio: not audio"

    cancelled = make_job()
    assert queue.claim("w") is not None
    queue.cancel(cancelled.id)
    queue.mark_cancelled(cancelled.id)
    assert queue.get(cancelled.id).history[-1].outcome == "cancelled"


def test_a_dead_runners_attempt_is_closed_by_the_next_one(tmp_path: Path) -> None:
    settings = QueueSettings(max_attempts=3)
    first = FileQueue(tmp_path / "q", settings)
    job = new_job(first)
    assert first.claim_job(job.id, "host:1:celery") is not None
    first.forget(job.id)  # the process dies: its run lock is gone
    other = FileQueue(tmp_path / "q", settings)
    assert other.claim_job(job.id, "host:2:celery") is not None
    history = other.get(job.id).history
    assert [(a.attempt, a.worker, a.outcome) for a in history] == [
        (1, "host:1:celery", "interrupted"),
        (2, "host:2:celery", "running"),
    ]


def test_transient_and_permanent_errors() -> None:
    assert is_transient(OSError(5, "Input/output error"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(FileNotFoundError(2, "No such file"))
    assert not is_transient(ValueError("bad option"))


async def test_transient_error_is_retried_and_each_attempt_is_in_the_history(
    tmp_path: Path,
) -> None:
    h = Harness(make_settings(tmp_path), FlakyIORunner(tmp_path / "failures", failures=2))
    done = await h.run_one()
    assert done.state == JobState.COMPLETED and done.attempts == 3
    assert [a.outcome for a in done.history] == ["retried", "retried", "completed"]
    assert all("Input/output error" in (a.error or "") for a in done.history[:2])
    assert h.types(done.id).count("job.queued") == 2  # announced back in the queue twice


async def test_transient_error_fails_after_max_attempts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.queue.max_attempts = 2
    h = Harness(settings, FlakyIORunner(tmp_path / "failures", failures=10))
    done = await h.run_one()
    assert [a.outcome for a in done.history] == ["retried", "failed"]
    assert done.error is not None and "Input/output error" in done.error


async def test_undecodable_audio_fails_at_once(tmp_path: Path) -> None:
    h = Harness(make_settings(tmp_path), UndecodableRunner())
    done = await h.run_one()
    assert done.attempts == 1 and done.error == "invalid_audio: the file is not decodable audio"
    assert [(a.outcome, a.error) for a in done.history] == [("failed", done.error)]
