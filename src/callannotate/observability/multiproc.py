"""Metrics of a Celery worker and all its prefork children, served on one port.

A job of executor ``celery`` runs and is finalised in a child process of ``callannotate worker
--executor celery``: the job counters (``jobs_completed``, ``jobs_failed``, ...), the job and
step duration histograms, the real-time factor, audio seconds and model load times are counted
there. Children are forked and replaced by the pool, and a child has no port of its own, so
the worker uses prometheus-client's multiprocess mode:

1. :meth:`CeleryWorkerMetrics.start` runs in the worker's main process before the pool forks:
   it makes a fresh, empty folder (``tempfile.mkdtemp``, under ``TMPDIR``), points
   ``PROMETHEUS_MULTIPROC_DIR`` at it and switches this process's metrics to file-backed
   values (:func:`enable`). Each child then writes its own ``<type>_<pid>.db`` files there
   (prometheus-client notices the fork by the pid and starts the child's values at 0).
2. The listener on ``metrics.host:metrics.port`` (the same setting, bind address and
   protection as the separate listener of ``serve`` and a local ``worker``: reachability)
   merges the files of every child at each scrape (:class:`WorkerCollector`). Counters and
   histograms of a child that exited or was killed stay in its files, so totals never go
   back. Gauges name their ``multiprocess_mode`` (``livesum``, ``livemax``, ``max``): the
   ``live*`` files of a child are removed when it exits (Celery's ``worker_process_shutdown``
   in the child) or, for a killed child, at the next scrape once its pid is gone.
3. :meth:`CeleryWorkerMetrics.stop` removes the folder.

The shared-folder gauges (queue depth, jobs per state, workers) are not served here: the API
exports them, and a second exporter would double them in ``sum()``. The SLA targets are, so
that the per-instance SLA alert rules can join the job duration of this worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from callannotate import __version__
from callannotate.config import MetricsSettings
from callannotate.observability.collector import sla_family
from callannotate.observability.export import MetricsListener
from callannotate.observability.metrics import (
    PREFIX,
    own_metrics,
    recreate_values,
    use_exposition_registry,
)

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")
_HEADER_BYTES = 8  # a value file starts with its used length (4 bytes) and 4 of padding
#: The files of exited processes are merged into one ``<type>_archive.db`` per type once more
#: than this many of them have piled up (a long-running worker whose children are replaced).
COMPACT_AFTER = 16
ARCHIVE = "archive"


def enabled() -> bool:
    """Whether this process's metrics are file-backed (multiprocess mode)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def enable(folder: Path) -> None:
    """Store this process's metrics (and its future children's) in ``folder`` from now on.

    Call before anything was counted and before forking: the callannotate metrics get new,
    file-backed values at 0.
    """
    os.environ[ENV] = str(folder)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    recreate_values()


def disable() -> None:
    """Back to in-memory values (tests; a worker process ends instead)."""
    os.environ.pop(ENV, None)
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
    values.ValueClass = values.MutexValue
    recreate_values()


def compact(folder: Path, after: int = COMPACT_AFTER) -> int:
    """Merge the counter, histogram and non-live gauge files of exited processes into one
    archive file per type once more than ``after`` of them exist; returns the files merged.

    Totals stay the same (the archive holds the sums, and the maxima of ``max`` gauges); a
    scrape costs one file per type instead of one per exited child. Only the worker's main
    process calls it, from its scrape (serialised), so no scrape sees a half-done merge.
    """
    dead: dict[str, list[Path]] = {}
    for path in folder.glob("*.db"):
        prefix, _, pid = path.stem.rpartition("_")
        if pid.isdigit() and not prefix.startswith("gauge_live") and not _alive(int(pid)):
            dead.setdefault(prefix, []).append(path)
    if sum(len(paths) for paths in dead.values()) <= after:
        return 0
    merged_files = 0
    for prefix, paths in sorted(dead.items()):
        if prefix in ("gauge_all", "gauge_liveall"):
            continue  # one series per pid: nothing to merge
        archive = folder / f"{prefix}_{ARCHIVE}.db"
        sources = [str(p) for p in [*paths, archive] if p.exists()]
        merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
        partial = folder / f".{prefix}_{ARCHIVE}.partial"  # not *.db: never read half-written
        partial.unlink(missing_ok=True)
        out = MmapedDict(str(partial))  # type: ignore[no-untyped-call]
        try:
            for metric in merged:
                for sample in metric.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "pid"}
                    key = mmap_key(
                        metric.name, sample.name, list(labels), list(labels.values()),
                        metric.documentation,
                    )  # fmt: skip
                    out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            out.close()  # type: ignore[no-untyped-call]
        os.replace(partial, archive)
        for path in paths:
            path.unlink(missing_ok=True)
        merged_files += len(paths)
    return merged_files


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead(folder: Path) -> list[int]:
    """Remove the live-gauge files of processes that are gone (a killed child never ran its
    shutdown signal); returns their pids. Counter and histogram files stay."""
    dead: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            match = _LIVE_FILE.match(name)
            if match and not _alive(int(match.group(1))):
                dead.add(int(match.group(1)))
    for pid in sorted(dead):
        with contextlib.suppress(FileNotFoundError):
            mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    return sorted(dead)


