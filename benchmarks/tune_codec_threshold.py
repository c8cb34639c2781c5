"""Tune the diarizer's narrowband settings with leave-one-clip-out cross-validation.

    python benchmarks/tune_codec_threshold.py --build      # cache models' outputs (slow, once)
    python benchmarks/tune_codec_threshold.py              # CV figures from the cache (fast)

Every clip of the AMI folder and the call sample is re-encoded through the codecs of
``benchmarks/diarization.py --codecs`` (``audio_codecs.py``), decoded as the product decodes
it, and the expensive model outputs of the ``Diarizer`` (segmentation-3.0 windows, the
second count model, CAM++ frame features) are cached per (clip, codec) under
``--cache-dir``. The rest of the diarizer (bandwidth detection, clustering, refinement,
reconstruction) then runs for real on the cached outputs for every candidate setting, which
gives the same turns as ``Diarizer.process`` on the decoded file (``--direct``).

Cross-validation: for each of the 12 AMI clips, the narrowband setting is chosen on the
other 11 (lowest total DER over their narrowband-detected runs, every codec pooled) and the
held-out clip is scored with it; the held-out errors are summed over the 12 folds per codec
(total error / total reference speech, collar 0, overlap scored, as the benchmark). The
call sample (a telephone recording, band-limited even as WAV) is a constraint, not a
target: a candidate must keep its WAV DER at most ``--call-limit`` (5.4 %, today's figure)
and its two speakers under every codec (``--no-call-check`` drops the constraint); it is
scored with the value chosen on all 12 clips.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import pickle
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import audio_codecs as codecs
from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationInput, Diarizer
from callannotate.pipeline.diarization.bandwidth import upper_band_db
from callannotate.pipeline.registry import step_config
from callannotate.pipeline.types import AudioBuffer

HERE = Path(__file__).resolve().parents[1]


def _key(signal: Any) -> str:
    return hashlib.sha1(np.ascontiguousarray(signal, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class Cached:
    """The model outputs of one decoded signal."""

    signal: Any
    seg: Any = None
    count: Any = None
    features: Any = None


class _Segmentation:
    """Segmentation-3.0 through the cache (``model`` None: replay only)."""

    def __init__(self, store: dict[str, Cached], model: Any) -> None:
        self.store, self.model = store, model

    def segment(self, signal: Any, window_s: float, step_s: float, **kwargs: Any) -> Any:
        entry = self.store[_key(signal)]
        if entry.seg is None:
            entry.seg = self.model.segment(signal, window_s=window_s, step_s=step_s, **kwargs)
        return entry.seg


class _Counter:
    def __init__(self, store: dict[str, Cached], model: Any) -> None:
        self.store, self.model = store, model

    def mean_count(self, signal: Any, *args: Any) -> Any:
        entry = self.store[_key(signal)]
        if entry.count is None:
            entry.count = self.model.mean_count(signal, *args)
        return entry.count


def cached_diarizer(
    params: dict[str, Any], cache: Path, store: dict[str, Cached], base: Diarizer | None
) -> Diarizer:
    """A ``Diarizer`` whose models read (and, given a loaded ``base``, fill) ``store``."""
    diarizer = Diarizer(params, cache, threads=2)
    real_seg = base._segmentation if base else None
    real_count = base._counter if base else None
    diarizer._segmentation = _Segmentation(store, real_seg)  # type: ignore[assignment]
    diarizer._counter = _Counter(store, real_count)  # type: ignore[assignment]
    if base is not None:
        diarizer._embedder = base._embedder
        diarizer._frame_embedder = base._frame_embedder
    real_features = Diarizer._features

    def features(signal: Any) -> Any:
        entry = store[_key(signal)]
        if entry.features is None:
            entry.features = real_features(diarizer, signal)[1:]
        return (diarizer._frame_embedder, *entry.features)

    diarizer._features = features  # type: ignore[method-assign]
    real_cluster = diarizer._cluster

    def cluster(signal: Any, seg: Any, active: Any, params: Any, *rest: Any) -> Any:
        # The clustering does not depend on the count settings: one run per signal and
        # clustering/refinement (``pooled``) parameters.
        memo = store[_key(signal)].__dict__.setdefault("clusters", {})
        key = repr((params, diarizer.pooled))
        if key not in memo:
            memo[key] = real_cluster(signal, seg, active, params, *rest)
        return memo[key]

    diarizer._cluster = cluster  # type: ignore[method-assign]
    diarizer._loaded = True
    return diarizer


def variants(ffmpeg: str) -> list[codecs.Codec | None]:
    chosen, _notes = codecs.plan(codecs.available_encoders(ffmpeg))
    return [None, *chosen]


def build(args: argparse.Namespace, wav_only: bool = False) -> None:
    """Cache every clip of ``args.call`` and ``args.ami`` under every codec (``wav_only``:
    the WAV files alone) in ``args.cache_dir``; entries already there are kept."""
    settings = Settings()
    params = step_config(settings, "diarize")
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    ffmpeg = codecs.ffmpeg_binary()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    for folder in (args.call, args.ami):
        for wav in sorted(folder.glob("*.wav")):
            for codec in [None] if wav_only else variants(ffmpeg):
                name = "wav" if codec is None else codec.name
                target = args.cache_dir / f"{folder.name}.{wav.stem}.{name}.pkl"
                if target.exists():
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    path = wav if codec is None else codecs.encode(ffmpeg, wav, Path(tmp), codec)
                    audio = decode(path)
                cache_signal(target, audio.mono(), params, settings, base)


def cache_signal(
    target: Path, signal: Any, params: Any, settings: Settings, base: Diarizer
) -> None:
    """Run the diarizer once on ``signal`` and pickle its models' outputs to ``target``."""
    store = {_key(signal): Cached(signal)}
    diarizer = cached_diarizer(params, settings.model_cache, store, base)
    diarizer.process(DiarizationInput(audio=AudioBuffer(signal[None], 16000)))
    with target.open("wb") as fh:
        pickle.dump(store[_key(signal)], fh)
    print(f"cached {target.name}", flush=True)


