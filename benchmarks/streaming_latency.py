"""Committed-word latency of live transcription, and how many streams 2 cores sustain.

Usage::

    .venv/bin/python benchmarks/streaming_latency.py --data ../shared/data \
        [--language en|ru|auto] [--streams 1 2 3] [--websocket] [--fast]

Recordings are replayed at real time (0.5 s chunks) through the streaming engine
(``callannotate.pipeline.asr.streaming``), N streams at once in threads; with ``--websocket``
the same is done through ``WS /stream`` of the real app (in-process ASGI test client).
Latency of a word = time its commit message arrives - time the word's end was "spoken"
(stream clock starts with the first chunk). A stream keeps up when its latency does not
grow over the recording. ``--fast`` replays as fast as possible instead (latency then
counts processing only). Timings are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from callannotate.config import ApiSettings, Settings
from callannotate.pipeline.asr.streaming import open_stream, replay
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.types import Float32Array

SR = 16000


def recordings(data: Path, language: str) -> list[tuple[str, Float32Array]]:
    items: list[tuple[str, Float32Array]] = []
    if language in ("en", "auto"):
        jfk = data / "asr" / "en" / "jfk" / "jfk.flac"
        if jfk.is_file():
            items.append(("jfk", decode(jfk).mono()))
        call = data / "diarization" / "callsample" / "sample.wav"
        if call.is_file():
            items.append(("callsample", decode(call).mono()))
    if language in ("ru", "auto"):
        ru = data / "asr" / "ru" / "ru.wav"
        if ru.is_file():
            pause = np.zeros(SR, dtype=np.float32)
            audio = decode(ru).mono()
            items.append(("ru x3", np.concatenate([audio, pause, audio, pause, audio])))
    return items


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_engine(
    settings: Settings, language: str, audio: Float32Array, realtime: bool, out: dict[str, Any]
) -> None:
    stream = open_stream(settings, language)
    t0 = time.perf_counter()
    events, lat = replay(stream, audio, chunk_s=0.5, realtime=realtime)
    out["wall"] = time.perf_counter() - t0
    out["lat"] = [x for _, x in lat]
    out["late"] = [x for w, x in lat if w.end > audio.shape[0] / SR / 2]
    out["text"] = events[-1].text
    out["decode_s"] = stream.decode_seconds
    out["decodes"] = stream.decodes


def run_websocket(
    settings: Settings, language: str, audio: Float32Array, out: dict[str, Any]
) -> None:
    from fastapi.testclient import TestClient

    from callannotate.api.app import create_app

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    with TestClient(create_app(settings)) as client, client.websocket_connect("/stream") as ws:
        ws.send_json({"type": "config", "format": "pcm_s16le", "language": language})
        assert ws.receive_json()["type"] == "ready"
        lat: list[tuple[float, float]] = []
        final: dict[str, Any] = {}
        t0 = time.perf_counter()

        def receiver() -> None:
            while True:
                msg = json.loads(ws.receive_text())
                now = time.perf_counter() - t0
                if msg["type"] == "committed":
                    lat.extend((w["end"], now - w["end"]) for w in msg["words"])
                if msg["type"] in ("final", "error"):
                    final.update(msg)
                    return

        thread = threading.Thread(target=receiver)
        thread.start()
        step = SR // 2
        for i in range(0, audio.shape[0], step):
            wait = t0 + min(audio.shape[0], i + step) / SR - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            ws.send_bytes(pcm[2 * i : 2 * (i + step)])
        ws.send_json({"type": "end"})
        thread.join()
    out["lat"] = [x for _, x in lat]
    out["late"] = [x for end, x in lat if end > audio.shape[0] / SR / 2]
    out["text"] = final.get("text", final.get("detail", ""))
    out["wall"] = time.perf_counter() - t0


def main() -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data")
    parser.add_argument("--language", default="en", help="en (tiny.en) | ru | auto (base)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--websocket", action="store_true", help="through WS /stream")
    parser.add_argument("--fast", action="store_true", help="no real-time pacing")
    parser.add_argument("--only", default=None, help="substring of recording names")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    cache = Path(
        os.environ.get(
            "CALLANNOTATE_MODEL_CACHE", Path(tempfile.gettempdir()) / "callannotate-models"
        )
    )
    settings = Settings(
        data_dir=tmp, model_cache_dir=cache, api=ApiSettings(embedded_workers=False)
    )
    items = recordings(args.data.resolve(), args.language)
    if args.only:
        items = [i for i in items if args.only in i[0]]
    print(
        f"data: {args.data.resolve()}; language {args.language}; "
        f"{'websocket' if args.websocket else 'engine'}; {'fast' if args.fast else 'real time'}"
    )
    open_stream(settings, args.language).close()  # load models before timing
    for name, audio in items:
        dur = audio.shape[0] / SR
        for n in args.streams:
            outs: list[dict[str, Any]] = [{} for _ in range(n)]
            if args.websocket:
                threads = [
                    threading.Thread(target=run_websocket, args=(settings, args.language, audio, o))
                    for o in outs
                ]
            else:
                threads = [
                    threading.Thread(
                        target=run_engine, args=(settings, args.language, audio, not args.fast, o)
                    )
                    for o in outs
                ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            lat = [x for o in outs for x in o.get("lat", [])]
            late = [x for o in outs for x in o.get("late", [])]
            early = statistics.median(lat) if lat else float("nan")
            wall = max(o["wall"] for o in outs)
            print(
                f"{name:12s} {dur:5.1f}s streams={n}: committed-word latency median "
                f"{pct(lat, 50):.2f}s p95 {pct(lat, 95):.2f}s (2nd half median "
                f"{pct(late, 50):.2f}s vs all {early:.2f}s); wall {wall:.1f}s"
                + (
                    f"; decode {outs[0]['decode_s']:.1f}s in {outs[0]['decodes']} calls"
                    if "decode_s" in outs[0]
                    else ""
                )
            )
            print(f"    text: {outs[0].get('text', '')[:150]}")
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores, shared with other work)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
