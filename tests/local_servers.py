"""For the tests and benchmarks that start CallAnnotate or another server as a process.

The one definition of each for both: tests import this module as ``local_servers``
(``tests/`` is on ``sys.path`` under pytest); the benchmarks append ``tests/`` to ``sys.path``
(benchmarks/api_throughput.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import redis


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound to port 0 and released; another
    process may take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def callannotate_command() -> list[str]:
    """The ``callannotate`` CLI of this interpreter's environment: its console script, or
    ``python -m callannotate.cli`` where the script is not installed."""
    script = Path(sys.executable).parent / "callannotate"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "callannotate.cli"]


class PrivateRedis:
    """A private ``redis-server`` on 127.0.0.1 and a free port, its files in ``root``, started
    and SIGKILLed by its pid (the shared one on 6379 is never touched). ``durable``: the
    append-only file with an fsync per write, as a production broker runs."""

    start_timeout_s = 10.0

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = root
        self.durable = durable
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else [
            "--appendonly", "no"]  # fmt: skip
        with (self.root / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 *persistence, "--dir", str(self.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:  # PING answers once the append-only file is loaded (BusyLoadingError before)
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"private redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crash or an OOM kill."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


_Redis = TypeVar("_Redis", bound=PrivateRedis)


@contextlib.contextmanager
def running_redis(server: _Redis) -> Iterator[_Redis]:
    """``server`` started, and SIGKILLed on exit; a test without ``redis-server`` is skipped,
    or fails under ``CI=true``, where it must run."""
    import pytest

    if not server.available():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    server.start()
    try:
        yield server
    finally:
        server.kill()
