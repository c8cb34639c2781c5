"""The worker registry: heartbeat records written atomically, lost and forgotten workers."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from callannotate.config import Settings
from callannotate.jobs.heartbeat import (
    Heartbeat,
    WorkerRecord,
    WorkerRegistry,
    loaded_models,
    start_heartbeat,
    workers_dir,
)
from callannotate.jobs.models import utcnow


def _record(pid: int, *, age_s: float = 0.0, executor: str = "local") -> WorkerRecord:
    now = utcnow()
    return WorkerRecord(
        id=f"host-a-{pid}",
        host="host-a",
        pid=pid,
        executor=executor,  # type: ignore[arg-type]
        name="w0",
        concurrency=2,
        queues=["local"],
        jobs_running=[],
        models_loaded=[],
        rss_bytes=1 << 20,
        started_at=now - timedelta(seconds=age_s + 10),
        heartbeat_at=now - timedelta(seconds=age_s),
    )


def test_snapshot_marks_lost_workers_and_forgets_old_ones(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path / "workers", lost_after_s=30.0, forget_after_s=600.0)
    registry.write(_record(1, age_s=1.0))
    registry.write(_record(2, age_s=45.0, executor="celery"))
    registry.write(_record(3, age_s=900.0))
    (tmp_path / "workers" / "broken.json").write_text("{not json")

    workers = registry.snapshot()

    by_pid = {w.pid: w for w in workers}
    assert set(by_pid) == {1, 2}  # 3 was forgotten, the broken file skipped
    assert not by_pid[1].lost and 0.9 < by_pid[1].heartbeat_age_s < 5
    assert by_pid[2].lost and by_pid[2].executor == "celery"
    assert not registry.path("host-a", 3).exists()
    assert oct(os.stat(registry.path("host-a", 1)).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "workers").st_mode & 0o777) == "0o700"
    # a read without cleaning keeps old records
    registry.write(_record(4, age_s=900.0))
    assert 4 in {w.pid for w in registry.snapshot(clean=False)}


def test_records_from_a_newer_version_are_still_read(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path, lost_after_s=30.0, forget_after_s=600.0)
    doc = json.loads(_record(7).model_dump_json())
    doc["gpu_memory_bytes"] = 12
    (tmp_path / "host-a-7.json").write_text(json.dumps(doc))
    assert [w.pid for w in registry.snapshot()] == [7]


def test_heartbeat_writes_this_process_and_removes_itself_on_stop(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path, lost_after_s=30.0, forget_after_s=600.0)
    running: list[str] = ["a" * 32]
    beat = Heartbeat(
        registry,
        executor="local",
        name="w1",
        concurrency=3,
        queues=["local"],
        interval_s=0.05,
        running=lambda: (list(running), 4),
        models=lambda: ["vad"],
    )
    beat.start()
    try:
        [worker] = registry.snapshot()
        assert worker.pid == os.getpid() and worker.concurrency == 3
        assert worker.jobs_running == ["a" * 32] and worker.jobs_done == 4
        assert worker.models_loaded == ["vad"]
        assert worker.rss_bytes > 10 * (1 << 20)  # a Python process with pydantic loaded
        first = worker.heartbeat_at
        running.clear()
        beat.beat()
        [worker] = registry.snapshot()
        assert worker.jobs_running == [] and worker.heartbeat_at > first
    finally:
        beat.stop(remove=True)
    assert registry.snapshot() == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_heartbeat_survives_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    registry = WorkerRegistry(blocker / "workers", lost_after_s=30.0, forget_after_s=600.0)
    beat = Heartbeat(
        registry,
        executor="celery",
        name="n",
        concurrency=1,
        queues=[],
        interval_s=10,
        running=lambda: ([], 0),
        models=list,
    )
    beat.beat()  # logged, not raised
    assert registry.snapshot() == []


def test_start_heartbeat_uses_the_settings(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"data_dir": tmp_path, "jobs": {"heartbeat_interval_s": 0.5, "worker_lost_after_s": 2}}
    )

    class Runner:
        def __init__(self) -> None:
            self.load_seconds = {"diarize": 1.0, "asr": 2.0}

    beat = start_heartbeat(
        settings,
        executor="local",
        name="w0",
        concurrency=1,
        queues=["local"],
        running=lambda: ([], 0),
        runner=Runner(),
        preload_error="asr: missing",
    )
    try:
        assert beat.interval_s == 0.5
        [worker] = WorkerRegistry.from_settings(settings).snapshot()
        assert worker.preload_error == "asr: missing"
        assert {"asr", "diarize"} <= set(worker.models_loaded)
        assert (workers_dir(settings) / f"{worker.id}.json").is_file()
    finally:
        beat.stop()


def test_loaded_models_of_a_runner_without_models() -> None:
    assert loaded_models(object()) == loaded_models(None)
