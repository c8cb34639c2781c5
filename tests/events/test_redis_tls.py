"""``rediss://``: the event bus over TLS to a real ``redis-server`` started with a ``trustme``
certificate (``--tls-port``, plain port off).

The CA comes in the URL (``?ssl_ca_certs=/path/ca.pem``), which redis-py reads; the bus and
any other Redis client built with ``from_url`` get TLS without a setting of their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from local_servers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callannotate.config import EventSettings
from callannotate.events.bus import RedisEventBus
from callannotate.events.models import EventDraft
from tls_certs import Certs, make_certs

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"TLS Redis test cannot run on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Certs]]:
    if REDIS_SERVER is None:
        _unavailable("redis-server is not installed")
    root = tmp_path_factory.mktemp("redis-tls")
    certs = make_certs(root / "certs")
    port = free_port()
    log = root / "redis.log"
    options = {
        "port": "0",  # no plain-text port
        "tls-port": str(port),
        "tls-cert-file": str(certs.cert_file),
        "tls-key-file": str(certs.key_file),
        "tls-ca-cert-file": str(certs.ca_file),
        "tls-auth-clients": "no",
        "save": "",
        "appendonly": "no",
        "dir": str(root),
        "logfile": str(log),
    }
    process = subprocess.Popen(
        [str(REDIS_SERVER), *(x for name, value in options.items() for x in (f"--{name}", value))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                _unavailable(f"redis-server has no TLS support: {log.read_text()[-500:]}")
            try:
                url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(certs.ca_file))}"
                if redis.Redis.from_url(url).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, certs
    finally:
        process.terminate()
        process.wait(timeout=10)


def _url(port: int, certs: Certs) -> str:
    return f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(certs.ca_file))}"


async def test_event_bus_over_rediss(tls_redis: tuple[int, Certs]) -> None:
    port, certs = tls_redis
    bus = RedisEventBus(EventSettings(backend="redis", redis_url=_url(port, certs)))
    await bus.start()
    try:
        heard: list[str] = []
        bus.add_listener(lambda event: heard.append(event.type))
        event = await bus.publish(EventDraft(type="job.queued", job_id="tls1", owner="a"))
        assert event.seq == 1
        replay = await bus.replay("tls1", 0)
        assert [e.type for e in replay.events] == ["job.queued"]
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert heard == ["job.queued"]  # pub/sub over the same TLS connection pool
        info = bus._redis.connection_pool.connection_kwargs
        assert info["ssl_ca_certs"] == str(certs.ca_file)
    finally:
        await bus.stop()


async def test_rediss_checks_the_server_certificate(tls_redis: tuple[int, Certs]) -> None:
    """Without the CA (system trust only) the handshake fails: the certificate is checked."""
    port, _ = tls_redis
    bus = RedisEventBus(EventSettings(backend="redis", redis_url=f"rediss://127.0.0.1:{port}/0"))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        await bus.start()


async def test_plain_redis_url_to_a_tls_port_fails(tls_redis: tuple[int, Certs]) -> None:
    port, _ = tls_redis
    bus = RedisEventBus(
        EventSettings(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0?socket_timeout=3")
    )
    with pytest.raises(redis.RedisError):
        await bus.start()


async def test_rate_limiter_over_rediss(tls_redis: tuple[int, Certs]) -> None:
    """The shared rate limiter (throttled-py's pool, also built from the URL) uses TLS too."""
    from callannotate.config import BucketSettings
    from callannotate.security.ratelimit import RedisBackend

    port, certs = tls_redis
    backend = RedisBackend(_url(port, certs), key_prefix=f"tls-test-{os.getpid()}")
    bucket = BucketSettings(burst=2, per_second=1 / 3600)
    try:
        outcomes = [(await backend.hit("reads", "alice", bucket)).allowed for _ in range(3)]
    finally:
        await backend.close()
    assert outcomes == [True, True, False]