@dataclass(frozen=True)
class Score:
    """One clip's DER components (seconds) and the speakers found."""

    confusion: float
    miss: float
    fa: float
    total: float
    speakers: int
    truth: int


Entry = tuple[str, str, str]  # (folder, clip, codec)
C = TypeVar("C")  # a candidate setting (a tuple of values)


class _Unpickler(pickle.Unpickler):
    """Reads entries written by this script whether it ran as ``__main__`` or imported."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Cached":
            return Cached
        return super().find_class(module, name)


def load_cache(folder: Path) -> dict[Entry, Cached]:
    out: dict[Entry, Cached] = {}
    for path in sorted(folder.glob("*.pkl")):
        data, clip, codec = path.name.split(".")[:3]
        with path.open("rb") as fh:
            out[(data, clip, codec)] = _Unpickler(fh).load()
    return out


def scorer(args: argparse.Namespace) -> Any:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from diarization import load_references, to_annotation

    refs: dict[str, Any] = {}
    uems: dict[str, Any] = {}
    for folder in (args.ami, args.call):
        r, u = load_references(folder)
        refs.update(r)
        uems.update(u)

    def score(clip: str, result: Any, duration: float) -> Score:
        ref = refs[clip]
        uem = uems.get(clip) or Timeline([Segment(0.0, duration)], uri=clip)
        metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
        comp = metric(ref, to_annotation(result, clip), uem=uem, detailed=True)
        return Score(
            comp["confusion"],
            comp["missed detection"],
            comp["false alarm"],
            comp["total"],
            len(result.speakers),
            len(ref.crop(uem).labels()),
        )

    return score


def evaluate(
    store: dict[Entry, Cached],
    entries: Iterable[Entry],
    params: dict[str, Any],
    base: Diarizer,
    score: Any,
) -> dict[Entry, Score]:
    """Every entry diarized with ``params`` on its cached model outputs (``base``
    supplies the loaded CAM++ pooling head)."""
    by_key = {_key(c.signal): c for c in store.values()}
    diarizer = cached_diarizer(params, base.cache_dir, by_key, base)
    out: dict[Entry, Score] = {}
    for entry in entries:
        signal = store[entry].signal
        result = diarizer.process(DiarizationInput(audio=AudioBuffer(signal[None], 16000)))
        out[entry] = score(entry[1], result, len(signal) / 16000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = HERE.parent / "shared/data/diarization"
    parser.add_argument("--ami", type=Path, default=shared / "ami")
    parser.add_argument("--call", type=Path, default=shared / "callsample")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "callannotate-tune"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="fill the cache (slow)")
    parser.add_argument(
        "--thresholds",
        default="0.65,0.7,0.75,0.8,0.85,0.9",
        help="narrowband_threshold candidates",
    )
    parser.add_argument(
        "--count-biases", default="-0.05,0.05,0.15", help="narrowband_count_bias candidates"
    )
    parser.add_argument(
        "--call-limit", type=float, default=5.4, help="largest call-sample WAV DER allowed (%%)"
    )
    parser.add_argument(
        "--no-call-check", action="store_true", help="choose on the AMI clips alone"
    )
    args = parser.parse_args()
    if args.build:
        build(args)
        return
    tune(args)


def _der(scores: Iterable[Score]) -> tuple[float, float, float, float, int]:
    """Total DER and its parts (%) over ``scores``, and how many got the count right."""
    listed = list(scores)
    total = max(sum(s.total for s in listed), 1e-9)
    conf = 100 * sum(s.confusion for s in listed) / total
    miss = 100 * sum(s.miss for s in listed) / total
    fa = 100 * sum(s.fa for s in listed) / total
    return conf + miss + fa, miss, fa, conf, sum(s.speakers == s.truth for s in listed)


def _errors(scores: Iterable[Score]) -> float:
    return sum(s.confusion + s.miss + s.fa for s in scores)


def leave_one_clip_out(
    grid: dict[C, dict[Entry, Score]],
    allowed: list[C],
    entries: Iterable[Entry],
    narrow: dict[Entry, bool],
    before: dict[Entry, Score],
) -> tuple[dict[Entry, Score], list[tuple[str, C]], C, dict[Entry, Score]]:
    """Choose among ``allowed`` settings (keys of ``grid``) by leaving one AMI clip out.

    Each fold picks the setting with the least error over the other clips' narrowband runs
    (ties: the first in grid order) and scores the held-out clip with it; runs that are not
    narrowband keep their ``before`` score. Returns the held-out scores of the AMI runs, the
    choice per fold ``(clip, setting)``, the choice on all clips and every entry's score with
    that choice (the in-sample figures, and the call sample's)."""
    entries = list(entries)
    ami_clips = sorted({e[1] for e in entries if e[0] == "ami"})

    def pick(clips: list[str]) -> C:
        return min(
            allowed,
            key=lambda c: _errors(s for e, s in grid[c].items() if e[0] == "ami" and e[1] in clips),
        )

    held: dict[Entry, Score] = {}
    folds: list[tuple[str, C]] = []
    for clip in ami_clips:
        choice = pick([c for c in ami_clips if c != clip])
        folds.append((clip, choice))
        for e in entries:
            if e[0] == "ami" and e[1] == clip:
                held[e] = grid[choice][e] if narrow[e] else before[e]
    overall = pick(ami_clips)
    inside = {e: grid[overall][e] if narrow[e] else before[e] for e in entries}
    return held, folds, overall, inside


def tune(args: argparse.Namespace) -> None:
    store = load_cache(args.cache_dir)
    if not store:
        sys.exit(f"no cache in {args.cache_dir}: run with --build first")
    settings = Settings()
    params = step_config(settings, "diarize")
    params.pop("narrowband_threshold", None)
    params.pop("narrowband_count_bias", None)
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    score = scorer(args)
    codec_names = sorted({e[2] for e in store}, key=lambda c: (c != "wav", c))
    narrow = {e: base.narrowband(c.signal) for e, c in store.items()}
    print(f"cache: {args.cache_dir} ({len(store)} clip/codec runs)")
    print("upper band (4.3-7.6 kHz) relative to 0.3-3.4 kHz, dB, min..max over the clips;")
    print(f"narrowband below {base.narrowband_db} dB:")
    for codec in codec_names:
        for data in ("ami", "callsample"):
            levels = [
                upper_band_db(c.signal) for e, c in store.items() if e[2] == codec and e[0] == data
            ]
            flags = sum(narrow[e] for e in store if e[2] == codec and e[0] == data)
            if levels:
                print(
                    f"  {codec:<8} {data:<10} {min(levels):7.1f} .. {max(levels):6.1f}  "
                    f"narrowband {flags}/{len(levels)}"
                )
    before = evaluate(store, store, params, base, score)
    combos = list(
        itertools.product(
            [float(v) for v in args.thresholds.split(",")],
            [float(v) for v in args.count_biases.split(",")],
        )
    )
    narrow_entries = [e for e in store if narrow[e]]
    grid: dict[tuple[float, float], dict[Entry, Score]] = {}
    for threshold, bias in combos:
        tuned = {**params, "narrowband_threshold": threshold, "narrowband_count_bias": bias}
        grid[(threshold, bias)] = evaluate(store, narrow_entries, tuned, base, score)
    # The call sample (itself band-limited: every run of it is narrowband) is a constraint,
    # not a target: combinations that make its WAV worse than --call-limit, or give it the
    # wrong speaker count under any codec, are not candidates.
    allowed = []
    for combo in combos:
        call = [s for e, s in grid[combo].items() if e[0] == "callsample"]
        call_wav = [s for e, s in grid[combo].items() if e[0] == "callsample" and e[2] == "wav"]
        if args.no_call_check or (
            (not call_wav or _der(call_wav)[0] <= args.call_limit)
            and all(s.speakers == s.truth for s in call)
        ):
            allowed.append(combo)
    print(f"candidates keeping the call sample's WAV DER <= {args.call_limit} % and its")
    print(f"speaker count under every codec: {len(allowed)} of {len(combos)}")
    allowed = allowed or combos

    held, folds, overall, inside = leave_one_clip_out(grid, allowed, store, narrow, before)
    choices = [f"{clip}: {choice[0]:.2f}/{choice[1]:+.2f}" for clip, choice in folds]
    print("choice per fold (held-out clip: narrowband_threshold/narrowband_count_bias):")
    for n in range(0, len(choices), 4):
        print("  " + ", ".join(choices[n : n + 4]))
    print(f"chosen on all 12 AMI clips: {overall[0]:.2f}/{overall[1]:+.2f}")
    print("")
    print("narrowband-run error (AMI, all codecs pooled, % of their reference speech) per")
    print("combination (rows: threshold, columns: count_bias; x: not allowed by the call):")
    biases = sorted({c[1] for c in combos})
    print("        " + " ".join(f"{b:+7.2f}" for b in biases))
    for threshold in sorted({c[0] for c in combos}):
        cells = []
        for bias in biases:
            scores = [s for e, s in grid[(threshold, bias)].items() if e[0] == "ami"]
            mark = " " if (threshold, bias) in allowed else "x"
            cells.append(f"{_der(scores)[0]:6.1f}{mark}")
        print(f"  {threshold:5.2f} " + " ".join(cells))
    for data, title, table in (
        ("ami", "AMI clips: held-out (leave one clip out)", held),
        ("callsample", "call sample (a constraint only; the all-clips choice)", inside),
    ):
        print("")
        print(f"{title}; DER total over clips, collar 0, overlap scored, Diarizer on the")
        print("decoded file (as --direct):")
        print(
            f"  {'codec':<8} {'before':>7} {'vs WAV':>7} {'after':>7} {'vs WAV':>7} "
            f"{'miss':>6} {'fa':>6} {'conf':>6} {'right':>6}"
        )
        wav_before = _der(s for e, s in before.items() if e[0] == data and e[2] == "wav")[0]
        wav_after = _der(s for e, s in table.items() if e[0] == data and e[2] == "wav")[0]
        for codec in codec_names:
            old = _der(s for e, s in before.items() if e[0] == data and e[2] == codec)
            new = _der(s for e, s in table.items() if e[0] == data and e[2] == codec)
            print(
                f"  {codec:<8} {old[0]:7.1f} {old[0] - wav_before:+7.1f} {new[0]:7.1f} "
                f"{new[0] - wav_after:+7.1f} {new[1]:6.1f} {new[2]:6.1f} {new[3]:6.1f} "
                f"{new[4]:6d}"
            )


if __name__ == "__main__":
    main()
