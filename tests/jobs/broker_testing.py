"""A private, durable ``redis-server`` for the broker chaos test and benchmark (issue 18).

It binds 127.0.0.1 on a free port, keeps an append-only file in its own folder
(``appendonly yes``, ``appendfsync always``: what a production broker needs so that queued
messages survive a crash, docs/scale-out.md) and is started and SIGKILLed by its pid, so the
shared Redis on 6379 is never touched. Restarting it on the same folder reloads its data.
"""

from __future__ import annotations

import json
from pathlib import Path

import redis

from local_servers import PrivateRedis


class DurableRedis(PrivateRedis):
    """The private broker of the chaos test and the benchmark: append-only, fsync always."""

    start_timeout_s = 15.0

    def __init__(self, root: Path) -> None:
        super().__init__(root, durable=True)

    def unacked_task_ids(self, prefix: str) -> list[str]:
        """Ids of the Celery tasks still in the broker's unacknowledged set (their ack was
        lost with the connection; kombu restores them after the visibility timeout)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0)
        try:
            raw = client.hgetall(f"{prefix}:unacked")
        finally:
            client.close()
        return [str(json.loads(value)[0]["headers"]["id"]) for value in raw.values()]
