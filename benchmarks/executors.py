"""The same fake jobs through the local and the Celery executor: jobs per hour and
enqueue-to-start latency p50/p99, plus recovery time after a Celery worker child is killed
and after the broker (a private, durable ``redis-server``) is SIGKILLed and restarted.

Jobs use the fake ``SleepRunner`` of tests/jobs/fake_runners.py (``--steps`` x ``--step-s``
seconds each, no models), so the figures show the executors' overhead, not the pipeline's.
Both executors run ``--concurrency`` worker processes; Celery needs Redis
(``--broker``, default a dedicated database 14 with a unique queue prefix).

    .venv/bin/python benchmarks/executors.py [--jobs 20] [--concurrency 2] [--steps 5]
        [--step-s 0.1] [--idle 10] [--broker redis://127.0.0.1:6379/14]
        [--broker-down 5,30]

Broker restart (``--broker-down``, seconds of outage, comma-separated; empty to skip): a
private ``redis-server`` (appendonly, appendfsync always; tests/jobs/broker_testing.py) on a
free port is the broker; ``--jobs`` jobs are sent, Redis is SIGKILLed once two run, started
again after the outage, and the script prints how long after the restart the first waiting
job started (the worker's reconnect) and all jobs completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "jobs"))
sys.path.append(str(ROOT / "tests"))  # local_servers

from broker_testing import DurableRedis  # noqa: E402
from celery_testing import celery_worker, cleanup_broker  # noqa: E402
from fake_runners import SleepRunner  # noqa: E402
from queue_testing import new_job  # noqa: E402

from callannotate.config import Settings  # noqa: E402
from callannotate.jobs.executors.celery import CeleryExecutor  # noqa: E402
from callannotate.jobs.filequeue import FileQueue  # noqa: E402
from callannotate.jobs.models import JobState  # noqa: E402
from callannotate.jobs.service import JobService, build_job_service  # noqa: E402

FINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def settings_for(data: Path, executor: str, args: argparse.Namespace, prefix: str) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": data,
            "jobs": {
                "executor": executor,
                "broker_url": args.broker,
                "queue_prefix": prefix,
                "ping_interval_s": 0.5,
            },
            "workers": {"preload_models": False, "concurrency": args.concurrency},
            "queue": {"poll_interval": 0.5},
            "events": {"backend": "memory"},
        }
    )


async def wait_all(queue: FileQueue, ids: list[str]) -> float:
    while not all(queue.get(j).state in FINAL for j in ids):
        await asyncio.sleep(0.01)
    return time.monotonic()


async def idle_latency(name: str, svc: JobService, count: int) -> None:
    """Enqueue-to-start when a worker is idle: one job at a time."""
    waits = []
    for _ in range(count):
        job = new_job(svc.queue)
        svc.executor.submit(job.id)
        await wait_all(svc.queue, [job.id])
        final = svc.queue.get(job.id)
        assert final.started_at is not None
        waits.append((final.started_at - final.created_at).total_seconds())
    print(
        f"{name:7s} idle worker, {count} jobs one at a time: enqueue-to-start "
        f"p50 {statistics.median(waits) * 1000:7.1f} ms, "
        f"p99 {percentile(waits, 0.99) * 1000:7.1f} ms"
    )


def report(name: str, queue: FileQueue, ids: list[str], wall: float) -> float:
    jobs = [queue.get(j) for j in ids]
    done = sum(j.state == JobState.COMPLETED for j in jobs)
    waits = [
        (j.started_at - j.created_at).total_seconds() for j in jobs if j.started_at is not None
    ]
    per_hour = done / wall * 3600
    print(
        f"{name:7s} {done}/{len(ids)} completed in {wall:6.2f} s = {per_hour:8.0f} jobs/h; "
        f"enqueue-to-start p50 {statistics.median(waits) * 1000:7.1f} ms, "
        f"p99 {percentile(waits, 0.99) * 1000:7.1f} ms"
    )
    return per_hour


async def run_local(args: argparse.Namespace, data: Path) -> float:
    settings = settings_for(data, "local", args, "unused")
    svc = build_job_service(
        settings, embedded=True, runner=SleepRunner(steps=args.steps, step_s=args.step_s)
    )
    await svc.start()
    try:
        while not svc.executor.readiness()[0]:
            await asyncio.sleep(0.05)
        start = time.monotonic()
        ids = []
        for _ in range(args.jobs):
            job = new_job(svc.queue)
            svc.executor.submit(job.id)
            ids.append(job.id)
        end = await wait_all(svc.queue, ids)
        per_hour = report("local", svc.queue, ids, end - start)
        await idle_latency("local", svc, args.idle)
        return per_hour
    finally:
        await svc.stop()


@contextlib.asynccontextmanager
async def celery_service(
    settings: Settings, args: argparse.Namespace
) -> AsyncIterator[tuple[JobService, CeleryExecutor]]:
    """The API's job service on the Celery executor with a Celery worker of fake jobs,
    both ready; stopped on exit."""
    svc = build_job_service(settings, embedded=False)
    executor = svc.executor
    assert isinstance(executor, CeleryExecutor)
    await svc.start()
    try:
        with celery_worker(
            settings, concurrency=args.concurrency, steps=args.steps, step_s=args.step_s
        ):
            while not executor.readiness()[0]:
                await asyncio.sleep(0.05)
            yield svc, executor
    finally:
        await svc.stop()


async def run_celery(args: argparse.Namespace, data: Path) -> float:
    prefix = f"cabench-{uuid.uuid4().hex[:8]}"
    settings = settings_for(data, "celery", args, prefix)
    try:
        async with celery_service(settings, args) as (svc, executor):
            start = time.monotonic()
            ids = []
            for _ in range(args.jobs):
                job = new_job(svc.queue)
                executor.submit(job.id)
                ids.append(job.id)
            end = await wait_all(svc.queue, ids)
            per_hour = report("celery", svc.queue, ids, end - start)
            await idle_latency("celery", svc, args.idle)

            # recovery: SIGKILL the child running a job; time until that job completes
            job = new_job(svc.queue)
            executor.submit(job.id)
            lease = None
            while lease is None:
                lease = svc.queue.lease(job.id)
                await asyncio.sleep(0.005)
            killed = time.monotonic()
            os.kill(int(str(lease["pid"])), signal.SIGKILL)
            await wait_all(svc.queue, [job.id])
            final = svc.queue.get(job.id)
            print(
                f"celery  recovery after SIGKILL of a worker child: job {final.state.value} "
                f"(attempt {final.attempts}) {time.monotonic() - killed:.2f} s after the kill "
                f"(job length {args.steps * args.step_s:.2f} s)"
            )
            return per_hour
    finally:
        cleanup_broker(prefix, args.broker)


async def run_broker_restart(args: argparse.Namespace, data: Path, down_s: float) -> None:
    """SIGKILL the broker with jobs running and waiting; time the recovery after its restart."""
    broker = DurableRedis(data / "redis")
    broker.start()
    prefix = f"cabench-{uuid.uuid4().hex[:8]}"
    bench = argparse.Namespace(**{**vars(args), "broker": broker.url})
    settings = settings_for(data, "celery", bench, prefix)
    settings.queue.lease_seconds = 5.0  # the API looks for jobs of lost workers every 5 s
    try:
        async with celery_service(settings, args) as (svc, executor):
            ids = [new_job(svc.queue).id for _ in range(args.jobs)]
            for job_id in ids:
                executor.submit(job_id)
            while sum(svc.queue.get(j).state == JobState.RUNNING for j in ids) < 2:
                await asyncio.sleep(0.005)
            broker.kill()
            killed = time.monotonic()
            await asyncio.sleep(down_s)
            broker.start()
            restarted = time.monotonic()
            restarted_wall = datetime.now(UTC)
            end = await wait_all(svc.queue, ids)
            jobs = [svc.queue.get(j) for j in ids]
            starts = [
                (j.history[0].started_at - restarted_wall).total_seconds()
                for j in jobs
                if j.history and j.history[0].started_at > restarted_wall
            ]
            done = sum(j.state == JobState.COMPLETED for j in jobs)
            twice = sum(j.attempts > 1 for j in jobs)
            print(
                f"celery  broker SIGKILLed, down {restarted - killed:5.1f} s: first waiting job "
                f"started {min(starts, default=float('nan')):5.2f} s after the restart, "
                f"{done}/{len(ids)} completed {end - restarted:5.2f} s after it "
                f"({twice} needed a 2nd attempt, {svc.queue.counts()['processing']} left in "
                f"processing)"
            )
    finally:
        broker.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--idle", type=int, default=10, help="jobs sent one at a time")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--broker-down", default="5,30", help="broker outages to measure, seconds (comma list)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = await run_local(args, Path(tmp) / "local")
        celery = await run_celery(args, Path(tmp) / "celery")
        print(f"Celery throughput vs local: {100.0 * (celery - local) / local:+.1f} %")
        outages = [float(s) for s in args.broker_down.split(",") if s.strip()]
        if outages and not DurableRedis.available():
            print("broker restart: skipped (redis-server is not installed)")
            outages = []
        for n, down_s in enumerate(outages):
            await run_broker_restart(args, Path(tmp) / f"broker-{n}", down_s)


if __name__ == "__main__":
    asyncio.run(main())
