"""A private, durable ``redis-server`` for the broker chaos test and benchmark (issue 18).

It binds 127.0.0.1 on a free port, keeps an append-only file in its own folder
(``appendonly yes``, ``appendfsync always``: what a production broker needs so that queued
messages survive a crash, docs/scale-out.md) and is started and SIGKILLed by its pid, so the
shared Redis on 6379 is never touched. Restarting it on the same folder reloads its data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from local_servers import free_port


class DurableRedis:
    """``redis-server`` on 127.0.0.1:``port`` with its data in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
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

    def unacked_task_ids(self, prefix: str) -> list[str]:
        """Ids of the Celery tasks still in the broker's unacknowledged set (their ack was
        lost with the connection; kombu restores them after the visibility timeout)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0)
        try:
            raw = client.hgetall(f"{prefix}:unacked")
        finally:
            client.close()
        return [str(json.loads(value)[0]["headers"]["id"]) for value in raw.values()]
