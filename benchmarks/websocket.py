"""WebSocket fan-out benchmark: N clients on one server process.

Starts the real app under uvicorn in a child process (this script with ``--serve``), with
``--jobs`` real queued jobs; connects ``--clients`` WebSocket clients from this process, each
subscribed to one job (round robin), and reports:

* connections held (client side, and ESTABLISHED sockets of the server process),
* server memory per idle connection (RSS delta / N, after subscribing),
* fan-out latency publish -> receive (p50/p90/p99/max) while the server publishes
  ``job.progress`` events at ``--rate`` per second, each reaching N / jobs clients,
* CPU seconds per delivered frame, server and clients: unlike latency, this figure hardly
  moves when other processes load the machine, so it is the one to compare between runs.

Latency is measured with the wall clock of one host: the server stamps each event just before
``bus.publish``; a client subtracts it from its receive time. The clients share this process
(one event loop), so their own scheduling delay is part of the figure. By default they are
minimal RFC 6455 clients (``--client light``) that stamp frames when the socket is read, so
the figure is mostly the server's; ``--client websockets`` uses the websockets library's
client, which costs about as much CPU per frame as the server and adds its own queueing.
Server and clients run on the event loop ``callannotate serve`` uses (uvicorn's ``auto``:
uvloop when installed); ``--loop asyncio`` selects the pure-Python loop.

    .venv/bin/python benchmarks/websocket.py --clients 1000 --jobs 10 --events 400 --rate 40
    .venv/bin/python benchmarks/websocket.py --clients 1000 --jobs 1 --events 400 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
import wave
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import psutil


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop uvicorn would run on with ``loop=name`` (``uvicorn.run`` picks it the same way)."""
    import uvicorn

    return uvicorn.Config("unused:app", loop=name).get_loop_factory()


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
        ws_per_message_deflate=args.deflate,
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
            elapsed = time.perf_counter() - start
            print(json.dumps({"published": command["count"], "seconds": elapsed}), flush=True)
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

    def on_frame(self, raw: str | bytes, now: float, subscribed: asyncio.Event) -> bool:
        """Record one server frame received at ``now``; True when it asks for a pong."""
        frame = json.loads(raw)
        kind = frame["type"]
        if kind == "job.progress":
            self.latencies.append(now - frame["data"]["t"])
        elif kind == "subscribed":
            subscribed.set()
        return bool(kind == "ping")


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
            if client.on_frame(raw, time.time(), subscribed):
                await ws.send('{"type":"pong"}')
    except ConnectionClosed as exc:
        client.closed_code = exc.rcvd.code if exc.rcvd else 1006


