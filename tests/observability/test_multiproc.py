"""Multiprocess metrics of a Celery worker (callannotate.observability.multiproc), in-process.

The children here are real forked processes (multiprocessing's fork context) counting into
the folder; tests/integration/test_celery_metrics.py does the same with a real Celery worker.
Every test leaves the process's metrics in-memory again (``disable``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, values
from prometheus_client.parser import text_string_to_metric_families

from callannotate.config import MetricsSettings
from callannotate.observability import metrics
from callannotate.observability.multiproc import (
    COMPACT_AFTER,
    ENV,
    CeleryWorkerMetrics,
    WorkerCollector,
    _child_exit,
    compact,
    disable,
    enable,
    enabled,
    sweep_dead,
)
from local_servers import free_port

FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def _no_inherited_after_fork_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork children here with none of the after-fork hooks earlier tests left in this
    process: kombu registers one per connection pool (Celery tests), and in a forked child
    it closes the inherited Redis channel by reading from it, which blocks for ever."""
    monkeypatch.setattr(multiprocessing.util, "_afterfork_registry", weakref.WeakValueDictionary())


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "multiproc"
    path.mkdir()
    enable(path)
    try:
        yield path
    finally:
        disable()


def _samples(collector: WorkerCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def _job(block: bool, counted: Any = None) -> None:
    metrics.JOBS_COMPLETED.inc()
    metrics.JOB_DURATION.labels("completed").observe(3.0)
    metrics.WS_CONNECTIONS.labels("/ws/{client_id}").inc()
    metrics.CONTACTS_LAST_SYNC.set(1000.0 + os.getpid())
    if counted is not None:
        counted.set()
    if block:
        time.sleep(120)


def test_every_gauge_names_its_multiprocess_mode() -> None:
    gauges = [m for m in vars(metrics).values() if isinstance(m, Gauge)]
    assert gauges
    for gauge in gauges:  # "all" (the default) would export one series per pid
        assert gauge._multiprocess_mode in {"livesum", "livemax", "max", "sum"}, gauge


def test_children_merge_and_a_killed_childs_counts_stay(folder: Path) -> None:
    assert enabled() and os.environ[ENV] == str(folder)
    collector = WorkerCollector(folder, MetricsSettings())
    done = FORK.Process(target=_job, args=(False,))
    done.start()
    done.join(30)
    counted = FORK.Event()
    busy = FORK.Process(target=_job, args=(True, counted))
    busy.start()
    try:
        assert counted.wait(30)  # everything of the busy child is written
        samples = _samples(collector)
        assert (
            samples[("callannotate_job_duration_seconds_count", (("outcome", "completed"),))] == 2
        )
        # the exited child's live gauge is gone (swept: its pid is not alive), the busy one's
        # counts; the max gauge keeps the highest of all
        ws = ("callannotate_websocket_connections", (("route", "/ws/{client_id}"),))
        assert samples[ws] == 1
        last = samples[("callannotate_contacts_last_success_timestamp_seconds", ())]
        assert last == 1000.0 + max(done.pid or 0, busy.pid or 0)
        assert samples[("callannotate_sla_seconds", (("kind", "queue_wait"),))] == 300.0
        assert ("callannotate_build_info", (("version", metrics.__version__),)) in samples
        # auth failures exist from the start in the merged view too (the parent's files)
        assert samples[("callannotate_auth_failures_total", (("reason", "missing"),))] == 0

        os.kill(busy.pid or 0, signal.SIGKILL)
        busy.join(30)
        assert (folder / f"gauge_livesum_{busy.pid}.db").is_file()
        samples = _samples(collector)  # the scrape sweeps the dead pid's live gauges
        assert not (folder / f"gauge_livesum_{busy.pid}.db").exists()
        assert samples.get(ws, 0.0) == 0.0
        assert samples[("callannotate_jobs_completed_total", ())] == 2
        assert (
            samples[("callannotate_job_duration_seconds_count", (("outcome", "completed"),))] == 2
        )
    finally:
        if busy.is_alive():
            busy.kill()
            busy.join(10)


def test_child_exit_removes_its_live_gauges_only(folder: Path) -> None:
    metrics.WS_CONNECTIONS.labels("/stream").inc()
    metrics.JOBS_COMPLETED.inc()
    pid = os.getpid()
    assert (folder / f"gauge_livesum_{pid}.db").is_file()
    _child_exit(pid=pid, exitcode=0)  # what Celery's worker_process_shutdown passes
    assert not (folder / f"gauge_livesum_{pid}.db").exists()
    assert (folder / f"counter_{pid}.db").is_file()


def test_sweep_keeps_live_processes(folder: Path) -> None:
    metrics.WS_CONNECTIONS.labels("/stream").inc()
    (folder / "gauge_livesum_999999999.db").write_bytes(b"")  # no such pid
    assert sweep_dead(folder) == [999999999]
    assert (folder / f"gauge_livesum_{os.getpid()}.db").is_file()


def test_recreated_values_keep_label_values_and_fixed_series(folder: Path) -> None:
    assert metrics.AUTH_FAILURES._metrics  # pre-created reasons survive the switch
    keys = {k[0] for k in metrics.AUTH_FAILURES._metrics}
    assert keys == set(metrics.AUTH_FAILURE_REASONS)
    assert {k for k in metrics.CONTACTS_SYNC._metrics} == {
        (r,) for r in metrics.CONTACTS_SYNC_RESULTS
    }
    assert getattr(metrics.JOBS_COMPLETED._value, "_multiprocess", False)


def test_port_zero_changes_nothing() -> None:
    export = CeleryWorkerMetrics(MetricsSettings(port=0))
    export.start()
    assert export.folder is None and export.port is None and not enabled()
    export.stop()


def test_worker_port_serves_the_files_then_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    port = free_port()
    export = CeleryWorkerMetrics(MetricsSettings(port=port))
    export.start()
    try:
        assert enabled() and export.folder is not None and export.folder.parent == tmp_path
        assert list(export.folder.iterdir()) != []  # the main process's own files
        child = FORK.Process(target=_job, args=(False,))
        child.start()
        child.join(30)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("callannotate_jobs_completed_total", ())] == 1
        folder = export.folder
    finally:
        export.stop()
    assert not folder.exists() and not enabled() and ENV not in os.environ
    assert values.ValueClass is values.MutexValue
    # back to the in-memory registry the API serves
    metrics.JOBS_COMPLETED.inc()
    assert REGISTRY.get_sample_value("callannotate_jobs_completed_total") == 1.0
    assert b"callannotate_jobs_completed_total" in metrics.render()


