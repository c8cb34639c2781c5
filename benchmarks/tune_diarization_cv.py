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
``fill_min_s``, ``refine_margin``, ``min_speaker_s``) and the ones that decide which
speakers survive (``min_train_s``, ``min_embed_s``, ``min_cluster_size``; below), 4-5
values each around today's (``--grid name=v1,v2,...`` replaces one list; a single value
fixes the setting; today's value is always added). The product of the lists (2.5 × 10^7
settings, 0.1 s each to replay the 13 recordings, 3-11 s when a setting of the clustering
or refinement changes) is too large. The search first tries every combination of the
``--joint`` settings (default ``threshold``, ``min_train_s``, ``min_embed_s``,
``min_speaker_s``: 625 settings, the others at today's values), because they pay off only
together (a lower ``min_train_s`` lets short speakers form clusters; at threshold 0.80 it
also splits two-speaker clips, at 0.85 less), then goes on coordinate-wise from the best
of them: sweep one setting at a time over its list with the others fixed, move only to a
strictly better value, and go through the settings ``--passes`` times (2; it stops early
when a pass changes nothing). ``--joint ''`` skips the first stage (the coordinate search
from today's values alone). Each distinct setting is replayed once and its per-recording
scores are shared by every fold and every λ: the whole run takes about 6 minutes on 2
cores.

Cross-validation: leave one recording out (13 folds). Each fold searches on the other 12
(least pooled DER: total error / total reference speech, plus the count penalty below)
and scores the held-out recording with its choice. DER as the benchmark:
``DiarizationErrorRate(collar=0.0, skip_overlap=False)`` over the UEM, summed over clips.
The held-out AMI figure is the total over the 12 AMI folds; the call sample's is its own
fold. The same search on all 13 recordings gives the in-sample optimum, i.e. how far
tuning on the scored clips can flatter the figure.

Speaker count: every fold also says whether the held-out recording's count is right, as
``benchmarks/diarization.py`` counts it (speakers of the result against the reference's
labels inside the UEM; both come from ``tune_codec_threshold.scorer``, which scores with
that benchmark's ``load_references`` and ``to_annotation``). The anchor is pyannote's 6 of
the 12 AMI clips. ``--count-penalty 0,0.5,1`` runs the cross-validation once per value λ
with the objective pooled DER (points) + λ × (recordings whose count is wrong) on the
training recordings: λ is the DER, in points of the pooled figure, one more right count is
worth (0, the default: DER alone). Replays are shared by all values of λ.

With ``threshold`` and ``min_speaker_s``, ``min_train_s``, ``min_embed_s`` and
``min_cluster_size`` decide which speakers survive (``speaker_count.py``, ``pooled.py``): a
local speaker with less clean speech than ``min_train_s`` in a window does not shape the
clusters, and one with less than ``min_embed_s`` is not embedded, so a speaker who says
0.3 s in all cannot get a cluster of its own. ``split_together`` only acts when one cluster
is left and is not searched.

Input delays: on 30 s clips the figures depend on where the analysis windows fall
(``benchmarks/diarization.py --shifts``). ``--delays 8`` (with ``--build``: caches the WAV
files after 0.1875, 0.375, ... s of leading silence, ``--shift-s``, as ``--shifts 8
--shift-s 0.1875`` does) scores every candidate at each delay, turns moved back: DER is
pooled over the delays, a count right is the mean over them, and a fold holds out every
delay of its recording. Each replay then costs 8 times as much: narrow the lists with
``--grid``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationInput, DiarizationResult, Diarizer
from callannotate.pipeline.registry import loaded_processor, step_config
from callannotate.pipeline.types import AudioBuffer, Turn
from diarization import delayed
from tune_codec_threshold import (
    Entry,
    Score,
    _key,
    build,
    cache_signal,
    cached_diarizer,
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
    "min_train_s": "0.1,0.25,0.5,0.75,1.0",
    "min_embed_s": "0.1,0.2,0.3,0.4,0.6",
    "min_cluster_size": "1,2,3,4",
}

Candidate = tuple[float, ...]


def delay_name(index: int, shift_s: float) -> str:
    """The cache's codec field of the WAV delayed ``index`` x ``shift_s`` seconds ("wav",
    "wavd1875" for 0.1875 s: tenths of milliseconds, no dot)."""
    return "wav" if index == 0 else f"wavd{round(index * shift_s * 1e4)}"


def delay_of(name: str) -> float:
    return 0.0 if name == "wav" else int(name[4:]) / 1e4


@dataclass(frozen=True)
class _Moved:
    """A result's turns moved ``delay`` seconds earlier (what the scorer reads)."""

    turns: list[Turn]
    speakers: list[Any]


def moved_back(result: DiarizationResult, delay: float) -> _Moved:
    turns = [
        t.model_copy(update={"start": max(0.0, t.start - delay), "end": t.end - delay})
        for t in result.turns
    ]
    return _Moved(turns, list(result.speakers))


def build_delayed(args: argparse.Namespace) -> None:
    """Cache every WAV file delayed by 1..``args.delays``-1 steps of ``args.shift_s`` seconds
    of leading silence (as ``benchmarks/diarization.py --shifts``); entries there are kept."""
    settings = Settings()
    params = step_config(settings, "diarize")
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    for folder in (args.call, args.ami):
        for wav in sorted(folder.glob("*.wav")):
            for index in range(1, args.delays):
                name = delay_name(index, args.shift_s)
                target = args.cache_dir / f"{folder.name}.{wav.stem}.{name}.pkl"
                if target.exists():
                    continue
                signal = delayed(decode(wav), delay_of(name)).mono()
                cache_signal(target, signal, params, settings, base)


def _errors(scores: Iterable[Score]) -> float:
    return sum(s.confusion + s.miss + s.fa for s in scores)


def _der(scores: Iterable[Score]) -> float:
    listed = list(scores)
    return 100 * _errors(listed) / max(sum(s.total for s in listed), 1e-9)


def _wrong(scores: Iterable[Score]) -> int:
    """Recordings whose speaker count is not the reference's."""
    return sum(s.speakers != s.truth for s in scores)


def objective(scores: list[Score], penalty: float, runs: int = 1) -> float:
    """Pooled DER (points) + ``penalty`` per recording with a wrong speaker count (mean over
    its ``runs`` input delays)."""
    return _der(scores) + penalty * _wrong(scores) / runs


def joint_search(
    cost: Callable[[Candidate], float],
    start: Candidate,
    values: list[list[float]],
    joint: list[int],
) -> Candidate:
    """The best of ``start`` with the settings ``joint`` (indices) set to every combination
    of their values, the others left at ``start``'s; ties keep the earlier candidate."""
    current, best = start, cost(start)
    for combo in itertools.product(*(values[i] for i in joint)):
        moved = list(start)
        for i, value in zip(joint, combo, strict=True):
            moved[i] = value
        candidate = tuple(moved)
        error = cost(candidate)
        if error < best - 1e-9:
            current, best = candidate, error
    return current


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
        "--delays",
        type=int,
        default=1,
        help="score every recording at N input delays (pooled; --build caches them)",
    )
    parser.add_argument("--shift-s", type=float, default=0.1875, help="delay step (s)")
    parser.add_argument(
        "--joint",
        default="threshold,min_train_s,min_embed_s,min_speaker_s",
        metavar="NAME,NAME",
        help="settings searched together (every combination) before the coordinate search; "
        "'' for none",
    )
    parser.add_argument(
        "--count-penalty",
        default="0",
        metavar="L1,L2",
        help="objective: pooled DER (points) + λ per wrong speaker count; one run per λ",
    )
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
        build_delayed(args)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    wanted = {delay_name(k, args.shift_s) for k in range(args.delays)}
    store = {e: c for e, c in load_cache(args.cache_dir).items() if e[2] in wanted}
    if len({e[2] for e in store}) < len(wanted):
        raise SystemExit(f"missing WAV entries in {args.cache_dir}: run with --build first")
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
    recordings = sorted({e[:2] for e in entries})
    runs = args.delays
    # The product (and the benchmark) skips diarization when the VAD step finds no speech.
    vad = loaded_processor(settings, "vad")
    silent = {
        e: score(e[1], DiarizationResult(), len(c.signal) / 16000)
        for e, c in store.items()
        if not vad.process(AudioBuffer(c.signal[None], 16000)).union()
    }
    speech = [e for e in entries if e not in silent]
    results: dict[Candidate, dict[Entry, Score]] = {}

    by_key = {_key(c.signal): c for c in store.values()}

    def evaluate(chosen: list[Entry], tuned: dict[str, Any]) -> dict[Entry, Score]:
        """Every entry diarized with ``tuned`` on its cached model outputs, its turns moved
        back by its input delay before scoring."""
        diarizer = cached_diarizer(tuned, base.cache_dir, by_key, base)
        out: dict[Entry, Score] = {}
        for entry in chosen:
            signal = store[entry].signal
            delay = delay_of(entry[2])
            result = diarizer.process(DiarizationInput(audio=AudioBuffer(signal[None], 16000)))
            out[entry] = score(entry[1], moved_back(result, delay), len(signal) / 16000 - delay)
        return out

    def scores_of(candidate: Candidate) -> dict[Entry, Score]:
        if candidate not in results:
            tuned = {**params, **dict(zip(names, candidate, strict=True))}
            found = evaluate(speech, tuned)
            results[candidate] = {e: silent.get(e) or found[e] for e in entries}
        return results[candidate]

    def fmt(candidate: Candidate) -> str:
        return " ".join(f"{v:g}" for v in candidate)

    def ami(table: dict[Entry, Score]) -> float:
        return _der(s for e, s in table.items() if e[0] == "ami")

    def call(table: dict[Entry, Score]) -> float:
        return _der(s for e, s in table.items() if e[0] != "ami")

    amis = [r for r in recordings if r[0] == "ami"]

    def right(table: dict[Entry, Score], part: str) -> str:
        """Recordings with the right speaker count (mean over the input delays)."""
        chosen = [s for e, s in table.items() if (e[0] == "ami") == (part == "ami")]
        return f"{(len(chosen) - _wrong(chosen)) / runs:g}"

    print(f"cache: {args.cache_dir} ({len(recordings)} WAV recordings x {runs} input delays)")
    if runs > 1:
        delays = sorted(delay_of(n) for n in wanted)
        print(f"input delays: {', '.join(f'{d:g}' for d in delays)} s (turns moved back);")
        print("every figure pools the delays (speaker counts right: mean over them)")
    print("DER: total error / total reference speech over the clips, collar 0, overlap scored,")
    print("Diarizer on the decoded WAV, skipped where the VAD step finds no speech (as")
    print("benchmarks/diarization.py through annotate(file, steps=[vad, diarize]));")
    print(f"no speech found in: {', '.join(sorted({e[1] for e in silent})) or 'none'}")
    t0 = time.perf_counter()
    now = scores_of(today)
    first_s = time.perf_counter() - t0
    print("")
    print("check, today's values replayed from the cache (in-sample):")
    for e, s in now.items():
        print(
            f"  {e[0]:<10} {e[1]:<7} {e[2]:<9} DER {_der([s]):5.1f}  speakers {s.speakers} "
            f"(ref {s.truth})"
        )
    print(
        f"  AMI total {ami(now):.1f} %, call sample {call(now):.1f} %; speaker count right on "
        f"{right(now, 'ami')}/{len(amis)} AMI clips, call sample {right(now, 'call')}/1"
    )
    direct = evaluate(list(silent), params)
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

    joint = [names.index(n) for n in args.joint.split(",") if n]

    def cost_on(train: list[Entry], penalty: float) -> Callable[[Candidate], float]:
        return lambda c: objective([scores_of(c)[e] for e in train], penalty, runs)

    def search(train: list[Entry], penalty: float) -> Candidate:
        """The choice on ``train``: the joint search, then the coordinate search from it."""
        cost = cost_on(train, penalty)
        start = joint_search(cost, today, values, joint)
        return coordinate_search(cost, start, values, args.passes)

    def cross_validate(penalty: float) -> tuple[dict[Entry, Score], Candidate]:
        """Leave one recording out with objective λ = ``penalty``: the held-out scores and
        the choice of the same search on all 13 recordings."""
        print("")
        print(f"leave one recording out, λ {penalty:g}; choice made on the other 12:")
        short = " ".join(f"{n[:9]:>9}" for n in names)
        print(f"  {'held out':<18} {short}   DER  today  ref  speakers found")
        held: dict[Entry, Score] = {}
        chosen: dict[tuple[str, str], Candidate] = {}
        for out in recordings:
            train = [e for e in entries if e[:2] != out]
            choice = search(train, penalty)
            chosen[out] = choice
            mine = [e for e in entries if e[:2] == out]
            held.update({e: scores_of(choice)[e] for e in mine})
            found = " ".join(str(held[e].speakers) for e in mine)
            print(
                f"  {out[0] + '/' + out[1]:<18} "
                + " ".join(f"{v:9g}" for v in choice)
                + f" {_der(held[e] for e in mine):5.1f} {_der(now[e] for e in mine):6.1f}"
                + f" {held[mine[0]].truth:4d}  {found}",
                flush=True,
            )
        inside = search(entries, penalty)
        print(
            f"  held out: AMI {ami(held):.1f} %, count right {right(held, 'ami')}/{len(amis)}; "
            f"call {call(held):.1f} %, count right {right(held, 'call')}/1"
        )
        print("  how many of the 13 folds chose today's value:")
        for i, n in enumerate(names):
            picked: dict[float, int] = {}
            for c in chosen.values():
                picked[c[i]] = picked.get(c[i], 0) + 1
            others = ", ".join(f"{v:g} x{k}" for v, k in sorted(picked.items()) if v != today[i])
            print(
                f"    {n:<16} {today[i]:g}: {picked.get(today[i], 0)}/13"
                + (f" ({others})" if others else "")
            )
        return held, inside

    print("")
    start = "today's values"
    if joint:
        together = ", ".join(names[i] for i in joint)
        print(f"every combination of {together} first (the others at today's values);")
        start = "the best of them"
    print(f"settings searched (coordinate-wise, {args.passes} passes, from {start}):")
    for n, options, value in zip(names, values, today, strict=True):
        print(f"  {n:<16} today {value:g}; candidates {', '.join(f'{v:g}' for v in options)}")
    penalties = [float(v) for v in args.count_penalty.split(",")]
    summary: list[tuple[str, dict[Entry, Score]]] = [("today (chosen on all 13)", now)]
    for penalty in penalties:
        held, inside = cross_validate(penalty)
        summary.append((f"held-out, λ {penalty:g}", held))
        summary.append((f"in-sample search, λ {penalty:g}", scores_of(inside)))
        print(f"  in-sample choice, λ {penalty:g}: {fmt(inside)}")
    print("")
    print("objective: pooled DER (points) + λ per recording with a wrong speaker count")
    print(f"{'':<30} {'AMI DER':>8} {'count right':>11} {'call DER':>9} {'call spk':>8}")
    for title, table in summary:
        calls = [s for e, s in table.items() if e[0] != "ami"]
        print(
            f"{title:<30} {ami(table):7.1f}% {right(table, 'ami'):>7}/{len(amis):<3} "
            f"{call(table):8.1f}% {' '.join(str(s.speakers) for s in calls):>8}"
        )
    print("(anchor: pyannote's pipeline gets the count right on 6 of the 12 AMI clips)")
    print(
        f"{len(results)} settings replayed; run time {time.perf_counter() - started:.0f} s "
        "(models loaded, cache read and replays)"
    )


if __name__ == "__main__":
    main()
