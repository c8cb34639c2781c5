"""Throughput and latency of the durable file queue's operations (no HTTP, no workers).

Prints: submits/s, get() p50/p99 latency, claim+complete cycles/s, list() time for the
whole queue. Every metadata write is fsync'd, so figures depend on the disk; on a shared
machine they are noisy.

    .venv/bin/python benchmarks/queue_ops.py [--jobs 500] [--dir /tmp/somewhere]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job


def submit_one(queue: FileQueue) -> Job:
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    staged.write_bytes(b"\0" * 4096)
    meta = AudioMeta(
        filename="call.wav",
        stored_as="audio.wav",
        size_bytes=4096,
        format="wav",
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        duration=0.128,
    )
    return queue.submit(Job(id=job_id, owner="bench", audio=meta), staged)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="queue parent folder (tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        queue = FileQueue(Path(tmp) / "queue", QueueSettings())
        t0 = time.perf_counter()
        jobs = [submit_one(queue) for _ in range(args.jobs)]
        submit_s = time.perf_counter() - t0

        latencies = []
        for job in jobs * 4:
            t = time.perf_counter()
            queue.get(job.id)
            latencies.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        _, total = queue.list(limit=50)
        list_s = time.perf_counter() - t0

        half = jobs[: args.jobs // 2]
        t0 = time.perf_counter()
        for _ in half:
            claimed = queue.claim("bench")
            assert claimed is not None
            queue.complete(claimed.id, b"{}")
        cycle_s = time.perf_counter() - t0

        print(f"queue folder         {tmp}")
        print(f"jobs                 {args.jobs}")
        print(f"submit               {args.jobs / submit_s:8.1f} jobs/s")
        print(
            f"get()                p50 {statistics.median(latencies):.3f} ms, "
            f"p99 {percentile(latencies, 0.99):.3f} ms ({len(latencies)} calls)"
        )
        print(f"list(limit=50)       {list_s * 1000:8.1f} ms over {total} jobs")
        print(f"claim+complete       {len(half) / cycle_s:8.1f} cycles/s (with {args.jobs} queued)")


if __name__ == "__main__":
    main()
