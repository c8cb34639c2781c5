"""Memory of the API process while a client pushes a long stream through ``WS /stream``.

Usage::

    .venv/bin/python benchmarks/stream_memory.py [--mb 100] [--signal silence|noise|speech]
        [--data ../shared/data] [--chunk-kb 64]

Starts ``callannotate serve --no-workers`` on a free port (its own data folder), opens one
short stream first so the streaming models are loaded, then sends ``--mb`` MB of 16 kHz
16-bit PCM as fast as the socket takes it, ends the stream and waits for the ``final``
message. Prints the server's RSS before, its peak during the stream (sampled every 50 ms),
and after the stream ended (after 2 s), plus the send and total times. ``silence`` is very
quiet noise (the VAD hears no speech: only the stream plumbing is measured), ``noise`` is
loud white noise, ``speech`` loops the JFK clip (every second is decoded: slow).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# tests/local_servers.py: free_port() and callannotate_command(), shared with the tests
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

import httpx
import numpy as np
import psutil
from websockets.asyncio.client import connect

from local_servers import callannotate_command, free_port

MB = 1024 * 1024


def pcm_signal(kind: str, total_bytes: int, data: Path) -> bytes:
    """``total_bytes`` of 16 kHz s16le PCM built from a repeated 10 s block."""
    rng = np.random.default_rng(0)
    if kind == "speech":
        from callannotate.pipeline.audio.decode import decode

        block = decode(data / "asr" / "en" / "jfk" / "jfk.flac").mono()
    elif kind == "noise":
        block = rng.normal(0, 0.2, 160000).astype(np.float32)
    else:
        block = rng.normal(0, 1e-4, 160000).astype(np.float32)
    pcm = (np.clip(block, -1, 1) * 32767).astype("<i2").tobytes()
    reps = total_bytes // len(pcm) + 1
    return (pcm * reps)[:total_bytes]


def start_server(tmp: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(tmp / "data"), **env_extra}
    command = callannotate_command()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-workers"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early; see {tmp / 'server.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


async def run_stream(ws_url: str, pcm: bytes, chunk: int) -> dict[str, object]:
    """Send ``pcm`` then end; returns the final message (or the error) and the timings."""
    t0 = time.perf_counter()
    async with connect(f"{ws_url}/stream", max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "format": "pcm_s16le", "language": "en"}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready

        async def drain() -> dict[str, object]:
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] in ("final", "error"):
                    return dict(msg)

        reader = asyncio.create_task(drain())
        for i in range(0, len(pcm), chunk):
            await ws.send(pcm[i : i + chunk])
        sent = time.perf_counter() - t0
        await ws.send(json.dumps({"type": "end"}))
        final = await reader
    return {"final": final, "send_s": sent, "total_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="MB of PCM to send")
    parser.add_argument("--signal", choices=("silence", "noise", "speech"), default="silence")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--chunk-kb", type=int, default=64, help="size of each binary message")
    args = parser.parse_args()

    pcm = pcm_signal(args.signal, int(args.mb * MB), args.data)
    with tempfile.TemporaryDirectory() as tmp_name:
        proc, url = start_server(Path(tmp_name), {})
        ws_url = url.replace("http://", "ws://")
        server = psutil.Process(proc.pid)
        try:
            asyncio.run(run_stream(ws_url, pcm[: 32000 * 2], args.chunk_kb * 1024))  # warm-up
            time.sleep(1.0)
            before = server.memory_info().rss
            peak = before
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, server.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = asyncio.run(run_stream(ws_url, pcm, args.chunk_kb * 1024))
            stop.set()
            sampler.join()
            time.sleep(2.0)
            after = server.memory_info().rss
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    final = result["final"]
    assert isinstance(final, dict)
    print(
        f"{args.mb:g} MB of PCM ({args.mb * MB / 32000 / 60:.1f} min, {args.signal}) "
        f"in {args.chunk_kb} KiB messages"
    )
    print(f"  outcome: {final.get('type')} {final.get('error', '')}".rstrip())
    print(f"  sent in {result['send_s']:.1f} s, final after {result['total_s']:.1f} s")
    print(
        f"  server RSS: before {before / MB:.0f} MB, peak {peak / MB:.0f} MB "
        f"(+{(peak - before) / MB:.0f}), after {after / MB:.0f} MB (+{(after - before) / MB:.0f})"
    )


if __name__ == "__main__":
    main()
