"""What one export costs when rendered inside the request (docs/scale-out.md "Light work").

Builds the real annotation of the shared 30 s call sample (tests/reports/reports_sample.py)
and a long one made of that call repeated end to end (``--minutes``, default 60), then renders
every export format of each several times and prints the median time and size per format.
With ``--api`` it also asks the long call's PDF through the real app (ASGI transport, local
light lane): in the request, and with ``Prefer: respond-async`` (time to the ``202``, and
the whole round trip: poll every 50 ms, then download).

    .venv/bin/python benchmarks/export_cost.py [--minutes 60] [--repeat 5] [--api]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reports"))

from reports_sample import callsample_annotation, completed_job
from test_report_routes import tone_wav

from callannotate.pipeline.types import Annotation
from callannotate.reports.exporters import FORMATS, export


def _shift(item: Any, offset: float) -> Any:
    """A copy of a timed item (turn, word, utterance with its words) ``offset`` s later."""
    update: dict[str, Any] = {"start": item.start + offset, "end": item.end + offset}
    words = getattr(item, "words", None)
    if isinstance(words, list):
        update["words"] = [_shift(w, offset) for w in words]
    return item.model_copy(update=update)


def repeated(base: Annotation, minutes: float) -> Annotation:
    """``base`` repeated end to end until it lasts ``minutes`` (statistics kept as they are:
    the exporters only print them)."""
    length = base.recording.duration
    copies = max(1, int(minutes * 60 / length))
    fields = ("turns", "exclusive_turns", "words", "utterances")
    out: dict[str, list[Any]] = {f: [] for f in fields}
    for k in range(copies):
        for f in fields:
            out[f].extend(_shift(item, k * length) for item in getattr(base, f))
    recording = base.recording.model_copy(update={"duration": length * copies})
    return base.model_copy(update={**out, "recording": recording})


def measure(name: str, annotation: Annotation, repeat: int) -> None:
    minutes = annotation.recording.duration / 60
    print(f"{name}: {minutes:.1f} min, {len(annotation.words)} words, "
          f"{len(annotation.utterances)} utterances")  # fmt: skip
    for fmt in FORMATS:
        times = []
        size = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            size = len(export(annotation, fmt))
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        print(f"  {fmt:<16} median {ms:8.1f} ms  {size / 1024:8.1f} KiB")


async def api_round_trip(annotation: Annotation) -> None:
    """The PDF of ``annotation`` through the app: synchronous, then as light work."""
    import httpx

    from callannotate.api.app import create_app
    from callannotate.config import ApiSettings, AuthSettings, Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            api=ApiSettings(embedded_workers=False),
            auth=AuthSettings(enabled=False),  # a throwaway data folder with no accounts
        )
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://b", timeout=120) as client,
        ):
            job = completed_job(app.state.queue, annotation, tone_wav(Path(tmp) / "c.wav"))
            t0 = time.perf_counter()
            sync = await client.get(f"/jobs/{job}/export?format=pdf")
            sync_s = time.perf_counter() - t0
            assert sync.status_code == 200, sync.text
            t0 = time.perf_counter()
            r = await client.get(
                f"/jobs/{job}/export?format=pdf", headers={"Prefer": "respond-async"}
            )
            accepted_s = time.perf_counter() - t0
            assert r.status_code == 202, r.text
            while (body := (await client.get(r.headers["location"])).json())["state"] in (
                "queued",
                "running",
            ):
                await asyncio.sleep(0.05)
            assert body["state"] == "completed", body
            file = await client.get(body["download_url"])
            total_s = time.perf_counter() - t0
            assert file.status_code == 200
    print(f"API, pdf of the {annotation.recording.duration / 60:.1f} min call:")
    print(f"  in the request          {sync_s * 1000:8.1f} ms  {len(sync.content) / 1024:8.1f} KiB")
    print(f"  async: 202 in           {accepted_s * 1000:8.1f} ms")
    print(f"  async: 202, poll, file  {total_s * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--api", action="store_true", help="also the PDF through the app")
    args = parser.parse_args()
    base = callsample_annotation()
    long = repeated(base, args.minutes)
    measure("call sample", base, args.repeat)
    measure("repeated call", long, max(1, args.repeat // 2))
    if args.api:
        asyncio.run(api_round_trip(long))


if __name__ == "__main__":
    main()
