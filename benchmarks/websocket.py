"""WebSocket fan-out benchmark: N clients on one server process.

Starts the real app under uvicorn in a child process (this script with ``--serve``), with
``--jobs`` real queued jobs; connects ``--clients`` WebSocket clients from this process, each
subscribed to one job (round robin), and reports:

* connections held (client side, and ESTABLISHED sockets of the server process),
* server memory per idle connection (RSS delta / N, after subscribing),
* fan-out latency publish -> receive (p50/p90/p99/max) while the server publishes
  ``job.progress`` events at ``--rate`` per second, each reaching N / jobs clients.

Latency is measured with the wall clock of one host: the server stamps each event just before
``bus.publish``; a client subtracts it from its receive time. The clients share this process
(one event loop), so their own scheduling delay is part of the figure.

    .venv/bin/python benchmarks/websocket.py --clients 1000 --jobs 10 --events 400 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import psutil


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- server process
async def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from callannotate.api.app import create_app
    from callannotate.config import ApiSettings, EventSettings, LogSettings, Settings
    from callannotate.events.models import EventDraft
    from callannotate.jobs.filequeue import FileQueue
    from callannotate.jobs.models import AudioMeta, Job

    data_dir = Path(args.data_dir)
    settings = Settings(
        data_dir=data_dir,
        api=ApiSettings(embedded_workers=False),
        events=EventSettings(backend=args.backend, redis_prefix=f"bench-{os.getpid()}"),
        log=LogSettings(level="WARNING", json_format=False),
    )
    app = create_app(settings)
    queue: FileQueue = app.state.queue
    job_ids: list[str] = []
    for _ in range(args.jobs):
        audio = data_dir / f"{len(job_ids)}.wav"
        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\x00\x00" * 8000)
        meta = AudioMeta(
            filename="silence.wav",
            stored_as="silence.wav",
            size_bytes=audio.stat().st_size,
            format="wav",
            codec="pcm_s16le",
            sample_rate=8000,
            channels=1,
            duration=1.0,
        )
        job_ids.append(
            queue.submit(Job(id=queue.new_job_id(), owner="local", audio=meta), audio).id
        )

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        ws_per_message_deflate=not args.no_deflate,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": True, "jobs": job_ids}), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    bus = app.state.events.bus
    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] == "publish":
            interval = 1.0 / command["rate"]
            start = time.perf_counter()
            for i in range(command["count"]):
                job = job_ids[i % len(job_ids)]
                data = {"step": "bench", "percent": i, "t": time.time()}
                await bus.publish(
                    EventDraft(type="job.progress", job_id=job, owner="local", data=data)
                )
                delay = start + (i + 1) * interval - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
            print(json.dumps({"published": command["count"]}), flush=True)
        elif command["op"] == "stop":
            break
    server.should_exit = True
    await serving


# ---------------------------------------------------------------------------- clients
class Client:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.connected = False
        self.closed_code: int | None = None


async def _client(
    url: str,
    job: str,
    client: Client,
    subscribed: asyncio.Event,
    stop: asyncio.Event,
    deflate: bool,
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    try:
        async with connect(
            url, compression="deflate" if deflate else None, open_timeout=120, ping_interval=None
        ) as ws:
            client.connected = True
            await ws.send(json.dumps({"type": "subscribe", "jobs": [job]}))
            receiver = asyncio.create_task(_receive(ws, client, subscribed))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            receiver.cancel()
            stopper.cancel()
    except ConnectionClosed as exc:
        client.closed_code = exc.rcvd.code if exc.rcvd else 1006
    except OSError:
        client.closed_code = -1
    finally:
        client.connected = False
        subscribed.set()


async def _receive(ws: Any, client: Client, subscribed: asyncio.Event) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in ws:
            now = time.time()
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "job.progress":
                client.latencies.append(now - frame["data"]["t"])
            elif kind == "subscribed":
                subscribed.set()
            elif kind == "ping":
                await ws.send('{"type":"pong"}')
    except ConnectionClosed as exc:
        client.closed_code = exc.rcvd.code if exc.rcvd else 1006


def _established(pid: int, port: int) -> int:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, __file__, "--serve", "--port", str(port), "--data-dir", tmp]
        command += ["--jobs", str(args.jobs), "--backend", args.backend]
        if args.no_deflate:
            command.append("--no-deflate")
        server = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert server.stdin is not None and server.stdout is not None
        ready = json.loads(await asyncio.wait_for(server.stdout.readline(), 120))
        jobs: list[str] = ready["jobs"]
        proc = psutil.Process(server.pid)
        url = f"ws://127.0.0.1:{port}/ws"

        # Warm up code paths, then take the baseline.
        warm_stop = asyncio.Event()
        warm = Client()
        warm_sub = asyncio.Event()
        warm_task = asyncio.create_task(
            _client(f"{url}/warmup", jobs[0], warm, warm_sub, warm_stop, not args.no_deflate)
        )
        await warm_sub.wait()
        warm_stop.set()
        await warm_task
        await asyncio.sleep(1.0)
        rss_before = proc.memory_info().rss

        stop = asyncio.Event()
        clients = [Client() for _ in range(args.clients)]
        subscribed = [asyncio.Event() for _ in clients]
        t0 = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i, client in enumerate(clients):
            tasks.append(
                asyncio.create_task(
                    _client(
                        f"{url}/bench-{i}",
                        jobs[i % len(jobs)],
                        client,
                        subscribed[i],
                        stop,
                        not args.no_deflate,
                    )
                )
            )
            if i % args.connect_batch == args.connect_batch - 1:
                await asyncio.gather(*(e.wait() for e in subscribed[: i + 1]))
        await asyncio.gather(*(e.wait() for e in subscribed))
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(args.idle_s)
        rss_idle = proc.memory_info().rss
        held_idle = sum(c.connected for c in clients)
        server_established = _established(server.pid, port)

        cpu_server0, cpu_client0 = sum(proc.cpu_times()[:2]), sum(os.times()[:2])
        publish_t0 = time.perf_counter()
        server.stdin.write(
            (json.dumps({"op": "publish", "count": args.events, "rate": args.rate}) + "\n").encode()
        )
        await server.stdin.drain()
        await asyncio.wait_for(server.stdout.readline(), args.events / args.rate + 120)
        expected = sum(
            (args.events // len(jobs) + (1 if j < args.events % len(jobs) else 0))
            * sum(1 for i in range(args.clients) if i % len(jobs) == j)
            for j in range(len(jobs))
        )
        deadline = time.monotonic() + 30
        while sum(len(c.latencies) for c in clients) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        rss_after = proc.memory_info().rss
        publish_s = time.perf_counter() - publish_t0
        cpu_server = (sum(proc.cpu_times()[:2]) - cpu_server0) / publish_s
        cpu_client = (sum(os.times()[:2]) - cpu_client0) / publish_s
        held_after = sum(c.connected for c in clients)
        latencies = [x * 1000 for c in clients for x in c.latencies]

        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stdin.write(b'{"op": "stop"}\n')
        await server.stdin.drain()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()

    closes: dict[int, int] = {}
    for c in clients:
        if c.closed_code is not None:
            closes[c.closed_code] = closes.get(c.closed_code, 0) + 1
    n = args.clients
    deflate = "off" if args.no_deflate else "on (permessage-deflate)"
    print(f"backend                : {args.backend}; compression {deflate}")
    print(f"clients                : {n} over {len(jobs)} jobs ({n // len(jobs)} per job)")
    print(f"connect + subscribe    : {connect_s:.2f} s ({n / connect_s:.0f} clients/s)")
    print(f"held while idle        : {held_idle}/{n} (server ESTABLISHED: {server_established})")
    print(f"held after publishing  : {held_after}/{n}; abnormal closes: {closes or 'none'}")
    print(
        f"server RSS             : {rss_before / 2**20:.1f} MiB before, "
        f"{rss_idle / 2**20:.1f} MiB idle with {n}, {rss_after / 2**20:.1f} MiB after events"
    )
    print(f"memory per idle conn   : {(rss_idle - rss_before) / n / 1024:.1f} KiB")
    print(
        f"events                 : {args.events} published at {args.rate:g}/s; "
        f"deliveries {len(latencies)}/{expected}"
    )
    print(
        f"CPU while publishing   : server {cpu_server:.0%} of a core, "
        f"clients {cpu_client:.0%} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    if len(latencies) < expected:
        short = [i for i, c in enumerate(clients) if len(c.latencies) < args.events // len(jobs)]
        print(
            f"clients short of events: {len(short)} (by job: "
            f"{sorted({i % len(jobs) for i in short})}, first ids {short[:10]})"
        )
    if latencies:
        print(
            f"fan-out latency (ms)   : p50 {_pct(latencies, 0.50):.2f}  "
            f"p90 {_pct(latencies, 0.90):.2f}  p99 {_pct(latencies, 0.99):.2f}  "
            f"max {max(latencies):.2f}  mean {statistics.fmean(latencies):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10, help="jobs the clients spread over")
    parser.add_argument("--events", type=int, default=400, help="job.progress events to publish")
    parser.add_argument("--rate", type=float, default=40.0, help="events published per second")
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle time before measuring")
    parser.add_argument("--connect-batch", type=int, default=100)
    parser.add_argument("--backend", choices=["memory", "redis"], default="memory")
    parser.add_argument("--no-deflate", action="store_true", help="disable permessage-deflate")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _raise_fd_limit()
    if args.serve:
        asyncio.run(_serve(args))
    else:
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
