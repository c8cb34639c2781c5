"""Gauges computed when Prometheus scrapes: queue, jobs per state, light tasks, workers, disk,
SLAs.

Nothing here is updated on the hot path: :class:`ServiceCollector` looks at the file queue
and the executor at scrape time. The cost is one listing per queue folder, one dict look-up
per queued job (its ``created_at`` is read once, when it enters incoming) and one lease file
read per running job; a folder whose listing has not changed since the last
scrape is not read again. ``benchmarks/metrics.py`` measures a store of 10,000 jobs.

One process serves one queue: :func:`install` points the collector at the app's (or the
worker's) queue and executor; a second install (tests building several apps) replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callannotate.config import MetricsSettings
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import (
    INCOMING,
    JOB_FILE,
    LOCK_FILE,
    PROCESSING,
    STATE_OF_FOLDER,
    FileQueue,
    valid_job_id,
)
from callannotate.jobs.heartbeat import WorkerRegistry
from callannotate.jobs.light import LightStore, light_store
from callannotate.observability.light_gauges import LightTally, light_families
from callannotate.observability.metrics import PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    queue: FileQueue
    executor: Executor | None
    settings: MetricsSettings
    registry: WorkerRegistry | None = None  # heartbeat records of every worker process
    light: LightStore | None = None  # light tasks (data_dir/light); none: no light gauges


class _CreatedAt:
    """``created_at`` of the queued jobs, by job id.

    A job's ``created_at`` is set once at submission and never changes (retries keep it), so
    each queued job's ``job.json`` is read once, when it first shows up in incoming; ids
    that left incoming are forgotten at the next scan (memory stays bounded by the queue).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, float] = {}

    def oldest(self, folder: Path, names: list[str]) -> float | None:
        with self._lock:
            known, seen = self._by_id, {}
            for name in names:
                created = known.get(name)
                if created is None:
                    created = _read_created(folder / name / JOB_FILE)
                    if created is None:
                        continue  # claimed or deleted meanwhile, or unreadable
                seen[name] = created
            self._by_id = seen
            return min(seen.values(), default=None)


def _read_created(job_json: Path) -> float | None:
    try:
        raw = json.loads(job_json.read_bytes())
        return datetime.fromisoformat(str(raw["created_at"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ServiceCollector(Collector):
    """Prometheus collector for the state of this process's queue and workers."""

    def __init__(self) -> None:
        self._source: Source | None = None
        self._created = _CreatedAt()
        self._listing = _Listing()
        self._light = LightTally()

    def attach(self, source: Source | None) -> None:
        self._source = source

    @property
    def source(self) -> Source | None:
        return self._source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: the registry must not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        source = self._source
        if source is None:
            return
        try:
            yield from self._queue_metrics(source.queue)
            yield from self._worker_metrics(source)
            if source.registry is not None:
                yield from registry_metrics(source.registry)
            if source.light is not None:
                yield from light_families(self._light, source.light)
            yield from self._disk_metrics(source.queue.root)
            yield sla_family(source.settings)
        except Exception:  # a broken scrape must not take the endpoint down
            log.exception("metrics collector failed")

    # ------------------------------------------------------------------ parts

    def _queue_metrics(self, queue: FileQueue) -> Iterator[Metric]:
        now = time.time()
        per_state = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "Jobs in the queue folder by state (failed includes cancelled).",
            labels=["state"],
        )
        depth = 0
        oldest: float | None = None
        for folder, state in STATE_OF_FOLDER.items():
            names, memo = self._listing.scan(queue.root / folder)
            per_state.add_metric([state], len(names))
            if folder == INCOMING:
                depth = len(names)
                oldest = memo.get("oldest")  # same listing: same jobs, same oldest
                if oldest is None and names:
                    oldest = self._created.oldest(queue.root / folder, names)
                    if oldest is not None:
                        memo["oldest"] = oldest
        yield per_state
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Jobs waiting for a worker (queued).", value=depth
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_waiting_seconds",
            "Age of the oldest queued job since it was submitted; 0 when none waits.",
            value=max(0.0, now - oldest) if oldest is not None else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds",
            "Seconds since the stalest lease renewal of a running job (its worker's "
            "heartbeat); 0 when nothing runs.",
            value=stalest_lease(queue, now),
        )

    def _worker_metrics(self, source: Source) -> Iterator[Metric]:
        executor = source.executor
        workers = executor.workers() if executor is not None else []
        alive = GaugeMetricFamily(
            f"{PREFIX}_workers_alive",
            "Worker processes of this process that are alive.",
            value=sum(1 for w in workers if w.alive),
        )
        yield alive
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_ready",
            "Worker processes that loaded their models and take jobs.",
            value=sum(1 for w in workers if w.alive and w.ready),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_busy",
            "Worker processes running a job now.",
            value=sum(1 for w in workers if w.job_id is not None),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_workers_configured",
            "Worker processes this process runs when healthy (0: jobs run elsewhere).",
            value=len(workers),
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts",
            "Worker processes replaced after dying or being killed (time limit, cancel).",
            value=sum(w.restarts for w in workers),
        )
        yield restarts

    def _disk_metrics(self, root: Path) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(root)
        except OSError:
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_data_dir_free_bytes",
            "Free bytes on the filesystem of the data folder (for non-root users).",
            value=usage.free,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_data_dir_size_bytes",
            "Size in bytes of the filesystem of the data folder.",
            value=usage.total,
        )


