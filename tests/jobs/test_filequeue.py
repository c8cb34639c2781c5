"""Unit tests of the durable file queue: every transition, crash recovery, retention, locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from queue_testing import MakeJob, new_job

from callannotate.config import QueueSettings
from callannotate.errors import Conflict, NotFound
from callannotate.jobs.filequeue import FOLDERS, FileQueue
from callannotate.jobs.models import Job, JobState, StepProgress, utcnow


def folder_of(queue: FileQueue, job_id: str) -> str:
    return queue.job_dir(job_id).parent.name


# ----------------------------------------------------------------------------- submit / read


def test_layout_is_created(tmp_path: Path) -> None:
    FileQueue(tmp_path / "q", QueueSettings())
    for name in (*FOLDERS, "staging"):
        assert (tmp_path / "q" / name).is_dir()


def test_submit_moves_audio_and_queues(queue: FileQueue) -> None:
    job = new_job(queue, data=b"RIFF-data")
    assert job.state == JobState.QUEUED
    assert job.attempts == 0
    folder = queue.root / "incoming" / job.id
    assert (folder / "job.json").is_file()
    assert queue.audio_path(job.id) == folder / "audio.wav"
    assert queue.audio_path(job.id).read_bytes() == b"RIFF-data"
    # The staged upload was moved, not copied, and no build folder is left behind.
    assert list(queue.staging_dir().iterdir()) == []
    stored = json.loads((folder / "job.json").read_text())
    assert stored["state"] == "queued"
    assert queue.get(job.id) == job


def test_before_visible_runs_once_stored_and_before_any_claim(queue: FileQueue) -> None:
    """The API announces ``job.queued`` in this hook: no worker may claim the job before it."""
    seen: list[tuple[str, bool, object]] = []

    def hook(job: Job) -> None:
        staged = [p for p in queue.staging_dir().iterdir() if p.name.startswith(".build-")]
        seen.append((job.id, bool(staged), queue.claim("other-worker")))

    job = new_job(queue, before_visible=hook)
    assert seen == [(job.id, True, None)]  # stored in staging, not claimable yet
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == job.id


def test_a_failing_before_visible_leaves_nothing_queued(queue: FileQueue) -> None:
    def hook(job: Job) -> None:
        raise OSError("bus down and the caller chose to give up")

    with pytest.raises(OSError):
        new_job(queue, before_visible=hook)
    assert sum(queue.counts().values()) == 0
    assert list(queue.staging_dir().iterdir()) == []


def test_submit_sanitises_stored_name(queue: FileQueue) -> None:
    job = new_job(queue, stored_as="../../etc/passwd")
    path = queue.audio_path(job.id)
    assert path.parent == queue.root / "incoming" / job.id
    assert path.name == "audio"
    for bad in ("job.json", ".lock", "result.json", "a\\b"):
        job = new_job(queue, stored_as=bad)
        assert queue.audio_path(job.id).name == "audio"


def test_submit_rejects_bad_id_and_missing_audio(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    with pytest.raises(Conflict):
        staged = queue.staging_dir() / "again"
        staged.write_bytes(b"x")
        queue.submit(job, staged)  # same id twice
    bad = job.model_copy(update={"id": "../x"})
    with pytest.raises(NotFound):
        queue.submit(bad, queue.staging_dir() / "again")
    fresh = job.model_copy(update={"id": queue.new_job_id()})
    with pytest.raises(NotFound):
        queue.submit(fresh, queue.staging_dir() / "does-not-exist")
    assert not any(p.name.startswith(".build-") for p in queue.staging_dir().iterdir())


@pytest.mark.parametrize(
    "job_id",
    ["", "..", "../etc/passwd", "a/b", "0" * 31, "0" * 33, "A" * 32, "../" + "0" * 29, "%2e%2e"],
)
def test_path_traversal_ids_are_rejected(queue: FileQueue, job_id: str) -> None:
    for call in (
        queue.get,
        queue.audio_path,
        queue.read_result,
        queue.cancel,
        queue.delete,
        queue.retry,
        queue.job_dir,
    ):
        with pytest.raises(NotFound):
            call(job_id)


def test_get_unknown_job(queue: FileQueue) -> None:
    with pytest.raises(NotFound):
        queue.get(queue.new_job_id())


def test_list_filters_and_paginates(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job(owner="alice")
    b = make_job(owner="bob")
    c = make_job(owner="alice")
    page, total = queue.list()
    assert total == 3
    assert [j.id for j in page] == [c.id, b.id, a.id]  # newest first
    page, total = queue.list(owner="alice")
    assert (total, [j.id for j in page]) == (2, [c.id, a.id])
    page, total = queue.list(offset=1, limit=1)
    assert (total, [j.id for j in page]) == (3, [b.id])
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == a.id  # oldest first
    page, total = queue.list(states={JobState.RUNNING})
    assert (total, [j.id for j in page]) == (1, [a.id])
    page, total = queue.list(states={JobState.QUEUED}, owner="bob")
    assert [j.id for j in page] == [b.id]
    assert queue.counts() == {
        "incoming": 2,
        "processing": 1,
        "completed": 0,
        "failed": 0,
        "archived": 0,
    }


def test_writable(queue: FileQueue) -> None:
    assert queue.writable()
    assert not any(p.name.startswith(".probe") for p in queue.staging_dir().iterdir())


def test_folder_wins_over_stale_record(queue: FileQueue, make_job: MakeJob) -> None:
    """A crash between the job.json write and the rename: the folder wins."""
    job = make_job()
    path = queue.root / "incoming" / job.id / "job.json"
    data = json.loads(path.read_text())
    data["state"] = "running"
    path.write_text(json.dumps(data))
    assert queue.get(job.id).state == JobState.QUEUED


# ----------------------------------------------------------------------------- running


def test_claim_takes_oldest_and_counts_attempt(queue: FileQueue, make_job: MakeJob) -> None:
    first = make_job()
    make_job()
    job = queue.claim("host:1:w0")
    assert job is not None and job.id == first.id
    assert job.state == JobState.RUNNING
    assert job.attempts == 1
    assert job.started_at is not None
    assert job.worker == "host:1:w0"
    assert folder_of(queue, job.id) == "processing"
    lease = queue.lease(job.id)
    assert lease is not None and lease["worker"] == "host:1:w0" and lease["pid"] == os.getpid()
    queue.renew(job.id, "host:1:w0")
    assert queue.holds(job.id)


def test_claim_empty_queue(queue: FileQueue) -> None:
    assert queue.claim("w") is None


def test_second_instance_cannot_take_a_held_job(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    other = FileQueue(queue.root, queue.settings)
    assert queue.claim("a") is not None
    assert other.claim("b") is None
    assert other.recover() == []  # the holder (this process, via `queue`) is alive
    assert queue.get(job.id).state == JobState.RUNNING
    with pytest.raises(Conflict):
        other.renew(job.id, "b")


def test_update_progress_persists(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    with pytest.raises(Conflict):
        queue.update_progress(job.id, [])
    queue.claim("w")
    progress = [StepProgress(step="decode", completed=1, total=2, percent=50.0, status="running")]
    updated = queue.update_progress(job.id, progress)
    assert updated.progress == progress
    assert FileQueue(queue.root, queue.settings).get(job.id).progress == progress


def test_complete_writes_result(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    with pytest.raises(Conflict):
        queue.read_result(job.id)
    queue.claim("w")
    with pytest.raises(Conflict):
        queue.read_result(job.id)
    done = queue.complete(job.id, b'{"ok": true}')
    assert done.state == JobState.COMPLETED
    assert done.finished_at is not None
    assert folder_of(queue, job.id) == "completed"
    assert queue.read_result(job.id) == b'{"ok": true}'
    assert not queue.holds(job.id)
    with pytest.raises(Conflict):
        queue.complete(job.id, b"{}")  # not running any more


def test_fail_without_retry(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    queue.claim("w")
    failed = queue.fail(job.id, "invalid_audio: no samples")
    assert failed.state == JobState.FAILED
    assert failed.error == "invalid_audio: no samples"
    assert folder_of(queue, job.id) == "failed"
    assert not queue.holds(job.id)


def test_fail_with_retry_until_max_attempts(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    for attempt in (1, 2):
        claimed = queue.claim("w")
        assert claimed is not None and claimed.attempts == attempt
        back = queue.fail(job.id, "worker process died", retry=True)
        assert back.state == JobState.QUEUED
        assert back.attempts == attempt
        assert folder_of(queue, job.id) == "incoming"
    claimed = queue.claim("w")
    assert claimed is not None and claimed.attempts == 3
    final = queue.fail(job.id, "worker process died", retry=True)
    assert final.state == JobState.FAILED
    assert final.error == "worker process died"


def test_fail_leaves_no_step_running(queue: FileQueue, make_job: MakeJob) -> None:
    # A job that failed in the middle of a step showed that step "running" forever.
    job = make_job()
    running = [
        StepProgress(step="diarize", completed=1, total=1, percent=100.0, status="done"),
        StepProgress(step="transcribe", completed=3, total=10, percent=30.0, status="running"),
    ]
    queue.claim("w")
    queue.update_progress(job.id, running)
    back = queue.fail(job.id, "worker process died", retry=True)
    assert back.state == JobState.QUEUED and back.progress == []  # as release() leaves it
    queue.claim("w")
    queue.update_progress(job.id, running)
    failed = queue.fail(job.id, "bad_request: no such language")
    assert [(p.step, p.status) for p in failed.progress] == [
        ("diarize", "done"),
        ("transcribe", "failed"),
    ]
    assert [p.status for p in queue.get(job.id).progress] == ["done", "failed"]


def test_release_does_not_use_an_attempt(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    queue.claim("w")
    released = queue.release(job.id)
    assert released.state == JobState.QUEUED
    assert released.attempts == 0
    assert folder_of(queue, job.id) == "incoming"
    assert not queue.holds(job.id)
    with pytest.raises(Conflict):
        queue.release(job.id)


# ----------------------------------------------------------------------------- user actions


def test_cancel_queued(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    cancelled = queue.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.error == "cancelled"
    assert folder_of(queue, job.id) == "failed"
    with pytest.raises(Conflict):
        queue.cancel(job.id)


def test_cancel_running_flags_it(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    queue.claim("w")
    flagged = queue.cancel(job.id)
    assert flagged.state == JobState.RUNNING
    assert flagged.cancel_requested
    assert queue.get(job.id).cancel_requested
    # Whatever way its runner ends it, a cancelled job ends up cancelled.
    assert queue.fail(job.id, "boom", retry=True).state == JobState.CANCELLED


def test_mark_cancelled_and_release_of_flagged(queue: FileQueue, make_job: MakeJob) -> None:
    a, b = make_job(), make_job()
    queue.claim("w")
    queue.claim("w")
    assert queue.mark_cancelled(a.id).state == JobState.CANCELLED
    queue.cancel(b.id)
    assert queue.release(b.id).state == JobState.CANCELLED


def test_cancel_finished_conflicts(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    queue.claim("w")
    queue.complete(job.id, b"{}")
    with pytest.raises(Conflict):
        queue.cancel(job.id)


@pytest.mark.parametrize("stage", ["queued", "running", "completed", "failed"])
def test_delete_removes_files(queue: FileQueue, make_job: MakeJob, stage: str) -> None:
    job = make_job()
    if stage != "queued":
        queue.claim("w")
    if stage == "completed":
        queue.complete(job.id, b"{}")
    elif stage == "failed":
        queue.fail(job.id, "x")
    folder = queue.job_dir(job.id)
    queue.delete(job.id)
    assert not folder.exists()
    assert not queue.holds(job.id)
    with pytest.raises(NotFound):
        queue.get(job.id)
    assert not any(p.name.startswith(".trash") for p in queue.staging_dir().iterdir())
    assert sum(queue.counts().values()) == 0


def test_retry_runs_before_visible_while_the_job_is_still_failed(queue: FileQueue) -> None:
    job = new_job(queue)
    queue.claim("w")
    queue.fail(job.id, "died")
    states: list[str] = []
    again = queue.retry(job.id, before_visible=lambda j: states.append(folder_of(queue, j.id)))
    assert states == ["failed"]
    assert again.state == JobState.QUEUED and folder_of(queue, job.id) == "incoming"


def test_retry_checks_again_after_before_visible(queue: FileQueue) -> None:
    job = new_job(queue)
    queue.claim("w")
    queue.fail(job.id, "died")
    with pytest.raises(NotFound):  # deleted while the hook ran: nothing is queued
        queue.retry(job.id, before_visible=lambda j: queue.delete(j.id))
    assert sum(queue.counts().values()) == 0


def test_retry_rules(queue: FileQueue, make_job: MakeJob) -> None:
    failed, cancelled, done = make_job(), make_job(), make_job()
    with pytest.raises(Conflict):
        queue.retry(failed.id)  # queued
    queue.claim("w")
    with pytest.raises(Conflict):
        queue.retry(failed.id)  # running
    for _ in range(3):
        queue.fail(failed.id, "died", retry=True)
        if queue.get(failed.id).state == JobState.FAILED:
            break
        queue.claim("w")
    queue.cancel(cancelled.id)
    queue.claim("w")
    queue.complete(done.id, b"{}")
    with pytest.raises(Conflict):
        queue.retry(done.id)
    for job_id in (failed.id, cancelled.id):
        again = queue.retry(job_id)
        assert again.state == JobState.QUEUED
        assert again.attempts == 0
        assert again.error is None
        assert not again.cancel_requested
        assert folder_of(queue, job_id) == "incoming"


# ----------------------------------------------------------------------------- maintenance


def test_archive_expired(queue: FileQueue, make_job: MakeJob) -> None:
    done, failed, fresh, queued = make_job(), make_job(), make_job(), make_job()
    for job in (done, failed, fresh):
        claimed = queue.claim("w")
        assert claimed is not None and claimed.id == job.id
    queue.complete(done.id, b'{"a": 1}')
    queue.fail(failed.id, "x")
    later = utcnow() + timedelta(hours=2)  # retention is 1 h
    queue.complete(fresh.id, b"{}")
    path = queue.job_dir(fresh.id) / "job.json"
    data = json.loads(path.read_text())
    data["finished_at"] = (later - timedelta(minutes=5)).isoformat()
    path.write_text(json.dumps(data))
    moved = queue.archive_expired(now=later)
    assert sorted(moved) == sorted([done.id, failed.id])
    assert queue.get(done.id).state == JobState.ARCHIVED
    assert folder_of(queue, failed.id) == "archived"
    assert queue.get(failed.id).error == "x"
    assert queue.get(fresh.id).state == JobState.COMPLETED
    assert queue.get(queued.id).state == JobState.QUEUED
    assert queue.read_result(done.id) == b'{"a": 1}'
    with pytest.raises(Conflict):
        queue.read_result(failed.id)
    with pytest.raises(Conflict):
        queue.retry(failed.id)
    assert queue.archive_expired(now=later) == []


def test_recover_cleans_staging_leftovers(queue: FileQueue) -> None:
    old_build = queue.staging_dir() / ".build-x"
    new_build = queue.staging_dir() / ".build-y"
    trash = queue.staging_dir() / ".trash-z"
    upload = queue.staging_dir() / "upload-in-flight"
    for d in (old_build, new_build, trash):
        d.mkdir()
        (d / "f").write_bytes(b"x")
    upload.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old_build, (past, past))
    assert queue.recover() == []
    assert not old_build.exists()
    assert not trash.exists()
    assert new_build.exists()  # may be a submit in progress in another process
    assert upload.exists()


# ----------------------------------------------------------------------------- two processes

_CHILD = """
import json, sys, time
from pathlib import Path
from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue

