"""Exporting one process's metrics: the scrape-time gauges and the separate listener.

``callannotate serve`` (the app's lifespan) and ``callannotate worker`` each build one
:class:`MetricsExport` around their queue and executor. With ``metrics.port`` > 0 a plain-HTTP
listener (prometheus-client's own server, in a thread) answers any path with the metrics on
``metrics.host:metrics.port``; keep it on 127.0.0.1 or a private interface. A Celery worker
serves its prefork children's metrics on that port instead
(:mod:`callannotate.observability.multiproc`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from callannotate.config import MetricsSettings, Settings
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.heartbeat import WorkerRegistry
from callannotate.jobs.light import light_store
from callannotate.observability.collector import Source, install, uninstall
from callannotate.observability.metrics import exposition_registry

log = logging.getLogger(__name__)


class MetricsListener:
    """The separate metrics listener (``metrics.port``), stopped with :meth:`stop`."""

    def __init__(
        self, settings: MetricsSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry  # None: what GET /metrics serves (metrics.exposition_registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def start(self) -> None:
        if not self.settings.port or self._server is not None:
            return
        registry = self.registry or exposition_registry()
        self._server, self._thread = start_http_server(
            self.settings.port, addr=self.settings.host, registry=registry
        )
        log.info(
            "metrics listener started",
            extra={"metrics_host": self.settings.host, "metrics_port": self.port},
        )

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class MetricsExport:
    """What one process exports: its queue/executor gauges, plus the separate listener."""

    def __init__(self, settings: Settings, queue: FileQueue, executor: Executor | None) -> None:
        self.settings = settings
        self.queue = queue
        self.executor = executor
        self.listener = MetricsListener(settings.metrics)
        self._source: Source | None = None

    def start(self) -> None:
        registry = WorkerRegistry.from_settings(self.settings)  # every process's workers
        light = light_store(self.settings.data_dir)  # light tasks of every process
        self._source = install(
            self.queue, self.executor, self.settings.metrics, registry, light=light
        )
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()
        if self._source is not None:
            uninstall(self._source)
            self._source = None
