"""Cost of the metrics: the HTTP middleware, and rendering ``/metrics`` over a large store.

1. ``GET /jobs/{id}`` with and without :class:`MetricsMiddleware` (target: < 5 % fewer
   requests/s and < 5 % higher p99):

   * the middleware alone, around an ASGI app that answers at once: its own µs per request;
   * in process: the real app called directly (no sockets), with and without it;
   * over HTTP: two real uvicorn servers (``callannotate serve --no-workers`` as the CLI runs
     it; one with the middleware removed from the app), loaded in turn by the closed-loop
     keep-alive client of ``benchmarks/api_throughput.py``, alternating rounds so drift of
     the machine hits both alike.

2. Rendering the metrics endpoint with 10,000 jobs in the file queue (target: < 50 ms): the
   scrape-time collector counts every state folder, reads the oldest queued job and the
   running jobs' leases. Measured cold (first scrape after start: every queued job.json
   read), busy (every folder changed since the previous scrape) and settled (nothing
   changed), for a typical store (mostly finished jobs) and the worst case (all queued).

    .venv/bin/python benchmarks/metrics.py [--duration 5] [--rounds 3] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # local_servers

import api_throughput
from api_throughput import bench_status, pct
from callannotate.config import ApiSettings, MetricsSettings, QueueSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job, JobState, utcnow
from callannotate.observability import collector
from callannotate.observability.metrics import render
from callannotate.observability.middleware import MetricsMiddleware
from local_servers import free_port

META = AudioMeta(
    filename="call.wav",
    stored_as="audio.wav",
    size_bytes=1000,
    format="wav",
    codec="pcm_s16le",
    sample_rate=16000,
    channels=1,
    duration=60.0,
)
FOLDER = {
    JobState.QUEUED: "incoming",
    JobState.RUNNING: "processing",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
}


def fill_store(queue: FileQueue, counts: dict[JobState, int]) -> None:
    """Write job folders straight into the queue's state folders (no fsync: set-up only)."""
    now = utcnow()
    n = 0
    for state, count in counts.items():
        for _ in range(count):
            n += 1
            job = Job(
                id=queue.new_job_id(),
                owner=f"user{n % 50}",
                state=state,
                audio=META,
                created_at=now - timedelta(seconds=n),
            )
            folder = queue.root / FOLDER[state] / job.id
            folder.mkdir(mode=0o700)
            (folder / "job.json").write_text(job.model_dump_json())
            (folder / "audio.wav").write_bytes(b"")
            if state == JobState.RUNNING:
                expires = (now + timedelta(seconds=60)).isoformat()
                (folder / ".lock").write_text(f'{{"expires_at": "{expires}"}}')


# ----------------------------------------------------------------------------- rendering


def _timed_renders(repeats: int, before: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(repeats):
        before()
        t0 = time.perf_counter()
        render()
        times.append(time.perf_counter() - t0)
    return times


def bench_render(label: str, counts: dict[JobState, int], repeats: int = 50) -> None:
    """Cold (first scrape), busy (every folder changed since the last scrape: listed again,
    each queued job's job.json stat'ed) and settled (nothing changed: listings reused)."""
    with tempfile.TemporaryDirectory() as tmp:
        queue = FileQueue(Path(tmp) / "queue", QueueSettings())
        fill_store(queue, counts)
        folders = [queue.root / name for name in FOLDER.values()]
        collector.COLLECTOR._created = collector._CreatedAt()  # cold caches for this store
        collector.COLLECTOR._listing = collector._Listing()
        source = collector.install(queue, None, MetricsSettings())

        def touch(when: float) -> None:
            for folder in folders:
                os.utime(folder, (when, when))

        try:
            t0 = time.perf_counter()
            size = len(render())
            cold = time.perf_counter() - t0
            busy = _timed_renders(repeats, lambda: touch(time.time()))
            touch(time.time() - 10)
            settled = _timed_renders(repeats, lambda: None)
        finally:
            collector.uninstall(source)
    total = sum(counts.values())
    print(f"render /metrics, {total} jobs ({label}), {size} bytes, n={repeats}:")
    print(
        f"    cold {cold * 1000:6.1f} ms | busy p50 {pct(busy, 50):5.1f} ms "
        f"p99 {pct(busy, 99):5.1f} ms | settled p50 {pct(settled, 50):5.1f} ms "
        f"p99 {pct(settled, 99):5.1f} ms"
    )


# ----------------------------------------------------------------------------- in process


def asgi_app(data_dir: Path, with_metrics: bool) -> tuple[object, str]:
    from callannotate.api.app import create_app

    settings = Settings(data_dir=data_dir, api=ApiSettings(embedded_workers=False))
    app = create_app(settings)
    if not with_metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not MetricsMiddleware]
    queue: FileQueue = app.state.queue
    fill_store(queue, {JobState.COMPLETED: 1})
    job_id = next(iter(os.listdir(queue.root / "completed")))
    return app, job_id


