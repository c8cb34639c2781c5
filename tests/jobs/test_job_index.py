"""The listing index of the file queue: current across queue instances, deletes, restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from queue_testing import MakeJob, new_job

from callannotate.config import QueueSettings
from callannotate.errors import NotFound
from callannotate.jobs.filequeue import FAILED, INCOMING, FileQueue
from callannotate.jobs.job_index import RACY_WINDOW_NS
from callannotate.jobs.models import JobState


def _other(queue: FileQueue) -> FileQueue:
    """A second queue on the same folder: another process as far as the index can tell."""
    return FileQueue(queue.root, queue.settings)


def _ids(queue: FileQueue, **kwargs: object) -> tuple[list[str], int]:
    page, total = queue.list(**kwargs)  # type: ignore[arg-type]
    return [j.id for j in page], total


def _age_folders(queue: FileQueue) -> None:
    """Push the state folders' mtimes out of the racy window, so that the index trusts its
    stamps (as it does for folders that did not change in the last seconds)."""
    old = (os.stat(queue.root).st_mtime_ns - 10 * RACY_WINDOW_NS) / 1e9
    for name in ("incoming", "processing", "completed", "failed", "archived"):
        os.utime(queue.root / name, (old, old))


def test_sees_jobs_submitted_by_another_instance(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job(owner="alice")
    assert _ids(queue) == ([a.id], 1)
    other = _other(queue)
    b = new_job(other, owner="alice")
    c = new_job(other, owner="bob")
    assert _ids(queue) == ([c.id, b.id, a.id], 3)
    assert _ids(queue, owner="alice") == ([b.id, a.id], 2)
    assert _ids(queue, owner="bob") == ([c.id], 1)
    assert _ids(queue, owner="nobody") == ([], 0)


def test_job_moved_by_another_instance(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job(owner="alice")
    b = make_job(owner="alice")
    assert _ids(queue, states={JobState.QUEUED}) == ([b.id, a.id], 2)
    worker = _other(queue)
    claimed = worker.claim("w")
    assert claimed is not None and claimed.id == a.id
    assert _ids(queue, states={JobState.QUEUED}) == ([b.id], 1)
    assert _ids(queue, states={JobState.RUNNING}) == ([a.id], 1)
    page, total = queue.list(owner="alice")
    assert total == 2 and {j.id: j.state for j in page}[a.id] == JobState.RUNNING
    worker.complete(a.id, b"{}")
    assert _ids(queue, states={JobState.RUNNING}) == ([], 0)
    assert _ids(queue, states={JobState.COMPLETED}) == ([a.id], 1)
    assert _ids(queue, states={JobState.COMPLETED, JobState.QUEUED}) == ([b.id, a.id], 2)


def test_move_seen_after_the_racy_window(queue: FileQueue, make_job: MakeJob) -> None:
    """With old folder timestamps the index skips unchanged folders; a move still changes
    both folders' mtimes, so it is seen."""
    a = make_job()
    b = make_job()
    _age_folders(queue)
    assert _ids(queue) == ([b.id, a.id], 2)
    rescans = queue._index.rescans
    assert _ids(queue) == ([b.id, a.id], 2)
    assert queue._index.rescans == rescans  # nothing changed: no folder listed again
    _other(queue).cancel(a.id)
    assert _ids(queue, states={JobState.CANCELLED}) == ([a.id], 1)
    assert _ids(queue, states={JobState.QUEUED}) == ([b.id], 1)
    assert queue._index.rescans > rescans