class _LightClient(asyncio.Protocol):
    """A minimal RFC 6455 client: handshake, frame parsing, permessage-deflate decoding.

    The ``websockets`` client costs about as much CPU per message as the server spends
    sending it, and all clients share this process, so on 2 cores the client side dominated
    the measured latency. This one parses frames in ``data_received`` and stamps every frame
    of a read with the time the read happened: the figure is the server's fan-out (plus the
    kernel), not the harness's queueing. Server pings (frames and ``{"type":"ping"}``) are
    answered so long runs stay connected.
    """

    def __init__(
        self, path: str, job: str, client: Client, subscribed: asyncio.Event, deflate: bool
    ) -> None:
        self._path = path
        self._job = job
        self._client = client
        self._subscribed = subscribed
        self._deflate = deflate
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._handshaken = False
        self._inflater: Any = None
        self._reset_inflater = False
        self._fragments: list[bytes] = []
        self._compressed = False
        self._closing = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self._path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self._deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.connected = False
        if self._client.closed_code is None and not self._closing:
            self._client.closed_code = 1006
        self._subscribed.set()
        if not self.done.done():
            self.done.set_result(None)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode])
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._transport.write(header + mask + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._send_frame(0x8, struct.pack("!H", 1000))
            self._transport.close()

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        if not head[0].startswith("HTTP/1.1 101"):
            self._client.closed_code = -1
            assert self._transport is not None
            self._transport.close()
            return False
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self._inflater = zlib.decompressobj(wbits=-15)
                self._reset_inflater = "server_no_context_takeover" in value
        self._handshaken = True
        self._client.connected = True
        self.send_text(json.dumps({"type": "subscribe", "jobs": [self._job]}))
        return True

    def data_received(self, data: bytes) -> None:
        now = time.time()  # every frame of this read arrived now
        self._buffer += data
        if not self._handshaken and not self._handshake():
            return
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            size = b1 & 0x7F
            start = pos + 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size = struct.unpack_from("!H", buf, pos + 2)[0]
                start = pos + 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                size = struct.unpack_from("!Q", buf, pos + 2)[0]
                start = pos + 10
            if len(buf) - start < size:
                break
            payload = bytes(buf[start : start + size])
            pos = start + size
            self._frame(b0, payload, now)
        del buf[:pos]

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x9:  # ping: answer with a pong carrying the same data
            self._send_frame(0xA, payload)
            return
        if opcode == 0x8:
            self._client.closed_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
            self.close()
            return
        if opcode in (0x1, 0x2):
            self._fragments = [payload]
            self._compressed = bool(b0 & 0x40)
        elif opcode == 0x0:
            self._fragments.append(payload)
        else:
            return  # pong
        if not b0 & 0x80:
            return
        message = b"".join(self._fragments)
        self._fragments = []
        if self._compressed:
            message = self._inflater.decompress(message + b"\x00\x00\xff\xff")
            if self._reset_inflater:
                self._inflater = zlib.decompressobj(wbits=-15)
        if self._client.on_frame(message, now, self._subscribed):
            self.send_text('{"type":"pong"}')


async def _light_client(
    port: int,
    path: str,
    job: str,
    client: Client,
    subscribed: asyncio.Event,
    stop: asyncio.Event,
    deflate: bool,
) -> None:
    loop = asyncio.get_running_loop()
    protocol: _LightClient | None = None
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _LightClient(path, job, client, subscribed, deflate), "127.0.0.1", port
            ),
            120,
        )
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, protocol.done}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    except (OSError, TimeoutError):
        client.closed_code = -1
    finally:
        if protocol is not None:
            protocol.close()
        client.connected = False
        subscribed.set()


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
        command += ["--jobs", str(args.jobs), "--backend", args.backend, "--loop", args.loop]
        if args.deflate:
            command.append("--deflate")
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

        def connect(
            name: str, job: str, client: Client, sub: asyncio.Event, stop: asyncio.Event
        ) -> asyncio.Task[None]:
            deflate = args.deflate
            if args.client == "light":
                coro = _light_client(port, f"/ws/{name}", job, client, sub, stop, deflate)
            else:
                coro = _client(f"{url}/{name}", job, client, sub, stop, deflate)
            return asyncio.create_task(coro)

        warm_task = connect("warmup", jobs[0], warm, warm_sub, warm_stop)
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
            tasks.append(connect(f"bench-{i}", jobs[i % len(jobs)], client, subscribed[i], stop))
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
        done = json.loads(
            await asyncio.wait_for(server.stdout.readline(), args.events / args.rate + 120)
        )
        # The publisher runs on the server's loop: a saturated server publishes late (and
        # its backlog then does not show in the latency), so report the rate it achieved.
        achieved_rate = done["published"] / done["seconds"]
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
        cpu_server_s = sum(proc.cpu_times()[:2]) - cpu_server0
        cpu_client_s = sum(os.times()[:2]) - cpu_client0
        cpu_server = cpu_server_s / publish_s
        cpu_client = cpu_client_s / publish_s
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
    deflate = "on (permessage-deflate)" if args.deflate else "off"
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"backend                : {args.backend}; compression {deflate}; event loop {loop}; "
        f"{args.client} clients"
    )
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
        f"events                 : {args.events} published at {args.rate:g}/s "
        f"(achieved {achieved_rate:.1f}/s); deliveries {len(latencies)}/{expected}"
    )
    print(
        f"CPU while publishing   : server {cpu_server:.0%} of a core, "
        f"clients {cpu_client:.0%} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    if latencies:
        # CPU per delivered frame hardly depends on what else runs on the machine.
        print(
            f"CPU per delivery       : server {cpu_server_s / len(latencies) * 1e6:.1f} us, "
            f"clients {cpu_client_s / len(latencies) * 1e6:.1f} us"
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
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="offer permessage-deflate (off by default, like api.ws_compression)",
    )
    parser.add_argument(
        "--client",
        choices=["light", "websockets"],
        default="light",
        help="'light': a minimal client that stamps frames as they are read (measures the "
        "server); 'websockets': the websockets library's client (its own cost is included)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop of server and clients; 'auto' (uvloop when installed) is what "
        "`callannotate serve` runs on",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _raise_fd_limit()
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(_serve(args) if args.serve else _run(args))


if __name__ == "__main__":
    main()
