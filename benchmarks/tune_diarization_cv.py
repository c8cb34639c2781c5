"""Held-out DER of the diarizer's default settings: leave one recording out over the WAV clips.

    python benchmarks/tune_diarization_cv.py --build   # cache the models' outputs (minutes, once)
    python benchmarks/tune_diarization_cv.py           # the cross-validation, from the cache

The defaults of the ``diarize`` step (``config/models.yaml`` over ``DiarizeSettings``) were
chosen on the 13 recordings that score them: the 12 AMI clips and the call sample. This
script asks what tuning on them is worth on a recording it did not see.

``--build`` caches the expensive model outputs of every WAV file (segmentation-3.0
windows, the count model, CAM++ frame features) with the machinery of
``tune_codec_threshold.py`` (codec "wav" only); the rest of the real ``Diarizer``
(clustering, refinement, counting, reconstruction) then runs for every candidate setting.
As in the product, a recording in which the VAD step finds no speech is not diarized (AMI
trn01: 0 speakers, 100 % missed; diarizing it anyway, as ``--direct`` does, adds 0.1 to
the AMI total). With today's values the replay gives the per-clip figures of
``benchmarks/diarization.py`` at delay 0 (printed first, as a check).

Candidates: the settings that were tuned on these clips and leave the cached outputs alone
(``threshold``, ``count_bias``, ``overlap_bias``, ``count_weight``, ``fill_s``,
``fill_min_s``, ``refine_margin``, ``min_speaker_s``), 4-5 values each around today's
(``--grid name=v1,v2,...`` replaces one list; today's value is always added). The product
of the lists (250,000 settings, 0.2-0.3 s each to replay the 13 recordings, 3-11 s when
``threshold`` or ``refine_margin`` needs a new clustering) is too large, so the search is
coordinate-wise: start at today's values, sweep one setting at a time over its list with
the others fixed, move only to a strictly better value, and go through the settings
``--passes`` times (2; it stops early when a pass changes nothing). Each distinct setting
is replayed once and its per-recording scores are shared by every fold: the whole run
takes about 3 minutes on 2 cores.

Cross-validation: leave one recording out (13 folds). Each fold searches on the other 12
(least total error: total error / total reference speech, pooled) and scores the held-out
recording with its choice. DER as the benchmark: ``DiarizationErrorRate(collar=0.0,
skip_overlap=False)`` over the UEM, summed over clips. The held-out AMI figure is the total
over the 12 AMI folds; the call sample's is its own fold. The same search on all 13
recordings gives the in-sample optimum, i.e. how far tuning on the scored clips can flatter
the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from callannotate.config import Settings
from callannotate.pipeline.diarization import DiarizationResult, Diarizer
from callannotate.pipeline.registry import loaded_processor, step_config
from callannotate.pipeline.types import AudioBuffer
from tune_codec_threshold import (
    Entry,
    Score,
    build,
    evaluate,
    load_cache,
    scorer,
)

HERE = Path(__file__).resolve().parents[1]

# Around today's values (which are added when missing).
GRID: dict[str, str] = {
    "threshold": "0.70,0.75,0.80,0.85,0.90",
    "count_bias": "-0.15,-0.10,-0.05,0.0,0.05",
    "overlap_bias": "0.05,0.10,0.15,0.20,0.25",
    "count_weight": "0.25,0.5,0.75,1.0",
    "fill_s": "0.0,0.5,1.0,1.5,2.0",
    "fill_min_s": "0.05,0.1,0.2,0.3",
    "refine_margin": "0.0,0.025,0.05,0.075,0.1",
    "min_speaker_s": "0.25,0.5,1.0,1.5,2.0",
}

Candidate = tuple[float, ...]


def _errors(scores: Iterable[Score]) -> float:
    return sum(s.confusion + s.miss + s.fa for s in scores)


def _der(scores: Iterable[Score]) -> float:
    listed = list(scores)
    return 100 * _errors(listed) / max(sum(s.total for s in listed), 1e-9)


def coordinate_search(
    cost: Callable[[Candidate], float],
    start: Candidate,
    values: list[list[float]],
    passes: int,
) -> Candidate:
    """Coordinate descent over ``values`` (one list per setting) from ``start``: a setting
    moves only to a value with strictly less ``cost``; ties keep the current value."""
    current, best = start, cost(start)
    for _ in range(passes):
        before = current
        for i, options in enumerate(values):
            chosen = current
            for value in options:
                candidate = (*current[:i], value, *current[i + 1 :])
                error = cost(candidate)
                if error < best - 1e-9:
                    chosen, best = candidate, error
            current = chosen
        if current == before:
            break
    return current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = HERE.parent / "shared/data/diarization"
    parser.add_argument("--ami", type=Path, default=shared / "ami")
    parser.add_argument("--call", type=Path, default=shared / "callsample")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "callannotate-tune-defaults",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="cache the WAV files (slow)")
    parser.add_argument("--passes", type=int, default=2, help="coordinate-search passes")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help=f"candidate values of one setting (defaults: {GRID})",
    )
    args = parser.parse_args()
    if args.build:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        build(args, wav_only=True)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    store = {e: c for e, c in load_cache(args.cache_dir).items() if e[2] == "wav"}
    if not store:
        raise SystemExit(f"no WAV entries in {args.cache_dir}: run with --build first")
    grid = dict(GRID)
    for item in args.grid:
        name, _, listed = item.partition("=")
        if name not in GRID:
            raise SystemExit(f"--grid: {name} is not one of {', '.join(GRID)}")
        grid[name] = listed
    settings = Settings()
    params = step_config(settings, "diarize")
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    score = scorer(args)
    names = list(grid)
    today: Candidate = tuple(float(getattr(base.settings, n)) for n in names)
    values = [
        sorted({float(v) for v in grid[n].split(",")} | {today[i]}) for i, n in enumerate(names)
    ]
    entries = sorted(store)
    # The product (and the benchmark) skips diarization when the VAD step finds no speech.
    vad = loaded_processor(settings, "vad")
    silent = {
        e: score(e[1], DiarizationResult(), len(c.signal) / 16000)
        for e, c in store.items()
        if not vad.process(AudioBuffer(c.signal[None], 16000)).union()
    }
    speech = [e for e in entries if e not in silent]
    results: dict[Candidate, dict[Entry, Score]] = {}

    def scores_of(candidate: Candidate) -> dict[Entry, Score]:
        if candidate not in results:
            tuned = {**params, **dict(zip(names, candidate, strict=True))}
            found = evaluate(store, speech, tuned, base, score)
            results[candidate] = {e: silent.get(e) or found[e] for e in entries}
        return results[candidate]

    def fmt(candidate: Candidate) -> str:
        return " ".join(f"{v:g}" for v in candidate)

    def ami(table: dict[Entry, Score]) -> float:
        return _der(s for e, s in table.items() if e[0] == "ami")

    def call(table: dict[Entry, Score]) -> float:
        return _der(s for e, s in table.items() if e[0] != "ami")

    print(f"cache: {args.cache_dir} ({len(store)} WAV recordings)")
    print("DER: total error / total reference speech over the clips, collar 0, overlap scored,")
    print("Diarizer on the decoded WAV, skipped where the VAD step finds no speech (as")
    print("benchmarks/diarization.py through annotate(file, steps=[vad, diarize])), delay 0;")
    print(f"no speech found in: {', '.join(e[1] for e in silent) or 'none'}")
    t0 = time.perf_counter()
    now = scores_of(today)
    first_s = time.perf_counter() - t0
    print("")
    print("check, today's values replayed from the cache (in-sample):")
    for e, s in now.items():
        print(f"  {e[0]:<10} {e[1]:<7} DER {_der([s]):5.1f}  speakers {s.speakers} (ref {s.truth})")
    print(f"  AMI total {ami(now):.1f} %, call sample {call(now):.1f} %")
    direct = evaluate(store, list(silent), params, base, score)
    print(
        f"  (diarizing the no-speech clips too, as --direct: AMI total {ami(now | direct):.1f} %)"
    )
    probes = []
    for moved in (0, 1):  # threshold (a new clustering), count_bias (reconstruction only)
        probe = (*today[:moved], today[moved] + 0.01, *today[moved + 1 :])
        t0 = time.perf_counter()
        scores_of(probe)
        probes.append(time.perf_counter() - t0)
        del results[probe]
    print(
        f"time per candidate (13 recordings): {probes[0]:.1f} s with a new clustering, "
        f"{probes[1]:.1f} s when only counting/reconstruction change (first: {first_s:.1f} s)"
    )

    def cost_on(train: list[Entry]) -> Callable[[Candidate], float]:
        return lambda c: _errors(scores_of(c)[e] for e in train)

    print("")
    print(f"settings searched (coordinate-wise, {args.passes} passes, from today's values):")
    for n, options, value in zip(names, values, today, strict=True):
        print(f"  {n:<14} today {value:g}; candidates {', '.join(f'{v:g}' for v in options)}")
    print("")
    print("leave one recording out; choice made on the other 12 (columns as above):")
    print(f"  {'held out':<18} " + " ".join(f"{n[:9]:>9}" for n in names) + "   DER  today")
    held: dict[Entry, Score] = {}
    chosen: dict[Entry, Candidate] = {}
    for out in entries:
        choice = coordinate_search(
            cost_on([e for e in entries if e != out]), today, values, args.passes
        )
        chosen[out] = choice
        held[out] = scores_of(choice)[out]
        print(
            f"  {out[0] + '/' + out[1]:<18} "
            + " ".join(f"{v:9g}" for v in choice)
            + f" {_der([held[out]]):5.1f} {_der([now[out]]):6.1f}",
            flush=True,
        )
    inside = coordinate_search(cost_on(entries), today, values, args.passes)
    best = scores_of(inside)
    print("")
    print("how many of the 13 folds chose today's value:")
    for i, n in enumerate(names):
        picked: dict[float, int] = {}
        for choice in chosen.values():
            picked[choice[i]] = picked.get(choice[i], 0) + 1
        others = ", ".join(f"{v:g} x{k}" for v, k in sorted(picked.items()) if v != today[i])
        print(
            f"  {n:<14} {today[i]:g}: {picked.get(today[i], 0)}/13"
            + (f" ({others})" if others else "")
        )
    print("")
    print(f"{'':<46} {'AMI total':>9} {'call':>6}")
    print(f"{'today (chosen on all 13, scored on them)':<46} {ami(now):8.1f}% {call(now):5.1f}%")
    print(f"{'held-out (leave one recording out)':<46} {ami(held):8.1f}% {call(held):5.1f}%")
    print(f"{'best of the search on all 13 (in-sample)':<46} {ami(best):8.1f}% {call(best):5.1f}%")
    print(f"  in-sample choice: {fmt(inside)} ({', '.join(names)})")
    print(
        f"{len(results)} settings replayed; run time {time.perf_counter() - started:.0f} s "
        "(models loaded, cache read and replays)"
    )


if __name__ == "__main__":
    main()
