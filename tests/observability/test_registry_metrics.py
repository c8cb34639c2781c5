"""Worker gauges read from the heartbeat registry (Celery children and local workers)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from callannotate.jobs.heartbeat import WorkerRecord, WorkerRegistry
from callannotate.jobs.models import utcnow
from callannotate.observability.collector import registry_metrics


def _record(pid: int, executor: str, age_s: float, rss: int) -> WorkerRecord:
    now = utcnow()
    return WorkerRecord(
        id=f"h-{pid}",
        host="h",
        pid=pid,
        executor=executor,  # type: ignore[arg-type]
        name="n",
        concurrency=1,
        queues=[],
        jobs_running=[],
        models_loaded=[],
        rss_bytes=rss,
        started_at=now,
        heartbeat_at=now - timedelta(seconds=age_s),
    )


def test_registry_gauges(tmp_path: Path) -> None:
    registry = WorkerRegistry(tmp_path, lost_after_s=30.0, forget_after_s=60.0)
    registry.write(_record(1, "celery", 2.0, 100))
    registry.write(_record(2, "celery", 8.0, 50))
    registry.write(_record(3, "celery", 40.0, 999))
    registry.write(_record(4, "local", 1.0, 10))
    registry.write(_record(5, "local", 120.0, 10))  # past forget: still counted, not deleted

    samples = {
        (m.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry_metrics(registry)
        for s in m.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert get("callannotate_registered_workers", executor="celery", state="alive") == 2
    assert get("callannotate_registered_workers", executor="celery", state="lost") == 1
    assert get("callannotate_registered_workers", executor="local", state="lost") == 1
    age = get("callannotate_registered_worker_heartbeat_age_seconds", executor="celery")
    assert 8.0 <= age < 10.0
    assert get("callannotate_registered_worker_rss_bytes", executor="celery") == 150
    assert registry.path("h", 5).exists()  # a scrape never deletes records