class WorkerCollector(Collector):
    """Everything a Celery worker serves: the merged files of its processes, the build
    version and the SLA targets."""

    def __init__(self, folder: Path, settings: MetricsSettings) -> None:
        self.folder = folder
        self.settings = settings
        self._lock = threading.Lock()  # one scrape at a time merges and compacts

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                sweep_dead(self.folder)
                compact(self.folder)
            except (OSError, struct.error, RuntimeError):  # the scrape goes on with the files
                log.exception("tidying the metrics files of exited processes failed")
            merged = self._merged()
        yield from merged
        build = InfoMetricFamily(f"{PREFIX}_build", "Version of the running CallAnnotate.")
        build.add_metric([], {"version": __version__})
        yield build
        yield sla_family(self.settings)

    def _merged(self) -> list[Metric]:
        return merged_files(self.folder)


def merged_files(folder: Path) -> list[Metric]:
    """The files of every process in ``folder``, merged (counters and histograms summed).

    A process that is starting creates its files empty and sizes them a moment later; such
    a file holds nothing yet and is left out (prometheus-client would fail the scrape).
    """
    for attempt in range(3):
        files = []
        for path in sorted(folder.glob("*.db")):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size >= _HEADER_BYTES:
                    files.append(str(path))
        try:
            return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
        except (struct.error, RuntimeError, FileNotFoundError):
            if attempt == 2:
                raise
    return []  # pragma: no cover - unreachable


class ApiProcessesCollector(Collector):
    """What any of several API processes serves (``api.processes`` > 1): the merged files of
    all of them, plus everything of the default registry that is not a file-backed metric
    (the scrape-time service gauges, the build version, the SLA targets, this process's
    ``process_*``).

    Unlike a Celery worker's scrape it never compacts: several processes scrape at once, and
    API processes are not replaced all the time (a restarted one leaves a few small files).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        try:
            sweep_dead(self.folder)
        except OSError:  # another process removed them first
            log.debug("sweeping the metrics files of ended processes failed", exc_info=True)
        yield from merged_files(self.folder)
        own = {id(m) for m in own_metrics()}
        for collector in list(REGISTRY._collector_to_names):  # pinned prometheus-client
            if id(collector) not in own:
                yield from collector.collect()


def serve_merged(folder: Path) -> None:
    """Count this process's metrics into ``folder`` (and its spawned children's, through the
    environment) and serve the merged totals of every process counting there."""
    enable(folder)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApiProcessesCollector(folder))
    use_exposition_registry(registry)


def _child_exit(**_: Any) -> None:
    """Celery's ``worker_process_shutdown`` (in the child): its live gauges end with it."""
    folder = os.environ.get(ENV)
    if folder and enabled():
        with contextlib.suppress(OSError):
            mark_process_dead(os.getpid(), folder)  # type: ignore[no-untyped-call]


class CeleryWorkerMetrics:
    """The metrics port of ``callannotate worker --executor celery`` (``metrics.port``)."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.folder: Path | None = None
        self.listener: MetricsListener | None = None

    @property
    def port(self) -> int | None:
        return self.listener.port if self.listener is not None else None

    def start(self) -> None:
        """Multiprocess mode and the listener; nothing when ``metrics.port`` is 0."""
        if not self.settings.port or self.folder is not None:
            return
        from celery.signals import worker_process_shutdown

        self.folder = Path(tempfile.mkdtemp(prefix="callannotate-metrics-"))
        enable(self.folder)
        worker_process_shutdown.connect(_child_exit, weak=False)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(self.folder, self.settings))
        self.listener = MetricsListener(self.settings, registry)
        try:
            self.listener.start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "celery worker metrics: children's metrics merged from files",
            extra={"metrics_dir": str(self.folder), "metrics_port": self.port},
        )

    def stop(self) -> None:
        from celery.signals import worker_process_shutdown

        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        worker_process_shutdown.disconnect(_child_exit)
        if self.folder is not None:
            if os.environ.get(ENV) == str(self.folder):
                disable()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
