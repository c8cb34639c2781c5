"""API throughput on one server process.

Measures, against a real ``callannotate serve`` process (API only, no embedded workers, so
the figures are the HTTP layer and the file queue, not the models):

* uploads per second of a 30 s WAV (``POST /jobs``: stream to disk, probe by decoding,
  durable enqueue), sequentially and with a few concurrent clients;
* ``GET /jobs/{id}`` under 200 concurrent keep-alive clients: closed loop (every client
  sends its next request as soon as the answer arrives: the maximum rate) and open loop
  (200 clients together offering a fixed rate, default 500 req/s; latency is measured from
  each request's scheduled time, so a stalled server is not hidden).

The load generator is a minimal asyncio HTTP/1.1 client (httpx costs more CPU per request
than the server does). It runs in this process, the server in another; on a small machine
they share the cores, so the figures are a lower bound.

    .venv/bin/python benchmarks/api_throughput.py [--duration 10] [--rate 500]
    .venv/bin/python benchmarks/api_throughput.py --url http://127.0.0.1:8000  # existing server

The 30 s WAV is the shared call sample (``../shared/data/diarization/callsample/sample.wav``
or ``$CALLANNOTATE_SHARED_DATA``) when present, otherwise a synthesised 30 s 16 kHz tone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CALLANNOTATE_SHARED_DATA", REPO / ".." / "shared" / "data"))
SAMPLE = SHARED / "diarization" / "callsample" / "sample.wav"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


# ----------------------------------------------------------------------------- set-up


def thirty_second_wav(folder: Path) -> Path:
    if SAMPLE.is_file():
        with wave.open(str(SAMPLE), "rb") as w:
            if abs(w.getnframes() / w.getframerate() - 30.0) < 0.5:
                print(f"30 s WAV: {SAMPLE.resolve()}")
                return SAMPLE
    target = folder / "tone-30s.wav"
    rate = 16000
    t = np.arange(30 * rate) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    print(f"30 s WAV: synthesised tone {target} (shared sample not found at {SAMPLE})")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_server(data_dir: Path, access_log: bool) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, CALLANNOTATE_DATA_DIR=str(data_dir), CALLANNOTATE_LOG__LEVEL="WARNING")
    script = Path(sys.executable).parent / "callannotate"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "callannotate.cli"]
    command += ["serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port)]
    if not access_log:
        command.append("--no-access-log")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise SystemExit("the server exited during start-up")
            time.sleep(0.2)
        print(f"server: pid {process.pid}, {' '.join(command[-7:])}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


# ----------------------------------------------------------------------------- uploads


def bench_uploads_sequential(url: str, wav: Path, count: int) -> list[str]:
    payload = wav.read_bytes()
    ids: list[str] = []
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/health")
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            r = client.post("/jobs", files={"file": (wav.name, payload, "audio/wav")})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 202:
                raise SystemExit(f"upload failed: {r.status_code} {r.text}")
            ids.append(r.json()["id"])
        elapsed = time.perf_counter() - start
    mb = len(payload) * count / 1e6
    print(
        f"uploads, 1 client:    {count / elapsed:7.1f} uploads/s  {mb / elapsed:6.1f} MB/s  "
        f"p50 {pct(latencies, 50):6.1f} ms  p99 {pct(latencies, 99):6.1f} ms  (n={count})"
    )
    return ids


async def bench_uploads_concurrent(url: str, wav: Path, count: int, clients: int) -> None:
    payload = wav.read_bytes()
    latencies: list[float] = []
    remaining = count

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await client.post("/jobs", files={"file": (wav.name, payload, "audio/wav")})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 202:
                raise SystemExit(f"upload failed: {r.status_code} {r.text}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    mb = len(payload) * count / 1e6
    print(
        f"uploads, {clients} clients:   {count / elapsed:7.1f} uploads/s  "
        f"{mb / elapsed:6.1f} MB/s  "
        f"p50 {pct(latencies, 50):6.1f} ms  p99 {pct(latencies, 99):6.1f} ms  (n={count})"
    )


# ----------------------------------------------------------------------------- status polling


def pct(values: list[float], q: float) -> float:
    """Percentile ``q`` of ``values`` (seconds) in milliseconds."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q) * 1000.0)


class Conn:
    """One keep-alive HTTP/1.1 connection sending the same GET."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(head)
        if match:
            await self.reader.readexactly(int(match.group(1)))
        return int(head[9:12])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def bench_status(
    url: str, job_id: str, clients: int, duration: float, rate: float | None
) -> None:
    host, port = url.removeprefix("http://").split(":")
    path = f"/jobs/{job_id}"
    conns = [Conn(host, int(port), path) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    for c in conns[:5]:
        await c.get()  # warm-up
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    stop_at = start + duration

    async def closed_loop(conn: Conn) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = await conn.get()
            latencies.append(time.perf_counter() - t0)
            errors += status != 200

    async def open_loop(conn: Conn, period: float) -> None:
        nonlocal errors
        due = start + random.uniform(0, period)
        while due < stop_at:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await conn.get()
            latencies.append(time.perf_counter() - due)  # includes any wait for the server
            errors += status != 200
            due += period

    if rate is None:
        await asyncio.gather(*(closed_loop(c) for c in conns))
        label = "closed loop"
    else:
        period = clients / rate
        await asyncio.gather(*(open_loop(c, period) for c in conns))
        label = f"open loop {rate:.0f}/s"
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    print(
        f"GET /jobs/{{id}}, {clients} clients, {label}: {len(latencies) / elapsed:7.1f} req/s  "
        f"p50 {pct(latencies, 50):6.1f} ms  p90 {pct(latencies, 90):6.1f} ms  "
        f"p99 {pct(latencies, 99):6.1f} ms  max {max(latencies) * 1000:6.1f} ms  "
        f"errors {errors}  (n={len(latencies)}, {elapsed:.1f} s)"
    )


# ----------------------------------------------------------------------------- main


def run(url: str, wav: Path, args: argparse.Namespace) -> None:
    ids = bench_uploads_sequential(url, wav, args.uploads)
    asyncio.run(bench_uploads_concurrent(url, wav, args.uploads, args.upload_clients))
    job_id = ids[len(ids) // 2]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for _ in range(args.repeat):
        asyncio.run(bench_status(url, job_id, args.clients, args.duration, None))
        asyncio.run(bench_status(url, job_id, args.clients, args.duration, args.rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--uploads", type=int, default=40, help="uploads per upload test")
    parser.add_argument("--upload-clients", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200, help="concurrent status clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per status test")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop offered req/s")
    parser.add_argument("--repeat", type=int, default=1, help="status test repetitions")
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (shared machine)")
    with tempfile.TemporaryDirectory(prefix="callannotate-bench-") as tmp:
        wav = thirty_second_wav(Path(tmp))
        print(f"WAV size: {wav.stat().st_size / 1e6:.2f} MB")
        if args.url:
            run(args.url.rstrip("/"), wav, args)
        else:
            with api_server(Path(tmp) / "data", args.access_log) as url:
                run(url, wav, args)


if __name__ == "__main__":
    main()