def test_a_taken_port_fails_start_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        export = CeleryWorkerMetrics(MetricsSettings(port=port))
        with pytest.raises(OSError):
            export.start()
    assert export.folder is None and not enabled()


def test_worker_metrics_port_flag_sets_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from callannotate.cli import build_parser, load_settings

    monkeypatch.delenv("CALLANNOTATE_METRICS__PORT", raising=False)
    args = build_parser().parse_args(["worker", "--executor", "celery", "--metrics-port", "9500"])
    assert args.metrics_port == 9500
    assert load_settings(metrics__port=args.metrics_port).metrics.port == 9500
    plain = build_parser().parse_args(["worker"])
    assert plain.metrics_port is None  # the setting (or its 0 default) stays
    assert load_settings(metrics__port=plain.metrics_port).metrics.port == 0


def test_a_file_still_being_created_does_not_fail_the_scrape(folder: Path) -> None:
    """A starting child opens its files empty and sizes them a moment later."""
    metrics.JOBS_COMPLETED.inc()
    (folder / "counter_999999998.db").write_bytes(b"")
    (folder / "histogram_999999998.db").write_bytes(b"\0\0")
    samples = _samples(WorkerCollector(folder, MetricsSettings()))
    assert samples[("callannotate_jobs_completed_total", ())] == 1


def test_exited_childrens_files_are_compacted_without_changing_totals(folder: Path) -> None:
    collector = WorkerCollector(folder, MetricsSettings())

    def run_children(n: int) -> None:
        for _ in range(n):
            child = FORK.Process(target=_job, args=(False,))
            child.start()
            child.join(30)

    def totals() -> tuple[float, float, float, float]:
        samples = _samples(collector)  # sweeps and compacts first
        completed = ("outcome", "completed")
        return (
            samples[("callannotate_jobs_completed_total", ())],
            samples[("callannotate_job_duration_seconds_count", (completed,))],
            samples[("callannotate_job_duration_seconds_bucket", (("le", "5.0"), completed))],
            samples[("callannotate_contacts_last_success_timestamp_seconds", ())],
        )

    run_children(3)
    assert compact(folder) == 0  # few files: left as they are
    run_children(9)
    before = {p.name for p in folder.glob("*.db")}
    assert sum(p.endswith(".db") and "_archive" not in p for p in before) > COMPACT_AFTER
    counted = totals()
    assert counted[:3] == (12, 12, 12)
    assert counted[3] > 1000.0
    names = {p.name for p in folder.glob("*.db")}
    assert {"counter_archive.db", "histogram_archive.db", "gauge_max_archive.db"} <= names
    pid = os.getpid()
    assert names - {f"counter_{pid}.db"} and f"counter_{pid}.db" in names  # own files stay
    assert len(names) < len(before)
    run_children(12)  # merged again, into the same archive
    assert totals()[:3] == (24, 24, 24)
    assert not list(folder.glob(".*.partial"))
