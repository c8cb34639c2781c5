"""Light-task metrics: the scrape-time gauges (callannotate.observability.light_gauges) on a
real light task folder, and the counter of tasks ended, in this process and in forked
children in multiprocess mode (as a Celery worker's children count them)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import time
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from callannotate.config import MetricsSettings, QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import Claim, LightKind, LightStore, light_store
from callannotate.jobs.models import utcnow
from callannotate.jobs.queue_stats import light_stats
from callannotate.observability import collector
from callannotate.observability.light_gauges import STATES, LightTally
from callannotate.observability.multiproc import WorkerCollector, disable, enable

FORK = multiprocessing.get_context("fork")
FINISHED = "callannotate_light_tasks_finished_total"


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def claimed(store: LightStore, kind: LightKind, worker: str = "w") -> Claim:
    task = store.create(kind, {})
    claim = store.claim(task.id, worker)
    assert claim is not None
    return claim


def fill(store: LightStore) -> list[Claim]:
    """Tasks in every state; returns the claims held (running tasks)."""
    now = utcnow()
    due = store.create(LightKind.ENROLL, {})
    due.created_at = now - timedelta(seconds=90)
    store.save(due)
    delayed = store.create(LightKind.ENROLL, {})
    delayed.created_at = now - timedelta(hours=1)
    delayed.not_before = now + timedelta(seconds=60)
    store.save(delayed)
    # accepted 10 min ago, its retry backoff ended 20 s ago: waiting for 20 s, not 10 min
    retried = store.create(LightKind.CALLBACK, {})
    retried.created_at = now - timedelta(minutes=10)
    retried.not_before = now - timedelta(seconds=20)
    store.save(retried)
    running = claimed(store, LightKind.CALLBACK)
    orphan = claimed(store, LightKind.CALLBACK, "dead")
    orphan.release()  # its process died mid-run
    done = claimed(store, LightKind.ENROLL)
    done.complete({"ok": True})
    return [running]


@pytest.fixture
def light(tmp_path: Path) -> Iterator[LightStore]:
    queue = FileQueue(tmp_path / "queue", QueueSettings())
    store = light_store(tmp_path)
    source = collector.install(queue, None, MetricsSettings(), light=store)
    try:
        yield store
    finally:
        collector.uninstall(source)


def test_gauges_per_kind_and_state_match_the_admin_figures(light: LightStore) -> None:
    held = fill(light)
    try:
        rows = {row.kind: row for row in light_stats(light)}
        for kind in LightKind:
            for state in STATES:
                exported = value("callannotate_light_tasks", kind=kind.value, state=state)
                assert exported == getattr(rows[kind.value], state), (kind, state)
        assert value("callannotate_light_tasks", kind="enroll", state="waiting") == 1
        assert value("callannotate_light_tasks", kind="enroll", state="delayed") == 1
        assert value("callannotate_light_tasks", kind="callback", state="waiting") == 1
        assert value("callannotate_light_tasks", kind="callback", state="running") == 1
        assert value("callannotate_light_tasks", kind="callback", state="orphaned") == 1
        oldest = "callannotate_light_task_oldest_waiting_seconds"
        assert 89 <= (value(oldest, kind="enroll") or 0) < 100
        assert 19 <= (value(oldest, kind="callback") or 0) < 30  # since its backoff ended
        for kind in set(LightKind) - {LightKind.ENROLL, LightKind.CALLBACK}:
            assert value(oldest, kind=kind.value) == 0.0  # every kind has a series
    finally:
        for claim in held:
            claim.release()


def test_an_empty_or_missing_folder_exports_zeros(light: LightStore) -> None:
    assert not light.root.exists()
    for kind in LightKind:
        assert value("callannotate_light_task_oldest_waiting_seconds", kind=kind.value) == 0.0
        for state in STATES:
            assert value("callannotate_light_tasks", kind=kind.value, state=state) == 0.0


def test_install_defaults_to_the_folder_beside_the_queue(tmp_path: Path) -> None:
    store = light_store(tmp_path)
    store.create(LightKind.ENROLL, {})
    source = collector.install(
        FileQueue(tmp_path / "queue", QueueSettings()), None, MetricsSettings()
    )
    try:
        assert source.light is not None and source.light.root == store.root
        assert value("callannotate_light_tasks", kind="enroll", state="waiting") == 1
    finally:
        collector.uninstall(source)


def test_unchanged_records_are_not_parsed_again(tmp_path: Path) -> None:
    store = light_store(tmp_path)
    for _ in range(20):
        claimed(store, LightKind.CALLBACK).complete({"delivered": True})
    waiting = store.create(LightKind.ENROLL, {})
    tally = LightTally()
    tally.counts(store)
    first = tally.parsed
    assert first == 21
    time.sleep(0.06)  # past the racy window of the files just written
    tally.counts(store)
    tally.counts(store)
    after = tally.parsed
    tally.counts(store)
    assert tally.parsed == after  # nothing changed: nothing parsed
    claim = store.claim(waiting.id, "w")
    assert claim is not None
    counts, _ = tally.counts(store)
    assert tally.parsed == after + 1  # the one task that changed
    assert counts["enroll"]["running"] == 1
    claim.release()


def test_finished_counter_counts_where_a_task_ends(tmp_path: Path) -> None:
    store = light_store(tmp_path)
    for kind in LightKind:  # every series exists from the start
        for outcome in ("completed", "failed"):
            assert value(FINISHED, kind=kind.value, outcome=outcome) is not None
    before = {
        (k, o): value(FINISHED, kind=k, outcome=o) or 0.0
        for k in ("enroll", "callback")
        for o in ("completed", "failed")
    }
    claimed(store, LightKind.ENROLL).complete({})
    claimed(store, LightKind.CALLBACK).fail("HTTP 404", "callback_failed")
    retried = claimed(store, LightKind.CALLBACK)
    retried.retry_later(0.0, "HTTP 503")  # not ended: not counted
    # a task whose runner died too often is failed by the next claim: counted too
    dying = store.create(LightKind.ENROLL, {})
    dying.max_attempts = 1
    store.save(dying)
    first = store.claim(dying.id, "dead")
    assert first is not None
    first.release()
    assert store.claim(dying.id, "next") is None
    after = {key: (value(FINISHED, kind=key[0], outcome=key[1]) or 0.0) for key in before}
    assert after[("enroll", "completed")] - before[("enroll", "completed")] == 1
    assert after[("enroll", "failed")] - before[("enroll", "failed")] == 1
    assert after[("callback", "failed")] - before[("callback", "failed")] == 1
    assert after[("callback", "completed")] == before[("callback", "completed")]


@pytest.fixture
def _no_inherited_after_fork_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in test_multiproc.py: fork without the after-fork hooks other tests registered."""
    monkeypatch.setattr(multiprocessing.util, "_afterfork_registry", weakref.WeakValueDictionary())


def _end_tasks(root: str, count: int) -> None:
    store = LightStore(Path(root))
    for _ in range(count):
        claimed(store, LightKind.CALLBACK).complete({"delivered": True})


@pytest.mark.usefixtures("_no_inherited_after_fork_hooks")
def test_forked_children_count_into_the_merged_files(tmp_path: Path) -> None:
    folder = tmp_path / "multiproc"
    folder.mkdir()
    store = light_store(tmp_path)
    enable(folder)
    try:
        children = [FORK.Process(target=_end_tasks, args=(str(store.root), n)) for n in (2, 3)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
            assert child.exitcode == 0
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(folder, MetricsSettings()))
        merged = registry.get_sample_value(FINISHED, {"kind": "callback", "outcome": "completed"})
        failed = registry.get_sample_value(FINISHED, {"kind": "callback", "outcome": "failed"})
    finally:
        disable()
    assert merged == 5
    assert failed == 0