root, mode, max_attempts = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
queue = FileQueue(root, QueueSettings(max_attempts=max_attempts))
if mode == "drain":
    go = root / "go"
    while not go.exists():
        time.sleep(0.005)
    ids = []
    while (job := queue.claim("drain")) is not None:
        ids.append(job.id)
    print(json.dumps(ids), flush=True)
else:
    job = queue.claim("holder")
    print(job.id if job else "", flush=True)
    time.sleep(120)
"""


def _child(root: Path, mode: str, max_attempts: int = 3) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), mode, str(max_attempts)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_never_claim_the_same_job(queue: FileQueue, make_job: MakeJob) -> None:
    ids = {make_job().id for _ in range(30)}
    children = [_child(queue.root, "drain") for _ in range(2)]
    time.sleep(0.5)
    (queue.root / "go").touch()
    claimed: list[list[str]] = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        claimed.append(json.loads(out))
    a, b = (set(c) for c in claimed)
    assert not a & b
    assert a | b == ids
    assert len(claimed[0]) + len(claimed[1]) == len(ids)
    assert queue.counts()["processing"] == len(ids)


def _hold_one(queue: FileQueue, max_attempts: int = 3) -> tuple[subprocess.Popen[str], str]:
    child = _child(queue.root, "hold", max_attempts)
    assert child.stdout is not None
    job_id = child.stdout.readline().strip()
    assert job_id
    return child, job_id


def _kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    if child.stdout is not None:
        child.stdout.close()


def test_recover_takes_only_jobs_of_dead_holders(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    child, job_id = _hold_one(queue)
    try:
        assert job_id == job.id
        assert queue.get(job.id).state == JobState.RUNNING
        assert queue.recover() == []  # holder alive
        assert queue.claim("me") is None
        assert queue.cancel(job.id).cancel_requested  # only flagged: its runner is alive
    finally:
        _kill(child)
    assert queue.get(job.id).state == JobState.RUNNING  # the folder stays until recovery
    # A cancel-flagged orphan is finalised as cancelled.
    assert queue.recover() == [job.id]
    assert queue.get(job.id).state == JobState.CANCELLED


def test_crashed_holder_job_returns_to_incoming(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    child, _ = _hold_one(queue)
    _kill(child)
    assert queue.recover() == [job.id]
    back = queue.get(job.id)
    assert back.state == JobState.QUEUED
    assert back.attempts == 1  # the interrupted attempt counts
    assert back.error is not None and "died" in back.error
    again = queue.claim("me")
    assert again is not None and again.attempts == 2


def test_crash_at_max_attempts_fails_with_reason(tmp_path: Path) -> None:
    queue = FileQueue(tmp_path / "q", QueueSettings(max_attempts=1))
    job = new_job(queue)
    child, _ = _hold_one(queue, max_attempts=1)
    _kill(child)
    assert queue.recover() == [job.id]
    failed = queue.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error is not None and "gave up after 1 attempts" in failed.error


def test_cancel_of_orphan_is_immediate(queue: FileQueue, make_job: MakeJob) -> None:
    job = make_job()
    child, _ = _hold_one(queue)
    _kill(child)
    assert queue.cancel(job.id).state == JobState.CANCELLED


def test_a_dead_runners_progress_is_not_shown_for_the_next_attempt(tmp_path: Path) -> None:
    """A job taken back from a dead runner (SIGKILLed Celery child, lost machine) shows no
    progress of the dead attempt: before, ``GET /jobs`` said ``queued`` with the step it died
    in still ``running`` at 39 %, and the next attempt started from that stale figure."""
    settings = QueueSettings(max_attempts=3)
    stale = [
        StepProgress(step="vad", completed=1, total=1, percent=100.0, status="done"),
        StepProgress(step="diarize", completed=39, total=100, percent=39.0, status="running"),
    ]
    for takeover in ("recover", "claim_job"):
        first = FileQueue(tmp_path / takeover, settings)
        job = new_job(first)
        assert first.claim_job(job.id, "host:1:celery") is not None
        first.update_progress(job.id, stale)
        first.forget(job.id)  # the process dies: its run lock is gone
        other = FileQueue(tmp_path / takeover, settings)
        if takeover == "recover":
            assert other.recover() == [job.id]
            back = other.get(job.id)
            assert back.state == JobState.QUEUED
            assert back.progress == [], takeover
            assert other.claim_job(job.id, "host:2:celery") is not None
        else:
            assert other.claim_job(job.id, "host:2:celery") is not None
        again = other.get(job.id)
        assert again.state == JobState.RUNNING and again.attempts == 2
        assert again.progress == [], takeover
