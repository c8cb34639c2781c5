"""API throughput on one server process.

Measures, against a real ``callannotate serve`` process (API only, no embedded workers, so
the figures are the HTTP layer and the file queue, not the models):

* uploads per second of a 30 s WAV (``POST /jobs``: stream to disk, probe by decoding,
  durable enqueue), sequentially and with a few concurrent clients;
* ``GET /jobs/{id}`` under 200 concurrent keep-alive clients: closed loop (every client
  sends its next request as soon as the answer arrives: the maximum rate) and open loop
  (200 clients together offering a fixed rate, default 500 req/s; latency is measured from
  each request's scheduled time, so a stalled server is not hidden).

Every status run also prints the server process's CPU time per request (user + system, read
with psutil before and after the run): on a shared machine it is steadier than req/s.

``--auth`` instead compares ``GET /jobs/{id}`` with a JWT, with an API key and without auth
(two servers on one data folder, given the same warm-up; runs interleaved, ``--repeat``
times) and prints the cost of authentication in req/s and in CPU per request.

The load generator is a minimal asyncio HTTP/1.1 client (httpx costs more CPU per request
than the server does). It runs in this process, the server in another; on a small machine
they share the cores, so the figures are a lower bound.

    .venv/bin/python benchmarks/api_throughput.py [--duration 10] [--rate 500]
    .venv/bin/python benchmarks/api_throughput.py --url http://127.0.0.1:8000  # existing server
    .venv/bin/python benchmarks/api_throughput.py --auth --duration 6 --repeat 2 --login-rounds 3

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
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path

# tests/local_servers.py: free_port() and callannotate_command(), shared with the tests
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

import httpx
import numpy as np

from local_servers import callannotate_command, free_port

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CALLANNOTATE_SHARED_DATA", REPO / ".." / "shared" / "data"))
SAMPLE = SHARED / "diarization" / "callsample" / "sample.wav"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
SERVER_PIDS: dict[str, int] = {}  # url -> pid of the server process this script started


def server_cpu_s(url: str) -> float | None:
    """CPU seconds (user + system) the server process has used so far (None: not ours).

    CPU per request does not depend on what else the machine runs, unlike req/s: on a
    shared machine it is the steadier figure of what a code path costs."""
    pid = SERVER_PIDS.get(url)
    if pid is None:
        return None
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ----------------------------------------------------------------------------- set-up


def thirty_second_wav(folder: Path) -> Path:
    if SAMPLE.is_file():
        with wave.open(str(SAMPLE), "rb") as w:
            if abs(w.getnframes() / w.getframerate() - 30.0) < 0.5:
                print(f"30 s WAV: {SAMPLE.resolve()}")
                return SAMPLE
    target = write_tone(folder / "tone-30s.wav", 30)
    print(f"30 s WAV: synthesised tone {target} (shared sample not found at {SAMPLE})")
    return target


def write_tone(target: Path, seconds: int) -> Path:
    """A mono 16 kHz 16-bit WAV of a 440 Hz tone (when the shared speech is absent)."""
    rate = 16000
    t = np.arange(seconds * rate) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    return target


@contextlib.contextmanager
def api_server(
    data_dir: Path, access_log: bool, env_extra: dict[str, str] | None = None
) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, CALLANNOTATE_DATA_DIR=str(data_dir), CALLANNOTATE_LOG__LEVEL="WARNING")
    env.update(env_extra or {})
    command = callannotate_command()
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
        SERVER_PIDS[url] = process.pid
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

    def __init__(
        self, host: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
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
    url: str,
    job_id: str,
    clients: int,
    duration: float,
    rate: float | None,
    headers: dict[str, str] | None = None,
    name: str = "",
) -> tuple[float, float, float]:
    """Run one status test; print and return (req/s, p50 ms, p99 ms)."""
    host, port = url.removeprefix("http://").split(":")
    path = f"/jobs/{job_id}"
    conns = [Conn(host, int(port), path, headers) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    for c in conns[:5]:
        await c.get()  # warm-up
    latencies: list[float] = []
    errors = 0
    cpu_before = server_cpu_s(url)
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
    rps = len(latencies) / elapsed
    cpu_after = server_cpu_s(url)
    cpu_us = float("nan")
    if cpu_before is not None and cpu_after is not None:
        cpu_us = (cpu_after - cpu_before) / max(1, len(latencies)) * 1e6
    print(
        f"GET /jobs/{{id}}{name}, {clients} clients, {label}: {rps:7.1f} req/s  "
        f"p50 {pct(latencies, 50):6.1f} ms  p90 {pct(latencies, 90):6.1f} ms  "
        f"p99 {pct(latencies, 99):6.1f} ms  max {max(latencies) * 1000:6.1f} ms  "
        f"server CPU {cpu_us:5.0f} µs/req  errors {errors}  (n={len(latencies)}, {elapsed:.1f} s)"
    )
    return rps, pct(latencies, 99), cpu_us


# ----------------------------------------------------------------------------- authentication

BENCH_USER, BENCH_PASSWORD = "bench", "correct horse battery staple"
# Authentication alone: the rate limiter (its own benchmark) is off in both servers.
NO_AUTH_ENV = {"CALLANNOTATE_AUTH__ENABLED": "false", "CALLANNOTATE_RATE_LIMITS__ENABLED": "false"}
AUTH_ENV = {"CALLANNOTATE_AUTH__ENABLED": "true", "CALLANNOTATE_RATE_LIMITS__ENABLED": "false"}


def create_account(data_dir: Path) -> str:
    """A user and a personal API key in ``data_dir``'s database, through the security service
    (what ``callannotate users create`` / ``apikeys create`` do); returns the key."""
    from callannotate.config import AuthSettings, Settings
    from callannotate.db.engine import Database
    from callannotate.db.migrate import upgrade_database
    from callannotate.security.service import AuthService

    settings = Settings(data_dir=data_dir, auth=AuthSettings(enabled=True))
    db = Database.from_settings(settings)
    try:
        upgrade_database(db)
        service = AuthService(settings, db)
        user = service.create_user(BENCH_USER, BENCH_PASSWORD)
        _, key = service.create_api_key(user.id, "benchmark", None)
    finally:
        db.dispose()
    return key


def bench_login(url: str, rounds: int) -> str:
    """``POST /auth/token`` one after another (argon2 verify at the server's cost, JWT and
    refresh token issued); returns the last access token."""
    latencies: list[float] = []
    token = ""
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = client.post(
                "/auth/token", data={"username": BENCH_USER, "password": BENCH_PASSWORD}
            )
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"login failed: {r.status_code} {r.text}")
            token = r.json()["access_token"]
    print(
        f"POST /auth/token (login), 1 client: p50 {pct(latencies, 50):6.1f} ms  "
        f"p99 {pct(latencies, 99):6.1f} ms  {rounds / sum(latencies):5.1f} logins/s  (n={rounds})"
    )
    return token


def warm_up_like_the_auth_server(url: str, wav: Path, rounds: int) -> None:
    """The same logins (argon2 at 64 MiB) and upload (audio decoding) on the no-auth server as
    on the auth server before the runs, so both processes hold the same modules and heap and
    the comparison measures authentication, not a different process state (the no-auth
    server had otherwise never loaded the authentication and audio-decoding code)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(rounds):
            r = client.post(
                "/auth/token", data={"username": BENCH_USER, "password": BENCH_PASSWORD}
            )
            if r.status_code != 200:
                raise SystemExit(f"warm-up login failed: {r.status_code} {r.text}")
        r = client.post("/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")})
        if r.status_code != 202:
            raise SystemExit(f"warm-up upload failed: {r.status_code} {r.text}")


