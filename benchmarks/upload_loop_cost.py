"""Event-loop cost of `POST /jobs` uploads, in process (issue 21).

Runs ``--uploads`` uploads of the 96 kB test WAV (3 s of speech, or a synthesised 3 s tone
when the shared data is missing) through the real app (authentication on, an API key, rate
limits raised, encryption at rest on: the defaults) with ``httpx.AsyncClient`` over
``ASGITransport``, ``--concurrency`` at a time, while ``--pollers`` tasks poll
``GET /jobs/{id}`` as the load test's clients do. The body goes in 64 kB pieces with a
turn of the loop between them, as a socket delivers it.

Every callback the asyncio loop runs is timed (``Handle._run``, wall clock and the loop
thread's CPU) and charged to the upload whose context it runs in. Printed per upload: the
longest loop step (wall, CPU) and the loop time held in all (wall, CPU), p50/p99/max; the
time the loop thread spent in garbage collection inside the longest step; the loop thread's
collections per generation (how many fell inside upload steps); upload throughput; and the
status polls' latency while the uploads run. The thread-pool work (staging writes done
there, the audio probe and queue writes of ``new_job``) is not loop time; it shows in
throughput and, through the GIL, in the loop's wall time. The client's own work (httpx) runs
in the upload's task too and is counted, alike before and after. ``--gc-freeze`` freezes the
heap after the warm-up (``gc.freeze()``), as the app could once started.

    .venv/bin/python benchmarks/upload_loop_cost.py --uploads 1000
    .venv/bin/python benchmarks/upload_loop_cost.py --uploads 1000 --pollers 0  # throughput
    # the code of another tree (e.g. a worktree of HEAD at /tmp/before):
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/upload_loop_cost.py

It prints which ``callannotate`` it imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(REPO / "tests" / "api"))  # authtesting: accounts as the API tests make
SHARED = Path(os.environ.get("CALLANNOTATE_SHARED_DATA", REPO / ".." / "shared" / "data"))
SPEECH = SHARED / "asr" / "en" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"
PIECE = 64 * 1024  # what one socket read hands the server (uvicorn reads 64 KiB)
BOUNDARY = "upl0adl00pc0st"
RAISED_BUCKET = '{"burst": 1000000, "per_second": 1000000}'

UPLOAD: contextvars.ContextVar[int | None] = contextvars.ContextVar("upload", default=None)


@dataclass
class Cost:
    """The loop time charged to one upload."""

    wall: float = 0.0
    cpu: float = 0.0
    max_wall: float = 0.0
    max_cpu: float = 0.0
    gc_in_max: float = 0.0  # loop-thread GC time inside the longest (wall) step
    steps: int = 0


@dataclass
class Recorder:
    """Times every loop callback; charges it to the upload of its context."""

    costs: dict[int, Cost] = field(default_factory=dict)
    loop_thread: int = 0
    gc_time: float = 0.0  # loop-thread GC seconds so far
    # Collections on the loop thread: generation -> [(seconds, inside an upload's step)].
    gcs: dict[int, list[tuple[float, bool]]] = field(default_factory=dict)
    in_upload: bool = False
    _gc_start: float = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self.loop_thread:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_start
        self.gc_time += took
        self.gcs.setdefault(info["generation"], []).append((took, self.in_upload))

    def install(self) -> None:
        self.loop_thread = threading.get_ident()
        gc.callbacks.append(self.on_gc)
        run = asyncio.events.Handle._run
        recorder = self

        def timed(handle: asyncio.Handle) -> None:
            upload = handle._context.get(UPLOAD) if handle._context is not None else None  # type: ignore[attr-defined]
            if upload is None:
                run(handle)
                return
            gc0, wall, cpu = recorder.gc_time, time.perf_counter(), time.thread_time()
            recorder.in_upload = True
            try:
                run(handle)
            finally:
                recorder.in_upload = False
            wall = time.perf_counter() - wall
            cpu = time.thread_time() - cpu
            cost = recorder.costs.setdefault(upload, Cost())
            cost.steps += 1
            cost.wall += wall
            cost.cpu += cpu
            if wall > cost.max_wall:
                cost.max_wall = wall
                cost.gc_in_max = recorder.gc_time - gc0
            cost.max_cpu = max(cost.max_cpu, cpu)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]


def multipart(wav: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="steps"\r\n\r\n'
        "vad,diarize,transcribe\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="call.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + wav + f"\r\n--{BOUNDARY}--\r\n".encode()


async def pieces(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), PIECE):
        yield body[i : i + PIECE]
        await asyncio.sleep(0)  # the next piece arrives in a later loop iteration


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {p50 * 1e3:6.2f}  p99 {p99 * 1e3:6.2f}  max {ordered[-1] * 1e3:6.2f} ms"


def wav_bytes(folder: Path) -> bytes:
    if SPEECH.is_file():
        print(f"upload WAV: {SPEECH.name} ({SPEECH.stat().st_size} bytes)")
        return SPEECH.read_bytes()
    from api_throughput import write_tone

    path = write_tone(folder / "tone-3s.wav", 3)
    print(f"upload WAV: synthesised 3 s tone ({path.stat().st_size} bytes)")
    return path.read_bytes()


async def run(args: argparse.Namespace, data: Path) -> None:
    from authtesting import Accounts, auth_settings

    import callannotate
    from callannotate.api.app import create_app

    print(f"callannotate from {Path(callannotate.__file__).parent}")
    settings = auth_settings(data / "data", data / "auth.db")
    accounts = Accounts.create(settings)
    _, key = accounts.api_key("alice", "read write")
    app = accounts.attach(create_app(settings))
    body = multipart(wav_bytes(data))
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(body)),
    }
    recorder = Recorder()
    polls: list[float] = []
    job_ids: list[str] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:

        async def post(n: int) -> None:
            r = await c.post("/jobs", content=pieces(body), headers=headers)
            if r.status_code != 202:
                raise SystemExit(f"upload {n}: HTTP {r.status_code} {r.text[:300]}")
            job_ids.append(r.json()["id"])

        def one(n: int) -> asyncio.Task[None]:
            """The upload in a task whose context names it from its first step on."""
            context = contextvars.copy_context()
            context.run(UPLOAD.set, n)
            return asyncio.create_task(post(n), context=context)

        for n in range(-args.warmup, 0):  # imports, caches, first key-ring load: not counted
            await one(n)
        if args.gc_freeze:
            gc.freeze()  # what the app could do once started: the start-up heap is not scanned
        recorder.install()
        recorder.costs.clear()
        done = asyncio.Event()

        async def poller() -> None:
            auth = {"Authorization": f"Bearer {key}"}
            i = 0
            while not done.is_set():
                job = job_ids[i % len(job_ids)]
                i += 1
                t0 = time.perf_counter()
                r = await c.get(f"/jobs/{job}", headers=auth)
                polls.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.002)

        counter = iter(range(args.uploads))

        async def uploader() -> None:
            for n in counter:
                await one(n)

        pollers = [asyncio.create_task(poller()) for _ in range(args.pollers)]
        started = time.perf_counter()
        await asyncio.gather(*(uploader() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
        done.set()
        await asyncio.gather(*pollers)
    costs = [recorder.costs[n] for n in range(args.uploads)]
    print(
        f"{args.uploads} uploads of {len(body)} bytes, {args.concurrency} at a time, "
        f"{args.pollers} pollers: {elapsed:.2f} s, {args.uploads / elapsed:.1f} uploads/s"
    )
    print(f"  longest loop step  wall  {quantiles([c.max_wall for c in costs])}")
    print(f"  longest loop step  cpu   {quantiles([c.max_cpu for c in costs])}")
    print(f"  loop held (sum)    wall  {quantiles([c.wall for c in costs])}")
    print(f"  loop held (sum)    cpu   {quantiles([c.cpu for c in costs])}")
    print(f"  loop steps / upload      {statistics.median(c.steps for c in costs):.0f} (median)")
    worst = sorted(costs, key=lambda c: c.max_wall)[-max(1, args.uploads // 50) :]
    print(
        f"  worst 2 % of uploads: longest step {worst[0].max_wall * 1e3:.1f}-"
        f"{worst[-1].max_wall * 1e3:.1f} ms wall, of it GC on the loop "
        + ", ".join(f"{c.gc_in_max * 1e3:.1f}" for c in worst)
        + " ms"
    )
    for generation, runs in sorted(recorder.gcs.items()):
        took = [t for t, _ in runs]
        print(
            f"  gen {generation} GCs on the loop thread: {len(took)} ({quantiles(took)}), "
            f"{sum(1 for _, up in runs if up)} inside upload steps"
        )
    print(f"  {len(gc.get_objects())} objects tracked by the GC at the end")
    if polls:
        print(f"  GET /jobs/{{id}} while uploading ({len(polls)}): {quantiles(polls)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() after the warm-up uploads"
    )
    args = parser.parse_args()
    os.environ["CALLANNOTATE_LOG__LEVEL"] = "WARNING"
    os.environ["CALLANNOTATE_RATE_LIMITS__ENABLED"] = "true"
    for budget in ("UPLOADS", "READS"):
        os.environ[f"CALLANNOTATE_RATE_LIMITS__ROLES__USER__{budget}"] = RAISED_BUCKET
    with tempfile.TemporaryDirectory(prefix="upload-loop-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