async def call(app: object, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    status = 0

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[call-overload]

    await app(scope, receive, send)  # type: ignore[operator]
    return status


def bench_middleware_alone(requests: int = 20000) -> None:
    """The middleware's own cost: around an app that answers at once (no routing, no I/O)."""

    class Route:
        path = "/jobs/{job_id}"

    async def bare(scope: dict[str, object], receive: object, send: object) -> None:
        scope["route"] = Route()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    wrapped = MetricsMiddleware(bare)  # type: ignore[arg-type]

    async def run(app: object) -> float:
        t0 = time.perf_counter()
        for _ in range(requests):
            await call(app, "/jobs/x")
        return (time.perf_counter() - t0) / requests

    async def both() -> tuple[float, float]:
        plain, metered = [], []
        for _ in range(5):
            plain.append(await run(bare))
            metered.append(await run(wrapped))
        return statistics.median(plain), statistics.median(metered)

    plain, metered = asyncio.run(both())
    print(
        f"middleware alone: {(metered - plain) * 1e6:.1f} µs per request "
        f"(bare app {plain * 1e6:.1f} µs, with middleware {metered * 1e6:.1f} µs)"
    )


def bench_in_process(rounds: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        apps = {
            "with metrics": asgi_app(Path(tmp) / "a", True),
            "without metrics": asgi_app(Path(tmp) / "b", False),
        }
        per_request: dict[str, list[float]] = {name: [] for name in apps}
        latencies: dict[str, list[float]] = {name: [] for name in apps}

        async def run() -> None:
            for name, (app, job_id) in apps.items():  # warm-up
                for _ in range(200):
                    status = await call(app, f"/jobs/{job_id}")
                    assert status == 200, (name, status)
            for _ in range(rounds):
                for name, (app, job_id) in apps.items():
                    path = f"/jobs/{job_id}"
                    t_start = time.perf_counter()
                    for _ in range(requests):
                        t0 = time.perf_counter()
                        await call(app, path)
                        latencies[name].append(time.perf_counter() - t0)
                    per_request[name].append((time.perf_counter() - t_start) / requests)

        asyncio.run(run())
    base = statistics.median(per_request["without metrics"])
    for name in apps:
        med = statistics.median(per_request[name])
        print(
            f"in process GET /jobs/{{id}} {name:16s}: {1 / med:8.0f} req/s  "
            f"{med * 1e6:6.1f} µs/req  p99 {pct(latencies[name], 99):5.3f} ms  "
            f"({(med / base - 1) * 100:+.1f} % time per request)"
        )


# ----------------------------------------------------------------------------- over HTTP

SERVE = """
import sys, uvicorn
from callannotate.api.app import create_app
from callannotate.api.protocol import HTTP_PROTOCOL
from callannotate.config import Settings
from callannotate.observability.logging import configure_logging
from callannotate.observability.middleware import MetricsMiddleware
settings = Settings()
configure_logging(settings.log)
app = create_app(settings)
if sys.argv[2] == "off":
    app.user_middleware = [m for m in app.user_middleware if m.cls is not MetricsMiddleware]
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_config=None,
            http=HTTP_PROTOCOL)
"""


@contextlib.contextmanager
def server(data_dir: Path, metrics: bool) -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ,
        CALLANNOTATE_DATA_DIR=str(data_dir),
        CALLANNOTATE_LOG__LEVEL="WARNING",
        CALLANNOTATE_API__EMBEDDED_WORKERS="false",
        CALLANNOTATE_AUTH__ENABLED="false",
        CALLANNOTATE_RATE_LIMITS__ENABLED="false",
    )
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port), "on" if metrics else "off"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    api_throughput.SERVER_PIDS[url] = process.pid  # bench_status measures its CPU per request
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise SystemExit("the server exited during start-up")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def bench_http(rounds: int, duration: float, clients: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = {"with metrics": Path(tmp) / "on", "without metrics": Path(tmp) / "off"}
        job_ids = {}
        for name, folder in data.items():
            queue = FileQueue(folder / "queue", QueueSettings())
            fill_store(queue, {JobState.COMPLETED: 1})
            job_ids[name] = next(iter(os.listdir(queue.root / "completed")))
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in data}
        with (
            server(data["with metrics"], True) as on,
            server(data["without metrics"], False) as off,
        ):
            urls = {"with metrics": on, "without metrics": off}
            for i in range(rounds):
                order = list(urls) if i % 2 == 0 else list(reversed(urls))
                for name in order:
                    results[name].append(
                        asyncio.run(
                            bench_status(
                                urls[name], job_ids[name], clients, duration, None, name=f" {name}"
                            )
                        )
                    )
    # bench_status returns (req/s, p99 ms, server CPU µs per request)
    base = [statistics.median(r[i] for r in results["without metrics"]) for i in range(3)]
    for name, runs in results.items():
        rps, p99, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        print(
            f"HTTP median of {rounds} rounds, {name:16s}: {rps:7.1f} req/s "
            f"({(rps / base[0] - 1) * 100:+.1f} %)  p99 {p99:6.1f} ms "
            f"({(p99 / base[1] - 1) * 100:+.1f} %)  server CPU {cpu:5.0f} µs/req "
            f"({(cpu / base[2] - 1) * 100:+.1f} %)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per HTTP round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--clients", type=int, default=50, help="keep-alive HTTP clients")
    parser.add_argument("--requests", type=int, default=1000, help="in-process requests/round")
    parser.add_argument("--inproc-rounds", type=int, default=15, help="in-process rounds")
    parser.add_argument("--skip-http", action="store_true", help="only in-process + render")
    args = parser.parse_args()
    # the middleware alone: authentication and rate limits (their own benchmarks) are off
    os.environ["CALLANNOTATE_AUTH__ENABLED"] = "false"
    os.environ["CALLANNOTATE_RATE_LIMITS__ENABLED"] = "false"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bench_render(
        "typical: 9,000 completed, 500 failed, 400 queued, 100 running",
        {
            JobState.COMPLETED: 9000,
            JobState.FAILED: 500,
            JobState.QUEUED: 400,
            JobState.RUNNING: 100,
        },
    )
    bench_render("worst case: all queued", {JobState.QUEUED: 10_000})
    bench_middleware_alone()
    bench_in_process(args.inproc_rounds, args.requests)
    if not args.skip_http:
        bench_http(args.rounds, args.duration, args.clients)


if __name__ == "__main__":
    main()