def run_auth(data_dir: Path, wav: Path, args: argparse.Namespace) -> None:
    """``GET /jobs/{id}`` with a JWT, with an API key and with no auth (same job, same data
    folder; one server with auth on, one with it off), then the cost of authentication."""
    from auth import bench_argon2  # benchmarks/auth.py: argon2 at production and test cost

    key = create_account(data_dir)
    bench_argon2(args.login_rounds)
    with (
        api_server(data_dir, args.access_log, NO_AUTH_ENV) as open_url,
        api_server(data_dir, args.access_log, AUTH_ENV) as auth_url,
    ):
        token = bench_login(auth_url, args.login_rounds)
        with httpx.Client(base_url=auth_url, timeout=60) as client:
            r = client.post(
                "/jobs",
                files={"file": (wav.name, wav.read_bytes(), "audio/wav")},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code != 202:
                raise SystemExit(f"upload failed: {r.status_code} {r.text}")
            job_id = r.json()["id"]
            refused = client.get(f"/jobs/{job_id}").status_code
            print(f"auth server without credentials: {refused} (expected 401)")
        warm_up_like_the_auth_server(open_url, wav, args.login_rounds)
        runs: dict[str, tuple[str, dict[str, str]]] = {
            "no auth": (open_url, {}),
            "JWT": (auth_url, {"Authorization": f"Bearer {token}"}),
            "API key": (auth_url, {"X-API-Key": key}),
        }
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        closed: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
        opened: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
        for _ in range(args.repeat):  # interleaved, so drifting machine load hits all three
            for name, (url, headers) in runs.items():
                for rate, results in ((None, closed), (args.rate, opened)):
                    figures = bench_status(
                        url, job_id, args.clients, args.duration, rate, headers, f" [{name}]"
                    )
                    results[name].append(asyncio.run(figures))

    def median(results: list[tuple[float, float, float]], field: int) -> float:
        return float(np.median([r[field] for r in results]))

    base_rps = median(closed["no auth"], 0)
    base_cpu = median(closed["no auth"], 2)
    base_cpu_open = median(opened["no auth"], 2)
    print(f"\nsummary, {args.clients} clients, medians of {args.repeat} run(s):")
    for name in runs:
        rps, cpu = median(closed[name], 0), median(closed[name], 2)
        cpu_open = median(opened[name], 2)
        print(
            f"  {name:8} closed loop {rps:7.1f} req/s ({100 * (rps / base_rps - 1):+5.1f} %, "
            f"target > -10 %)  p99 {median(closed[name], 1):6.1f} ms | "
            f"open loop {args.rate:.0f}/s p99 {median(opened[name], 1):6.1f} ms (target < 50 ms)"
        )
        print(
            f"  {'':8} server CPU per request: closed loop {cpu:5.0f} µs "
            f"({cpu - base_cpu:+4.0f} µs, {100 * (cpu / base_cpu - 1):+5.1f} %), "
            f"open loop {cpu_open:5.0f} µs ({cpu_open - base_cpu_open:+4.0f} µs, "
            f"{100 * (cpu_open / base_cpu_open - 1):+5.1f} %)"
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
    parser.add_argument(
        "--auth",
        action="store_true",
        help="instead: GET /jobs/{id} with a JWT, an API key and no auth, and the login cost",
    )
    parser.add_argument("--login-rounds", type=int, default=10, help="logins timed (--auth)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (shared machine)")
    with tempfile.TemporaryDirectory(prefix="callannotate-bench-") as tmp:
        wav = thirty_second_wav(Path(tmp))
        print(f"WAV size: {wav.stat().st_size / 1e6:.2f} MB")
        if args.auth:
            run_auth(Path(tmp) / "data", wav, args)
        elif args.url:
            run(args.url.rstrip("/"), wav, args)
        else:
            with api_server(Path(tmp) / "data", args.access_log) as url:
                run(url, wav, args)


if __name__ == "__main__":
    main()
