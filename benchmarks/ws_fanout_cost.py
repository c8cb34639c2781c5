"""CPU of the API process per delivered WebSocket job event (issue 21).

In the 200-user load test one API process delivers ~2,200 job events a second to ~40
``{"all": true}`` subscribers besides ~355 HTTP requests a second, on the same event loop:
whatever the fan-out costs per delivered event delays the status polls. This measures that
cost alone, on the product's own path:

1. creates ``--accounts`` users (role ``user``) with one API key each, with the CLI, as
   ``benchmarks/load.py`` does (authentication on, rate limits raised but running);
2. starts the app in a child process (this script with ``--serve``) the way
   ``callannotate serve --no-workers`` does: ``load_settings``, ``prepare_store``,
   ``create_app`` and uvicorn with the same WebSocket and HTTP options, on uvicorn's loop;
3. connects ``--subscribers`` WebSocket clients from this process (round robin over the
   accounts; ``Sec-WebSocket-Protocol: bearer, <key>``; ``{"type": "subscribe", "all":
   true}``), minimal RFC 6455 clients that stamp frames when the socket is read;
4. has the server publish ``--events`` job events at ``--rate`` per second from a thread,
   through ``JobService.publish`` (what the queue manager's worker threads call: the event bus
   and the callbacks), spread over ``--jobs`` jobs in flight per account, each job going
   ``job.started``, ``job.progress`` x ``--progress``, ``job.completed``;
5. prints the server process's CPU (psutil, user + system) per delivered event, the part of
   it the publishing thread used, the delivery delay (publish call to the client's read)
   p50/p99, and stops the server by its pid.

``--in-process`` measures instead, in this process and without sockets, what the app itself
adds per delivery above uvicorn (the session, the hub, the ASGI middlewares and Starlette's
``WebSocket``, up to a no-op ASGI ``send``): ``--subscribers`` sessions subscribed to ``all``
(authentication off, so they are admins watching every job), ``--events`` events published
with ``MemoryEventBus.publish_sync``, best of five rounds. It leaves out uvicorn's framing, the
socket write and the loop's wake-ups, but it is steady (a few per cent between runs) where the
server's figure moves by ±10 % with the machine's load, so it is the one to compare changes to
the fan-out code with.

The server is a separate process, so the subscribers' CPU is not in its figure. ``--src DIR``
puts ``DIR`` first on the server's ``PYTHONPATH``, to measure another tree of the package
(a ``git worktree`` of an older commit) with the same harness:

    .venv/bin/python benchmarks/ws_fanout_cost.py
    .venv/bin/python benchmarks/ws_fanout_cost.py --src /tmp/ws-before/src
    .venv/bin/python benchmarks/ws_fanout_cost.py --subscribers 40 --rate 110 --events 3300
    .venv/bin/python benchmarks/ws_fanout_cost.py --in-process --subscribers 20
    PYTHONPATH=/tmp/ws-before/src .venv/bin/python benchmarks/ws_fanout_cost.py --in-process
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # local_servers
from load import create_accounts, server_env
from local_servers import free_port

STEPS = ("decode", "vad", "diarize", "transcribe")


# ---------------------------------------------------------------------------- server process
def _serve(port: int) -> None:
    """``callannotate serve --no-workers`` (cli.py ``_cmd_serve``), plus a command pipe."""
    import uvicorn

    from callannotate.api.app import create_app
    from callannotate.api.protocol import HTTP_PROTOCOL
    from callannotate.api.routes.stream import WS_MAX_FRAME_BYTES, WS_MAX_QUEUE
    from callannotate.cli import load_settings
    from callannotate.observability.logging import configure_logging
    from callannotate.security.startup import prepare_store

    settings = load_settings(api__host="127.0.0.1", api__port=port, api__embedded_workers=False)
    configure_logging(settings.log)
    prepare_store(settings)
    # as serve does (an older tree given with --src may not have the option yet)
    freeze = {"freeze_gc": True} if "freeze_gc" in inspect.signature(create_app).parameters else {}
    app = create_app(settings, **freeze)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        ws_per_message_deflate=settings.api.ws_compression,
        ws_max_size=WS_MAX_FRAME_BYTES,
        ws_max_queue=WS_MAX_QUEUE,
        http=HTTP_PROTOCOL,
    )
    server = uvicorn.Server(config)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve_main(app, server))


async def _serve_main(app: Any, server: Any) -> None:
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] != "publish":
            break
        seconds, thread_cpu = await asyncio.to_thread(_publish, app.state.jobs, command)
        await app.state.events.bus.flush()
        print(json.dumps({"seconds": seconds, "thread_cpu_s": thread_cpu}), flush=True)
    server.should_exit = True
    await serving


def _publish(jobs: Any, command: dict[str, Any]) -> tuple[float, float]:
    """Publish from this (non-loop) thread as the queue manager does; (wall s, thread CPU s)."""
    from callannotate.jobs.events import JobEvent

    owners: list[str] = command["owners"]
    progress: int = command["progress"]
    in_flight = [[owner, uuid.uuid4().hex, 0] for _ in range(command["jobs"]) for owner in owners]
    interval = 1.0 / command["rate"]
    cpu0, start = time.thread_time(), time.perf_counter()
    for i in range(command["count"]):
        job = in_flight[i % len(in_flight)]
        owner, job_id, step = cast(str, job[0]), cast(str, job[1]), cast(int, job[2])
        data: dict[str, Any]
        if step == 0:
            kind, data = "job.started", {"worker": "bench-worker-1", "attempt": 1}
        elif step <= progress:
            kind, data = "job.progress", _progress_data(step, progress)
        else:
            kind, data = "job.completed", {"attempts": 1}
        data["t"] = time.time()
        jobs.publish(JobEvent(type=kind, job_id=job_id, owner=owner, data=data))
        if step > progress:
            job[1], job[2] = uuid.uuid4().hex, 0
        else:
            job[2] = step + 1
        delay = start + (i + 1) * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return time.perf_counter() - start, time.thread_time() - cpu0


def _progress_data(step: int, total: int) -> dict[str, Any]:
    """A ``job.progress`` shaped like the pipeline's (a row per step)."""
    current = STEPS[min(len(STEPS) - 1, (step - 1) * len(STEPS) // total)]
    rows = []
    for name in STEPS:
        done = STEPS.index(name) < STEPS.index(current)
        status = "done" if done else "running" if name == current else "pending"
        percent = 100.0 if done else round(100.0 * step / total, 1) if name == current else 0.0
        rows.append(
            {"step": name, "completed": step, "total": total, "percent": percent, "status": status}
        )
    return {
        "step": current,
        "completed": step,
        "total": total,
        "percent": round(100.0 * step / total, 1),
        "progress": rows,
    }


# ---------------------------------------------------------------------------- clients
class Subscriber(asyncio.Protocol):
    """A minimal RFC 6455 client (no extensions): handshake with the bearer subprotocol,
    ``subscribe all``, frames parsed in ``data_received`` and stamped with the read's time;
    server pings (frames and ``{"type": "ping"}``) answered."""

    def __init__(self, client_id: str, key: str) -> None:
        self._client_id = client_id
        self._key = key
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._handshaken = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.delays: list[float] = []
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        nonce = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET /ws/{self._client_id} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {nonce}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: bearer, {self._key}",
        ]
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("closed before subscribing"))

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, 0x80 | size])
        else:
            header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._transport.write(header + mask + masked)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._send(0x8, struct.pack("!H", 1000))
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time()  # every frame of this read arrived now
        buf = self._buffer
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[: end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                self.subscribed.set_exception(ConnectionError(status.decode("latin-1")))
                assert self._transport is not None
                self._transport.close()
                return
            self._handshaken = True
            self._send(0x1, b'{"type":"subscribe","all":true}')
        pos = 0
        while len(buf) - pos >= 2:
            b0, size = buf[pos], buf[pos + 1] & 0x7F
            start = pos + 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size, start = struct.unpack_from("!H", buf, pos + 2)[0], pos + 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                size, start = struct.unpack_from("!Q", buf, pos + 2)[0], pos + 10
            if len(buf) - start < size:
                break
            self._frame(b0 & 0x0F, bytes(buf[start : start + size]), now)
            pos = start + size
        del buf[:pos]

    def _frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x9:
            self._send(0xA, payload)
        elif opcode == 0x8:
            self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
            self.close()
        elif opcode == 0x1:
            if payload.startswith(b'{"type":"job.'):
                self.delays.append(now - json.loads(payload)["data"]["t"])
                return
            kind = json.loads(payload)["type"]
            if kind == "subscribed" and not self.subscribed.done():
                self.subscribed.set_result(None)
            elif kind == "ping":
                self._send(0x1, b'{"type":"pong"}')


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _loop_thread(proc: psutil.Process) -> tuple[float, float]:
    """(user, system) CPU seconds of the main thread: the event loop uvicorn runs on."""
    for thread in proc.threads():
        if thread.id == proc.pid:
            return float(thread.user_time), float(thread.system_time)
    return 0.0, 0.0


async def _measure(
    args: argparse.Namespace, port: int, server: subprocess.Popen[bytes], keys: list[str]
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        owners = [
            (await http.get("/auth/me", headers={"Authorization": f"Bearer {k}"})).json()["id"]
            for k in keys
        ]
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    for i in range(args.subscribers):
        key = keys[i % len(keys)]
        _, sub = await loop.create_connection(
            functools.partial(Subscriber, f"fanout-{i}", key), "127.0.0.1", port
        )
        subscribers.append(sub)
    await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subscribers)), 60)
    proc = psutil.Process(server.pid)
    # warm-up (first-call costs, pydantic/metrics children), then the idle baseline
    await _run_publish(loop, server, owners, args, count=len(owners) * 20, rate=200.0)
    await asyncio.sleep(1.0)
    for s in subscribers:
        s.delays.clear()
    idle0 = _cpu(proc)
    await asyncio.sleep(args.idle_s)
    idle_rate = (_cpu(proc) - idle0) / args.idle_s

    per_sub = [0] * args.subscribers
    for event in range(args.events):
        for i in range(args.subscribers):
            per_sub[i] += i % len(keys) == event % len(keys)
    expected = sum(per_sub)
    load_before = os.getloadavg()[0]
    cpu0, wall0, (user0, sys0) = _cpu(proc), time.perf_counter(), _loop_thread(proc)
    done = await _run_publish(loop, server, owners, args, count=args.events, rate=args.rate)
    deadline = time.monotonic() + 30
    while sum(len(s.delays) for s in subscribers) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    wall = time.perf_counter() - wall0
    cpu = _cpu(proc) - cpu0 - idle_rate * wall
    user1, sys1 = _loop_thread(proc)
    delays = [d * 1e3 for s in subscribers for d in s.delays]
    closes = [s.close_code for s in subscribers if s.close_code is not None]
    for s in subscribers:
        s.close()
    return {
        "subscribers": args.subscribers,
        "accounts": len(keys),
        "events": args.events,
        "rate": args.rate,
        "achieved_rate": args.events / done["seconds"],
        "delivered": len(delays),
        "expected": expected,
        "closed": len(closes),
        "server_cpu_s": cpu,
        "publisher_thread_cpu_s": done["thread_cpu_s"],
        "idle_cpu_cores": idle_rate,
        "cpu_us_per_delivery": cpu / max(1, len(delays)) * 1e6,
        "loop_cpu_us_per_delivery": (cpu - done["thread_cpu_s"]) / max(1, len(delays)) * 1e6,
        "server_cores": cpu / wall,
        "loop_thread_user_us_per_delivery": (user1 - user0) / max(1, len(delays)) * 1e6,
        "loop_thread_system_us_per_delivery": (sys1 - sys0) / max(1, len(delays)) * 1e6,
        "delay_ms_p50": _pct(delays, 0.5),
        "delay_ms_p99": _pct(delays, 0.99),
        "delay_ms_max": max(delays, default=float("nan")),
        "load_average": [load_before, os.getloadavg()[0]],
    }


