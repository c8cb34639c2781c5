"""Queue figures of GET /admin/queues: depth, oldest age, per state, finished per window."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

from queue_testing import MakeJob

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightKind, LightStore
from callannotate.jobs.models import utcnow
from callannotate.jobs.queue_stats import _job_id_of, file_queue_stats, light_stats


def _age_finished(queue: FileQueue, job_id: str, minutes: float) -> None:
    """Pretend the job finished ``minutes`` ago (its record only)."""
    path = queue.job_dir(job_id) / "job.json"
    doc = json.loads(path.read_text())
    doc["finished_at"] = (utcnow() - timedelta(minutes=minutes)).isoformat()
    path.write_text(json.dumps(doc))


def test_file_queue_stats(queue: FileQueue, make_job: MakeJob) -> None:
    done = [make_job() for _ in range(3)]
    failed, cancelled, running = make_job(), make_job(), make_job()
    for job in done:
        assert queue.claim("w0") is not None
        queue.complete(job.id, b"{}")
    assert queue.claim("w0") is not None
    queue.fail(failed.id, "broke")
    queue.cancel(cancelled.id)
    assert queue.claim("w0") is not None  # running
    _age_finished(queue, done[1].id, 20)  # within the hour only
    _age_finished(queue, done[2].id, 120)  # outside both windows
    first = make_job(priority=2)
    time.sleep(0.05)
    make_job(priority=9)
    make_job(priority=9)

    stats = file_queue_stats(queue)

    assert stats.depth == 3
    assert stats.waiting_by_priority == {9: 2, 2: 1}
    assert stats.oldest_waiting_s is not None
    assert stats.oldest_waiting_s >= (utcnow() - first.created_at).total_seconds() - 0.5
    assert stats.states == {
        "queued": 3,
        "running": 1,
        "completed": 3,
        "failed": 2,
        "archived": 0,
    }
    five, hour = stats.finished
    assert (five.window_s, five.completed, five.failed, five.cancelled) == (300, 1, 1, 1)
    assert (hour.window_s, hour.completed, hour.failed, hour.cancelled) == (3600, 2, 1, 1)
    assert queue.get(running.id).state.value == "running"


def test_empty_queue(queue: FileQueue) -> None:
    stats = file_queue_stats(queue)
    assert stats.depth == 0 and stats.oldest_waiting_s is None
    assert [w.completed + w.failed + w.cancelled for w in stats.finished] == [0, 0]


def test_job_id_of_a_kombu_message() -> None:
    job_id = "ab" * 16
    body = base64.b64encode(json.dumps([[job_id], {}, {}]).encode()).decode()
    message = {"body": body, "properties": {"body_encoding": "base64", "priority": 4}}
    assert _job_id_of(json.dumps(message).encode()) == job_id
    assert _job_id_of(b"not json") is None
    bad = {"body": base64.b64encode(b'[["../etc"], {}, {}]').decode(), "properties": {}}
    bad["properties"] = {"body_encoding": "base64"}
    assert _job_id_of(json.dumps(bad).encode()) is None


def test_light_stats_per_kind_and_state(tmp_path: Path) -> None:
    store = LightStore(tmp_path / "light")
    now = utcnow()
    old = store.create(LightKind.CALLBACK, {})
    old.created_at = now - timedelta(seconds=40)
    store.save(old)
    store.create(LightKind.CALLBACK, {})  # due now
    later = store.create(LightKind.CALLBACK, {})
    later.not_before = now + timedelta(minutes=1)  # waiting out a backoff
    store.save(later)
    running = store.claim(store.create(LightKind.ENROLL, {}).id, "w1")  # lock held
    dead = store.claim(store.create(LightKind.ENROLL, {}).id, "w2")
    assert running is not None and dead is not None
    dead.release()  # its runner died: record says running, lock free
    done = store.claim(store.create(LightKind.ENROLL, {}).id, "w3")
    assert done is not None
    done.complete()
    rows = {row.kind: row for row in light_stats(store, now)}
    callback, enroll = rows["callback"], rows["enroll"]
    assert (callback.waiting, callback.delayed, callback.running) == (2, 1, 0)
    assert callback.oldest_waiting_s is not None and 39 < callback.oldest_waiting_s < 60
    assert (enroll.waiting, enroll.running, enroll.orphaned) == (0, 1, 1)
    assert enroll.oldest_waiting_s is None
    running.release()
