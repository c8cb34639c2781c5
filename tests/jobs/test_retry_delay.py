"""Retry backoff of the local executor (issue 18): a job failed with a transient error goes
back to incoming with ``not_before`` (exponential backoff with jitter, ``queue.retry_backoff_*``)
and :meth:`FileQueue.claim` skips it until then, claiming the other jobs meanwhile. The wait is
in ``job.json``, so it holds across a restart, and ``Job.history`` shows it per attempt."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

from flaky_runners import FlakyIORunner
from manager_testing import Harness, make_settings
from queue_testing import new_job

from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import Job, JobState, utcnow
from callannotate.resilience.retry import RetryPolicy

EIO = "OSError: [Errno 5] Input/output error"


def _queue(root: Path, backoff_s: float = 30.0, max_s: float = 600.0) -> FileQueue:
    settings = QueueSettings(max_attempts=5, retry_backoff_s=backoff_s, retry_backoff_max_s=max_s)
    return FileQueue(root / "queue", settings)


def _make_due(queue: FileQueue, job: Job) -> None:
    """Move a waiting job's ``not_before`` into the past, as the clock would."""
    path = queue.job_dir(job.id) / "job.json"
    record = Job.model_validate_json(path.read_bytes())
    record.not_before = utcnow() - timedelta(seconds=1)
    path.write_text(record.model_dump_json())


def test_policy_delay_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, initial_s=1.0, max_s=10.0)
    for attempt, low in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(low <= d <= min(low + 1.0, 10.0) for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(9) == 10.0


def test_retried_job_waits_out_its_backoff(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    job = new_job(queue)
    assert queue.claim("w") is not None
    before = utcnow()
    back = queue.fail(job.id, EIO, retry=True)
    assert back.state == JobState.QUEUED and back.not_before is not None
    assert before + timedelta(seconds=30) <= back.not_before <= utcnow() + timedelta(seconds=60)
    assert queue.claim("w") is None  # not yet due

    _make_due(queue, job)
    again = queue.claim("w")
    assert again is not None and again.id == job.id and again.attempts == 2
    assert again.not_before is None  # cleared once claimed
    queue.complete(job.id, b"{}")
    history = queue.get(job.id).history
    assert [(a.attempt, a.outcome, a.error) for a in history] == [
        (1, "retried", EIO),
        (2, "completed", None),
    ]
    delay = history[0].retry_delay_s
    assert delay is not None and 30.0 <= delay <= 60.0
    assert history[1].retry_delay_s is None


def test_other_jobs_are_claimed_while_one_waits(tmp_path: Path) -> None:
    queue = _queue(tmp_path)
    urgent = new_job(queue, priority=9)
    assert queue.claim("w") is not None
    queue.fail(urgent.id, EIO, retry=True)
    low, later = new_job(queue, priority=1), new_job(queue, priority=1)
    # the waiting urgent job does not block the others, and they keep FIFO order
    claimed = [queue.claim("w") for _ in range(3)]
    assert [c.id if c else None for c in claimed] == [low.id, later.id, None]
    _make_due(queue, urgent)
    extra = new_job(queue, priority=5)
    first = queue.claim("w")  # due again: its priority counts as before
    assert first is not None and first.id == urgent.id
    second = queue.claim("w")
    assert second is not None and second.id == extra.id


def test_backoff_doubles_per_attempt_and_survives_a_restart(tmp_path: Path) -> None:
    queue = _queue(tmp_path, backoff_s=10.0)
    job = new_job(queue)
    for attempt in (1, 2, 3):
        assert queue.claim("w") is not None
        queue.fail(job.id, EIO, retry=True)
        if attempt < 3:
            _make_due(queue, job)
    delays = [a.retry_delay_s for a in queue.get(job.id).history]
    assert delays[0] is not None and 10.0 <= delays[0] <= 20.0
    assert delays[1] is not None and 20.0 <= delays[1] <= 30.0
    assert delays[2] is not None and 40.0 <= delays[2] <= 50.0

    # a new process on the same folder (a restart) honours the stored not_before
    restarted = _queue(tmp_path, backoff_s=10.0)
    assert restarted.claim("w") is None
    _make_due(restarted, job)
    assert restarted.claim("w") is not None


def test_manual_retry_and_last_attempt_clear_the_wait(tmp_path: Path) -> None:
    queue = FileQueue(tmp_path / "q", QueueSettings(max_attempts=2, retry_backoff_s=30.0))
    job = new_job(queue)
    assert queue.claim("w") is not None
    queue.fail(job.id, EIO, retry=True)
    _make_due(queue, job)
    assert queue.claim("w") is not None
    failed = queue.fail(job.id, EIO, retry=True)  # out of attempts: failed for good
    assert failed.state == JobState.FAILED and failed.history[-1].retry_delay_s is None
    again = queue.retry(job.id)  # a user's retry starts at once
    assert again.not_before is None
    assert queue.claim("w") is not None


async def test_worker_processes_wait_between_attempts(tmp_path: Path) -> None:
    """Real worker processes: a job failing twice with EIO completes on its third attempt,
    each retry starting no earlier than its recorded delay after the failure."""
    settings = make_settings(tmp_path)
    settings.queue.retry_backoff_s = 0.5
    h = Harness(settings, FlakyIORunner(tmp_path / "failures", failures=2))
    done = await h.run_one()
    assert done.state == JobState.COMPLETED and done.attempts == 3
    history = done.history
    assert [a.outcome for a in history] == ["retried", "retried", "completed"]
    for failed, following in itertools.pairwise(history):
        assert failed.ended_at is not None and failed.retry_delay_s is not None
        waited = (following.started_at - failed.ended_at).total_seconds()
        assert waited >= failed.retry_delay_s - 0.01
    first, second = history[0].retry_delay_s, history[1].retry_delay_s
    assert first is not None and 0.5 <= first <= 1.0
    assert second is not None and 1.0 <= second <= 1.5