async def _run_publish(
    loop: asyncio.AbstractEventLoop,
    server: subprocess.Popen[bytes],
    owners: list[str],
    args: argparse.Namespace,
    *,
    count: int,
    rate: float,
) -> dict[str, Any]:
    assert server.stdin is not None and server.stdout is not None
    command = {"op": "publish", "count": count, "rate": rate, "owners": owners}
    command |= {"jobs": args.jobs, "progress": args.progress}
    server.stdin.write((json.dumps(command) + "\n").encode())
    server.stdin.flush()
    line = await loop.run_in_executor(None, server.stdout.readline)
    if not line:
        raise RuntimeError("the server exited while publishing")
    return cast(dict[str, Any], json.loads(line))


def _report(r: dict[str, Any], src: str) -> None:
    print(f"server package          : {src}")
    print(
        f"subscribers             : {r['subscribers']} over {r['accounts']} accounts "
        f"(subscribe all: each event reaches {r['subscribers'] // r['accounts']})"
    )
    print(
        f"events                  : {r['events']} at {r['rate']:g}/s "
        f"(achieved {r['achieved_rate']:.1f}/s); delivered {r['delivered']}/{r['expected']}"
        f"; closed connections {r['closed']}"
    )
    print(
        f"server CPU              : {r['server_cpu_s']:.2f} s ({r['server_cores']:.2f} cores; "
        f"idle {r['idle_cpu_cores']:.3f} cores subtracted); publishing thread "
        f"{r['publisher_thread_cpu_s']:.2f} s"
    )
    print(
        f"CPU per delivered event : {r['cpu_us_per_delivery']:.1f} us "
        f"(without the publishing thread: {r['loop_cpu_us_per_delivery']:.1f} us; the loop "
        f"thread alone: user {r['loop_thread_user_us_per_delivery']:.1f} us + system "
        f"{r['loop_thread_system_us_per_delivery']:.1f} us)"
    )
    print(
        f"delivery delay (ms)     : p50 {r['delay_ms_p50']:.2f}  p99 {r['delay_ms_p99']:.2f}  "
        f"max {r['delay_ms_max']:.2f}"
    )
    print(
        f"load average            : {r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f} "
        f"on {os.cpu_count()} cores"
    )


