"""Several API processes on one port: ``callannotate serve --processes N`` (``api.processes``).

One API process is one event loop under one GIL, so it uses at most one core however many the
host has (docs/deployment.md, "Load test"). With ``api.processes`` > 1, ``serve`` binds its
socket once and starts N - 1 more API processes (multiprocessing "spawn") that accept on that
same socket; the kernel hands each new connection to whichever process accepts it first.

* The first process (the one ``serve`` started) is the only one with the embedded workers
  and their queue manager, the built-in alerts and the separate metrics listener
  (``metrics.port``); the others are API only (``api.embedded_workers`` off, ``metrics.port``
  0), like ``serve --no-workers`` behind a proxy.
* Every process must see every job event and share the rate-limit budgets, so more than one
  process needs ``events.backend: redis`` (and a rate-limit backend that is not ``memory``):
  :func:`processes_refusal` says why ``serve`` refuses otherwise.
* Metrics: every process counts into files of one private folder (prometheus-client's
  multiprocess mode, :mod:`callannotate.observability.multiproc`), and whichever process
  answers ``GET /metrics`` (or the metrics port) serves the merged totals.
* An extra process that exits while ``serve`` is not stopping is started again (at most
  once per :data:`RESTART_INTERVAL_S`); each one ends with the first (``SIGTERM`` when it
  goes, also after a ``kill -9``: the parent-death signal).
* Stopping: when a signal stops ``serve`` (``SIGTERM``, ``SIGINT``), every extra process gets
  ``SIGTERM`` at once, so all of them finish their requests within the same ``--grace``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from callannotate.config import Settings

log = logging.getLogger(__name__)

RESTART_INTERVAL_S = 1.0
POLL_S = 0.5
#: ``prctl(PR_SET_PDEATHSIG, ...)``: the signal an extra process gets when ``serve`` dies.
_PR_SET_PDEATHSIG = 1


def processes_refusal(settings: Settings) -> str | None:
    """Why ``settings`` cannot run several API processes, or None when it can (or one runs)."""
    if settings.api.processes <= 1:
        return None
    if settings.events.backend != "redis":
        return (
            "api.processes > 1 needs events.backend 'redis': with the in-memory bus a "
            "WebSocket client of one process would miss the job events of the others"
        )
    if settings.rate_limits.enabled and settings.rate_limits.backend == "memory":
        return (
            "api.processes > 1 needs rate_limits.backend 'redis' or 'auto': in memory each "
            "process would grant the whole budget"
        )
    return None


def extra_settings(settings: Settings) -> Settings:
    """The settings of an extra process: API only, no metrics port of its own."""
    return settings.model_copy(
        update={
            "api": settings.api.model_copy(update={"embedded_workers": False}),
            "metrics": settings.metrics.model_copy(update={"port": 0}),
        }
    )


def _die_with_parent() -> None:
    """Ask Linux for ``SIGTERM`` when the process that started this one dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _serve_extra(
    settings: Settings, sock: socket.socket, options: dict[str, Any], parent: int, folder: str
) -> None:
    """Entry point of an extra API process (multiprocessing target)."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent was already gone before prctl took effect
        return
    from callannotate.api.app import create_app
    from callannotate.observability.logging import configure_logging
    from callannotate.observability.multiproc import serve_merged

    serve_merged(Path(folder))
    configure_logging(settings.log)
    app = create_app(settings, freeze_gc=True)
    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])


class ExtraProcesses:
    """The N - 1 extra API processes of ``serve``, kept running until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        options: dict[str, Any],
        metrics_dir: Path,
    ) -> None:
        self.settings = extra_settings(settings)
        self.count = settings.api.processes - 1
        self.sock = sock
        self.options = options
        self.metrics_dir = metrics_dir
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess | None] = [None] * self.count
        self._started_at = [0.0] * self.count
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)
        self._monitor = threading.Thread(target=self._watch, name="api-processes", daemon=True)
        self._monitor.start()

    def _spawn(self, index: int) -> None:
        args = (self.settings, self.sock, self.options, os.getpid(), str(self.metrics_dir))
        proc = self._ctx.Process(target=_serve_extra, args=args, name=f"api-{index + 1}")
        proc.start()
        with self._lock:
            self._procs[index] = proc
            self._started_at[index] = time.monotonic()
        log.info("api process started", extra={"api_process": index + 1, "pid": proc.pid})

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            for index in range(self.count):
                with self._lock:
                    proc, started = self._procs[index], self._started_at[index]
                if proc is None or proc.is_alive() or self._stopping.is_set():
                    continue
                log.error(
                    "api process exited; starting it again",
                    extra={"api_process": index + 1, "pid": proc.pid, "exitcode": proc.exitcode},
                )
                _forget_metrics(self.metrics_dir, proc.pid)
                wait = RESTART_INTERVAL_S - (time.monotonic() - started)
                if wait > 0 and self._stopping.wait(wait):
                    return
                self._spawn(index)

    def signal(self, sig: int) -> None:
        """Pass ``sig`` on to every extra process (``serve`` is stopping)."""
        self._stopping.set()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, grace_s: float) -> None:
        """``SIGTERM`` to those still running, wait ``grace_s`` (+5 s), then ``SIGKILL``."""
        self.signal(signal.SIGTERM)
        if self._monitor is not None:
            self._monitor.join()
        deadline = time.monotonic() + grace_s + 5.0
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("api process did not stop in time; killed", extra={"pid": proc.pid})
                proc.kill()
                proc.join(5)
            _forget_metrics(self.metrics_dir, proc.pid)


def _forget_metrics(folder: Path, pid: int | None) -> None:
    """The live gauges of an ended process end with it (its counters stay in the totals)."""
    if pid is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    with contextlib.suppress(OSError):
        mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


class _ForwardingServer(uvicorn.Server):
    """uvicorn's server whose stop signal also reaches the extra processes at once."""

    def __init__(self, config: uvicorn.Config, extra: ExtraProcesses) -> None:
        super().__init__(config)
        self.extra = extra

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # SIGTERM whatever stops this one: a Ctrl-C already sent SIGINT to the whole process
        # group, and a second SIGINT would make uvicorn skip the graceful shutdown
        self.extra.signal(signal.SIGTERM)
        super().handle_exit(sig, frame)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[int]]:
    """Hold ``SIGINT``/``SIGTERM`` that uvicorn re-raises after its shutdown until the extra
    processes are stopped; the caller raises them again afterwards (same exit as one process)."""
    held: list[int] = []
    hold = lambda sig, _frame: held.append(sig)  # noqa: E731
    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_processes(
    settings: Settings,
    app_factory: Callable[[Settings], Any],
    options: dict[str, Any],
    grace_s: float,
) -> None:
    """Serve ``app_factory(settings)`` in this process and ``api.processes - 1`` extra API
    processes on one socket; returns when all of them have stopped."""
    from callannotate.observability.multiproc import serve_merged

    folder = Path(tempfile.mkdtemp(prefix="callannotate-api-metrics-"))
    try:
        serve_merged(folder)  # before anything is counted, and inherited by the extras
        config = uvicorn.Config(app_factory(settings), **options)
        sock = config.bind_socket()
        extra = ExtraProcesses(settings, sock, options, folder)
        with _deferred_signals() as held:
            extra.start()
            try:
                _ForwardingServer(config, extra).run(sockets=[sock])
            finally:
                extra.stop(grace_s)
                sock.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for sig in held:
        signal.raise_signal(sig)