def test_failed_and_cancelled_share_a_folder(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job()
    b = make_job()
    queue.cancel(a.id)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == b.id
    queue.fail(b.id, "boom")
    assert _ids(queue, states={JobState.CANCELLED}) == ([a.id], 1)
    assert _ids(queue, states={JobState.FAILED}) == ([b.id], 1)
    assert _ids(queue, states={JobState.FAILED, JobState.CANCELLED}) == ([b.id, a.id], 2)
    queue.retry(a.id)  # cancelled -> queued: leaves failed/
    assert _ids(queue, states={JobState.CANCELLED}) == ([], 0)
    assert _ids(queue, states={JobState.QUEUED}) == ([a.id], 1)


def test_deleted_job_leaves_the_index(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job(owner="alice")
    b = make_job(owner="alice")
    assert _ids(queue, owner="alice") == ([b.id, a.id], 2)
    _other(queue).delete(a.id)  # by another instance
    assert _ids(queue, owner="alice") == ([b.id], 1)
    queue.delete(b.id)  # by this one
    assert _ids(queue, owner="alice") == ([], 0)
    assert list(queue._index.ids()) == []


def test_restart_rebuilds_from_the_folders(tmp_path: Path) -> None:
    settings = QueueSettings(max_attempts=3, retention_hours=1.0)
    first = FileQueue(tmp_path / "q", settings)
    jobs = [new_job(first, owner=("alice", "bob")[i % 2]) for i in range(6)]
    first.claim("w")
    first.cancel(jobs[1].id)
    expected = _ids(first)
    assert expected[1] == 6
    restarted = FileQueue(tmp_path / "q", settings)
    assert restarted._index.records_read == 0
    restarted.recover()  # start-up rebuilds the index (here: reads each record once)
    assert restarted._index.records_read == 6
    assert _ids(restarted) == expected
    assert _ids(restarted, owner="bob") == ([j.id for j in jobs[1::2]][::-1], 3)
    assert restarted._index.records_read == 6  # listing read no record to find matches


def test_pagination_and_records_read_once(queue: FileQueue, make_job: MakeJob) -> None:
    jobs = [make_job(owner="alice") for _ in range(7)]
    newest_first = [j.id for j in reversed(jobs)]
    assert _ids(queue, offset=0, limit=3) == (newest_first[:3], 7)
    assert _ids(queue, offset=3, limit=3) == (newest_first[3:6], 7)
    assert _ids(queue, offset=6, limit=3) == (newest_first[6:], 7)
    assert _ids(queue, offset=10, limit=3) == ([], 7)
    assert _ids(queue, owner="alice", states={JobState.QUEUED}, offset=5) == (
        newest_first[5:],
        7,
    )
    assert queue._index.records_read == 7


def test_unreadable_record_is_skipped(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job()
    b = make_job()
    (queue.root / INCOMING / a.id / "job.json").write_text("{not json")
    os.utime(queue.root / INCOMING)  # as a move would: the folder is listed again
    fresh = _other(queue)
    assert _ids(fresh) == ([b.id], 1)
    assert not (queue.root / FAILED / a.id).exists()


def test_change_within_one_timestamp_tick_is_seen(queue: FileQueue, make_job: MakeJob) -> None:
    """Two changes of a folder inside one tick of the file clock leave its mtime as it was
    at the first; the index lists a folder that changed that recently again anyway."""
    a = make_job()
    incoming = queue.root / INCOMING
    mtime = os.stat(incoming).st_mtime_ns
    assert _ids(queue) == ([a.id], 1)
    b = make_job()
    os.utime(incoming, ns=(mtime, mtime))  # as if b arrived in the same tick
    assert _ids(queue) == ([b.id, a.id], 2)


def test_view_and_list_views_follow_changes(queue: FileQueue, make_job: MakeJob) -> None:
    a = make_job(owner="alice")
    b = make_job(owner="alice")
    job, raw = queue.view(a.id)
    assert raw == queue.get(a.id).model_dump_json().encode()
    assert queue.view(a.id)[1] is raw  # unchanged: served from the cache
    worker = _other(queue)
    claimed = worker.claim("w")
    assert claimed is not None and claimed.id == a.id
    job, raw = queue.view(a.id)  # moved by another instance: found where it is now
    assert job.state == JobState.RUNNING
    assert raw == queue.get(a.id).model_dump_json().encode()
    worker.complete(a.id, b'{"ok": true}')
    assert queue.view(a.id)[0].state == JobState.COMPLETED
    assert queue.read_result(a.id) == b'{"ok": true}'
    views, total = queue.list_views(owner="alice")
    page, same_total = queue.list(owner="alice")
    assert total == same_total == 2
    assert [raw for _, raw in views] == [j.model_dump_json().encode() for j in page]
    assert [j.id for j, _ in views] == [b.id, a.id]
    queue.delete(a.id)
    with pytest.raises(NotFound):
        queue.view(a.id)


def test_calls_are_found_by_creation_time_and_number(queue: FileQueue) -> None:
    """``GET /jobs`` could only page through every job newest first: "the calls with this
    customer" or "yesterday's calls" meant reading them all."""
    from datetime import timedelta

    from callannotate.jobs.job_index import CallFilter

    a = new_job(queue, owner="alice", caller="+79161234567", callee="+74951112233")
    b = new_job(queue, owner="alice", caller="+74951112233")
    c = new_job(queue, owner="bob", callee="+79161234567")
    d = new_job(queue, owner="alice")
    created = {j.id: j.created_at for j in (a, b, c, d)}
    assert sorted(created.values()) == [created[j.id] for j in (a, b, c, d)]

    def ids(calls: CallFilter, **kwargs: object) -> tuple[list[str], int]:
        return _ids(queue, calls=calls, **kwargs)

    assert ids(CallFilter(phone="+79161234567")) == ([c.id, a.id], 2)
    assert ids(CallFilter(phone="+79161234567"), owner="alice") == ([a.id], 1)
    assert ids(CallFilter(phone="+74951112233"), owner="alice") == ([b.id, a.id], 2)
    assert ids(CallFilter(phone="+70000000000")) == ([], 0)
    assert ids(CallFilter(since=created[b.id])) == ([d.id, c.id, b.id], 3)
    assert ids(CallFilter(until=created[b.id])) == ([a.id], 1)  # until is exclusive
    assert ids(CallFilter(since=created[b.id], until=created[d.id])) == ([c.id, b.id], 2)
    assert ids(CallFilter(since=created[d.id] + timedelta(seconds=1))) == ([], 0)
    window = CallFilter(since=created[a.id], phone="+79161234567")
    assert ids(window, offset=1, limit=1) == ([a.id], 2)
    claimed = queue.claim_job(a.id, "w")
    assert claimed is not None
    assert ids(window, states={JobState.RUNNING}) == ([a.id], 1)
    assert ids(window, states={JobState.QUEUED}) == ([c.id], 1)
    assert ids(CallFilter()) == _ids(queue)  # an empty filter is no filter