def sla_family(settings: MetricsSettings) -> Metric:
    """The service-level targets of the settings, which the alert rules compare against
    (joined on the instance that exports the measured metric)."""
    sla = GaugeMetricFamily(
        f"{PREFIX}_sla_seconds",
        "Service-level targets from settings (metrics.*_sla_s), for alert rules.",
        labels=["kind"],
    )
    sla.add_metric(["queue_wait"], settings.queue_wait_sla_s)
    sla.add_metric(["job_duration"], settings.job_duration_sla_s)
    return sla


def registry_metrics(registry: WorkerRegistry) -> Iterator[Metric]:
    """Workers of every process and executor (Celery children too), from their heartbeat
    records in the data folder: counted alive or lost, oldest heartbeat, memory."""
    workers = registry.snapshot(clean=False)
    count = GaugeMetricFamily(
        f"{PREFIX}_registered_workers",
        "Worker processes with a heartbeat record (data_dir/workers), by executor and state "
        "(lost: heartbeat older than jobs.worker_lost_after_s).",
        labels=["executor", "state"],
    )
    age = GaugeMetricFamily(
        f"{PREFIX}_registered_worker_heartbeat_age_seconds",
        "Age of the stalest heartbeat among the workers not yet counted lost, by executor.",
        labels=["executor"],
    )
    rss = GaugeMetricFamily(
        f"{PREFIX}_registered_worker_rss_bytes",
        "Resident memory of the workers not counted lost, summed, by executor.",
        labels=["executor"],
    )
    for executor in ("local", "celery"):
        mine = [w for w in workers if w.executor == executor]
        live = [w for w in mine if not w.lost]
        count.add_metric([executor, "alive"], len(live))
        count.add_metric([executor, "lost"], len(mine) - len(live))
        age.add_metric([executor], max((w.heartbeat_age_s for w in live), default=0.0))
        rss.add_metric([executor], sum(w.rss_bytes for w in live))
    yield count
    yield age
    yield rss


def _job_names(folder: Path) -> list[str]:
    """Job folder names in ``folder`` (the queue only ever puts job folders there)."""
    try:
        return [name for name in os.listdir(folder) if len(name) == 32 and valid_job_id(name)]
    except FileNotFoundError:
        return []


class _Listing:
    """Folder listings reused while a folder is unchanged.

    A folder's mtime changes whenever a job folder is renamed in or out, so an unchanged
    ``(inode, mtime)`` means the same job folders. Filesystem timestamps are coarse (a few
    ms), so a listing is only reused when it was taken more than :data:`SETTLE_S` after the
    folder's last change: two renames within one timestamp tick cannot hide each other.
    """

    SETTLE_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], list[str], dict[str, float]]] = {}

    def scan(self, folder: Path) -> tuple[list[str], dict[str, float]]:
        """(job names, a memo dict valid as long as the listing is) of ``folder``."""
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return [], {}
        key = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(folder)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        names = _job_names(folder)
        memo: dict[str, float] = {}
        with self._lock:
            if time.time() - st.st_mtime > self.SETTLE_S:
                self._cache[folder] = (key, names, memo)
            else:
                self._cache.pop(folder, None)
        return names, memo


def stalest_lease(queue: FileQueue, now: float) -> float:
    """Seconds since the least recently renewed lease of a running job (0: none runs)."""
    lease_s = queue.settings.lease_seconds
    worst = 0.0
    for name in _job_names(queue.root / PROCESSING):
        try:
            data = json.loads((queue.root / PROCESSING / name / LOCK_FILE).read_bytes() or b"{}")
            expires = datetime.fromisoformat(str(data["expires_at"])).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        worst = max(worst, now - (expires - lease_s))
    return max(0.0, worst)


COLLECTOR = ServiceCollector()
REGISTRY.register(COLLECTOR)


def install(
    queue: FileQueue,
    executor: Executor | None,
    settings: MetricsSettings,
    registry: WorkerRegistry | None = None,
    light: LightStore | None = None,
) -> Source:
    """Export the state of ``queue`` and ``executor`` (and the workers of ``registry``, the
    light tasks of ``light``: by default the folder beside the queue's, as
    ``Settings.queue_dir`` is ``data_dir/queue``) from now on (replaces a previous one)."""
    light = light if light is not None else light_store(queue.root.parent)
    source = Source(
        queue=queue, executor=executor, settings=settings, registry=registry, light=light
    )
    COLLECTOR.attach(source)
    return source


def uninstall(source: Source) -> None:
    """Stop exporting ``source`` unless another one replaced it meanwhile."""
    if COLLECTOR.source is source:
        COLLECTOR.attach(None)