# ---------------------------------------------------------------------------- in process
async def _in_process(subscribers: int, events: int) -> float:
    """Best CPU seconds per delivery of five rounds of ``events`` (see the module docstring)."""
    from callannotate.api.app import create_app
    from callannotate.config import ApiSettings, AuthSettings, LogSettings, Settings
    from callannotate.events.models import EventDraft

    with tempfile.TemporaryDirectory(prefix="ws-fanout-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            api=ApiSettings(embedded_workers=False),
            auth=AuthSettings(enabled=False),
            log=LogSettings(level="WARNING", json_format=False),
        )
        app = create_app(settings)
        sent = 0
        async with app.router.lifespan_context(app):
            tasks, ready = [], []
            for i in range(subscribers):
                inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                inbox.put_nowait({"type": "websocket.connect"})
                inbox.put_nowait(
                    {"type": "websocket.receive", "text": '{"type":"subscribe","all":true}'}
                )
                subscribed = asyncio.Event()
                ready.append(subscribed)

                async def send(
                    message: MutableMapping[str, Any], subscribed: asyncio.Event = subscribed
                ) -> None:
                    nonlocal sent
                    if message["type"] == "websocket.send":
                        sent += 1
                        if message["text"].startswith('{"type":"subscribed"'):
                            subscribed.set()

                path = f"/ws/fanout-{i}"
                scope = {
                    "type": "websocket",
                    "asgi": {"version": "3.0"},
                    "path": path,
                    "raw_path": path.encode(),
                    "root_path": "",
                    "headers": [(b"host", b"127.0.0.1")],
                    "query_string": b"",
                    "client": ("127.0.0.1", 1024 + i),
                    "server": ("127.0.0.1", 80),
                    "scheme": "ws",
                    "subprotocols": [],
                }
                tasks.append(asyncio.create_task(app(scope, inbox.get, send)))
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 60)
            bus = app.state.events.bus
            drafts = []
            for k in range(events):
                step = k % 10
                kind = (
                    "job.started" if step == 0 else "job.completed" if step == 9 else "job.progress"
                )
                data = _progress_data(step, 8) if kind == "job.progress" else {"attempts": 1}
                drafts.append(
                    EventDraft(type=kind, job_id=f"job-{k // 10}", owner="local", data=data)
                )
            for draft in drafts[:500]:  # warm-up
                bus.publish_sync(draft)
            best = float("inf")
            for _ in range(5):
                sent0, cpu0 = sent, time.process_time()
                for draft in drafts:
                    bus.publish_sync(draft)
                best = min(best, (time.process_time() - cpu0) / max(1, sent - sent0))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ws-fanout-") as tmp:
        data_dir = Path(tmp) / "data"
        options = SimpleNamespace(rate_limits="raised", loop_debug_ms=0, worker_process=False)
        env = server_env(data_dir, cast(argparse.Namespace, options))
        if args.src:
            src = str(Path(args.src).resolve())
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        keys = [account["key"] for account in create_accounts(env, args.accounts)]
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--port", str(port)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert server.stdout is not None
            ready = server.stdout.readline()
            if not ready:
                raise RuntimeError(f"the server exited ({server.wait()})")
            figures = asyncio.run(_measure(args, port, server, keys))
        finally:
            with contextlib.suppress(OSError, ValueError):
                assert server.stdin is not None
                server.stdin.write(b'{"op": "stop"}\n')
                server.stdin.close()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=40)
    parser.add_argument("--accounts", type=int, default=2)
    parser.add_argument("--events", type=int, default=3300, help="job events to publish")
    parser.add_argument("--rate", type=float, default=110.0, help="events published per second")
    parser.add_argument("--jobs", type=int, default=4, help="jobs in flight per account")
    parser.add_argument("--progress", type=int, default=8, help="job.progress events per job")
    parser.add_argument("--idle-s", type=float, default=2.0, help="idle CPU baseline window")
    parser.add_argument("--src", default="", help="package tree first on the server's path")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure the app's own part (session, hub, middlewares) in process, no sockets",
    )
    parser.add_argument("--json-out", default="", help="also write the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        threading.current_thread().name = "serve"
        _serve(args.port)
        return
    if args.in_process:
        import callannotate

        loop_factory = __import__("uvicorn").Config("unused:app").get_loop_factory()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            cost = runner.run(_in_process(args.subscribers, args.events))
        print(f"package                 : {Path(callannotate.__file__).parent}")
        print(
            f"app CPU per delivery    : {cost * 1e6:.2f} us ({args.subscribers} sessions, "
            f"{args.events} events, best of 5; no uvicorn, no sockets)"
        )
        return
    figures = run(args)
    _report(figures, args.src or "this tree")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
