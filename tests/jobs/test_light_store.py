"""The light task store: durable records, one runner at a time, takeover of a dead runner."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from callannotate.jobs.fsutil import try_lock, unlock
from callannotate.jobs.light import LightKind, LightState, LightStore
from callannotate.jobs.light_run import retry_delay, run_claimed
from callannotate.jobs.models import utcnow


def make_store(tmp_path: Path) -> LightStore:
    return LightStore(tmp_path / "light")


def test_create_moves_inputs_and_is_durable(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    sample = tmp_path / "staged-1"
    sample.write_bytes(b"audio")
    task = store.create(LightKind.ENROLL, {"name": "Ivan"}, owner="u1", files=[(sample, "a.wav")])
    assert not sample.exists()
    again = store.get(task.id)  # what another process reads
    assert again.state == LightState.QUEUED and again.owner == "u1"
    assert again.files == [("input-0", "a.wav")]
    assert (store.task_dir(task.id) / "input-0").read_bytes() == b"audio"
    assert [t.id for t in store.pending()] == [task.id]
    assert list(store.root.glob(".build-*")) == []


def test_claim_is_exclusive_and_a_finished_task_never_runs_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    sample = tmp_path / "s"
    sample.write_bytes(b"x")
    task = store.create(LightKind.ENROLL, {"name": "A"}, files=[(sample, "s.wav")])
    claim = store.claim(task.id, "w1")
    assert claim is not None and claim.task.attempts == 1
    assert store.get(task.id).state == LightState.RUNNING
    assert store.claim(task.id, "w2") is None  # a duplicate message while it runs: no-op
    assert store.pending() == []  # running with its lock held: not an orphan
    claim.complete({"id": "v"})
    done = store.get(task.id)
    assert done.state == LightState.COMPLETED and done.result == {"id": "v"}
    assert not (store.task_dir(task.id) / "input-0").exists()  # samples are not kept
    assert store.claim(task.id, "w2") is None  # a redelivery of a finished task: no-op
    assert store.claim("0" * 32, "w2") is None and store.claim("../x", "w2") is None


def test_dead_runner_is_taken_over_then_given_up(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    task = store.create(LightKind.ENROLL, {"name": "A"})
    for attempt in (1, 2, 3):
        claim = store.claim(task.id, f"w{attempt}")
        assert claim is not None and claim.task.attempts == attempt
        claim.release()  # the runner "dies": record says running, the lock is free
        assert [t.id for t in store.pending()] == [task.id]
    assert store.claim(task.id, "w4") is None  # past max_attempts: failed instead
    failed = store.get(task.id)
    assert failed.state == LightState.FAILED and failed.error_code == "interrupted"


def test_retry_waits_until_due(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    task = store.create(LightKind.CALLBACK, {"job_id": "j"})
    claim = store.claim(task.id, "w1")
    assert claim is not None
    claim.retry_later(30.0, "HTTP 503")
    waiting = store.get(task.id)
    assert waiting.state == LightState.QUEUED and waiting.error == "HTTP 503"
    assert not waiting.due(utcnow()) and waiting.due(utcnow() + timedelta(seconds=31))
    assert store.claim(task.id, "w2") is None  # not due yet (the local lane)
    early = store.claim(task.id, "w2", early=True)  # a Celery retry at its countdown
    assert early is not None and early.task.attempts == 2
    early.release()


def test_domain_error_fails_with_the_status_the_route_would_give(tmp_path: Path) -> None:
    """An enrollment whose sample does not decode fails with the route's error code."""
    from callannotate.config import Settings

    settings = Settings(data_dir=tmp_path / "data")
    store = LightStore(settings.data_dir / "light")
    bad = tmp_path / "bad"
    bad.write_bytes(b"not audio at all")
    task = store.create(LightKind.ENROLL, {"name": "A"}, files=[(bad, "bad.wav")])
    claim = store.claim(task.id, "w")
    assert claim is not None
    assert run_claimed(settings, claim) is None
    failed = store.get(task.id)
    assert failed.state == LightState.FAILED
    assert failed.error_code in {"invalid_audio", "model_unavailable"}, failed
    assert failed.status_code in {422, 503}
    fd = try_lock(store.task_dir(task.id) / ".lock")
    assert fd is not None  # the lock was released
    unlock(fd)


def test_purge_removes_old_finished_tasks_only(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    old = store.create(LightKind.ENROLL, {"name": "A"})
    claim = store.claim(old.id, "w")
    assert claim is not None
    claim.fail("x")
    fresh = store.create(LightKind.ENROLL, {"name": "B"})
    assert store.purge(3600.0) == 0
    assert store.purge(-1.0) == 1
    assert [t.id for t in store.pending()] == [fresh.id]


def test_retry_delay_grows_and_is_capped() -> None:
    assert 1.0 <= retry_delay(1) <= 2.0
    assert 4.0 <= retry_delay(3) <= 5.0
    assert retry_delay(30) <= 60.0
