"""Diarization benchmark: DER (pyannote.metrics), speakers found, RTF and peak memory.

    python benchmarks/diarization.py --data ../shared/data/diarization/ami
    python benchmarks/diarization.py --data ../shared/data/diarization/callsample

The folder holds ``*.wav`` files, one or more ``*.rttm`` references (the file URI is the
wav stem) and optionally ``*.uem`` scoring regions. Scoring: ``DiarizationErrorRate(
collar=0.0, skip_overlap=False)`` over the UEM (whole reference extent without one), summed
over clips (total errors / total reference speech). RTF excludes model loading. Parameters
of the ``diarize`` step come from ``config/models.yaml``; override them with
``--set key=value`` or scan one with ``--sweep key=v1,v2,...`` (same clips: tuning figures).

``--shifts N`` repeats the evaluation N times with the audio delayed by 0, d, 2d, ...
seconds of leading silence (``--shift-s d``, by default the window step / N, so the delays
cover the positions of the window grid; the output is moved back before scoring) and
prints the mean, min and max total DER. On 30 s clips the figure depends on where the
analysis windows happen to fall (at a 1.5 s window step the AMI total ranged 22.2-25.4 %
over 8 delays 0.1875 s apart), so compare settings on the mean, not on one run.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anchors import side_by_side
from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationInput, DiarizationResult, Diarizer
from callannotate.pipeline.registry import step_config
from callannotate.pipeline.types import AudioBuffer


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


class _MemoSegmentation:
    """Sweep helper: the segmentation of a signal is computed once per window/step."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.memo: dict[tuple[str, float, float], Any] = {}

    def segment(self, signal: Any, window_s: float, step_s: float, **kwargs: Any) -> Any:
        key = (hashlib.sha1(signal.tobytes()).hexdigest(), window_s, step_s)
        if key not in self.memo:
            self.memo[key] = self.model.segment(signal, window_s=window_s, step_s=step_s, **kwargs)
        return self.memo[key]


class _MemoEmbedder:
    """Sweep helper: each distinct waveform is embedded once."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.memo: dict[str, Any] = {}

    def embed(self, wave: Any) -> Any:
        key = hashlib.sha1(wave.tobytes()).hexdigest()
        if key not in self.memo:
            self.memo[key] = self.embedder.embed(wave)
        return self.memo[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)


def load_references(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from pyannote.core import Annotation, Segment, Timeline

    refs: dict[str, Any] = {}
    uems: dict[str, Any] = {}
    for rttm in sorted(folder.glob("*.rttm")):
        for line in rttm.read_text().splitlines():
            parts = line.split()
            if len(parts) < 8 or parts[0] != "SPEAKER":
                continue
            uri, start, dur, label = parts[1], float(parts[3]), float(parts[4]), parts[7]
            ann = refs.setdefault(uri, Annotation(uri=uri))
            ann[Segment(start, start + dur), len(ann)] = label
    for uem in sorted(folder.glob("*.uem")):
        for line in uem.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4:
                tl = uems.setdefault(parts[0], Timeline(uri=parts[0]))
                tl.add(Segment(float(parts[2]), float(parts[3])))
    return refs, uems


def to_annotation(result: DiarizationResult, uri: str, delay_s: float = 0.0) -> Any:
    """The turns as a pyannote Annotation, moved ``delay_s`` seconds earlier."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for i, turn in enumerate(result.turns):
        start, end = max(0.0, turn.start - delay_s), turn.end - delay_s
        if end > start:
            ann[Segment(start, end), i] = turn.speaker
    return ann


def delayed(audio: AudioBuffer, delay_s: float) -> AudioBuffer:
    """``audio`` after ``delay_s`` seconds of silence."""
    pad = round(delay_s * audio.sample_rate)
    if pad <= 0:
        return audio
    silence = np.zeros((audio.channels, pad), dtype=np.float32)
    return AudioBuffer(np.concatenate([silence, audio.samples], axis=1), audio.sample_rate)


def run(
    diarizer: Diarizer,
    folder: Path,
    hints: dict[str, Any],
    verbose: bool = True,
    oracle: bool = False,
    delay_s: float = 0.0,
) -> dict[str, float]:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    refs, uems = load_references(folder)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    audio_s = 0.0
    compute_s = 0.0
    cpu_s = 0.0
    right = 0
    wavs = sorted(folder.glob("*.wav"))
    if verbose:
        print(
            f"{'clip':<10} {'DER%':>6} {'miss%':>6} {'fa%':>6} {'conf%':>6} "
            f"{'spk':>4} {'ref':>4} {'RTF':>6}"
        )
    for wav in wavs:
        uri = wav.stem
        if uri not in refs:
            print(f"{uri}: no reference, skipped", file=sys.stderr)
            continue
        audio = delayed(decode(wav), delay_s)
        ref = refs[uri]
        uem = uems.get(uri) or Timeline([Segment(0.0, audio.duration - delay_s)], uri=uri)
        n_ref = len(ref.crop(uem).labels())
        if oracle:
            hints = {**hints, "num_speakers": max(n_ref, 1)}
        t0 = time.perf_counter()
        c0 = time.process_time()
        result = diarizer.process(DiarizationInput(audio=audio, **hints))
        elapsed = time.perf_counter() - t0
        cpu_s += time.process_time() - c0
        audio_s += audio.duration
        compute_s += elapsed
        comp = metric(ref, to_annotation(result, uri, delay_s), uem=uem, detailed=True)
        right += int(result.num_speakers == n_ref)
        if verbose:
            total = max(comp["total"], 1e-9)
            print(
                f"{uri:<10} {100 * comp['diarization error rate']:6.1f} "
                f"{100 * comp['missed detection'] / total:6.1f} "
                f"{100 * comp['false alarm'] / total:6.1f} "
                f"{100 * comp['confusion'] / total:6.1f} "
                f"{result.num_speakers:4d} {n_ref:4d} {elapsed / audio.duration:6.3f}"
            )
    detail = metric[:]
    total = max(detail["total"], 1e-9)
    return {
        "der": 100 * abs(metric),
        "miss": 100 * detail["missed detection"] / total,
        "fa": 100 * detail["false alarm"] / total,
        "conf": 100 * detail["confusion"] / total,
        "right": right,
        "clips": len(wavs),
        "rtf": compute_s / max(audio_s, 1e-9),
        "cpu_rtf": cpu_s / max(audio_s, 1e-9),
    }


def shifted_summary(
    diarizer: Diarizer,
    folder: Path,
    hints: dict[str, Any],
    args: argparse.Namespace,
    first: dict[str, float],
) -> str:
    """Total DER and speakers right over ``args.shifts`` delays of the input (the first,
    undelayed run is ``first``)."""
    shift = args.shift_s if args.shift_s is not None else diarizer.step / args.shifts
    runs = [first]
    for k in range(1, args.shifts):
        runs.append(
            run(diarizer, folder, hints, verbose=False, oracle=args.oracle, delay_s=k * shift)
        )
    ders = [r["der"] for r in runs]
    rights = [r["right"] for r in runs]
    return (
        f"over {len(runs)} input delays (0-{(len(runs) - 1) * shift:.2f} s): DER mean "
        f"{np.mean(ders):.1f} % (min {min(ders):.1f}, max {max(ders):.1f}; "
        f"{' '.join(f'{d:.1f}' for d in ders)}); speakers right on {np.mean(rights):.1f}/"
        f"{int(first['clips'])} clips on average"
    )


def anchor_lines(data_name: str, figures: dict[str, float]) -> list[str]:
    """Our figures beside the alternatives' (``anchors.py``) on the anchor's own folders."""
    if data_name == "ami":
        return [
            side_by_side("der_ami", figures["der"]),
            side_by_side("count_ami", figures["right"]),
            side_by_side("rtf_ami", figures["rtf"]),
        ]
    if data_name == "callsample":
        return [side_by_side("der_call", figures["der"])]
    return []


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared/data/diarization/ami")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sweep", default=None, metavar="KEY=V1,V2")
    parser.add_argument("--num-speakers", type=int, default=None)
    parser.add_argument("--min-speakers", type=int, default=None)
    parser.add_argument("--max-speakers", type=int, default=None)
    parser.add_argument(
        "--oracle", action="store_true", help="give each clip its reference speaker count"
    )
    parser.add_argument("--quiet", action="store_true", help="totals only")
    parser.add_argument(
        "--shifts", type=int, default=1, help="also score with the audio delayed N-1 times"
    )
    parser.add_argument(
        "--shift-s", type=float, default=None, help="delay step (default: window step / N)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="model cache directory")
    args = parser.parse_args()

    folder: Path = args.data.resolve()
    if not folder.is_dir():
        sys.exit(f"no data folder {folder}")
    print(f"data: {folder}")
    settings = Settings()
    params = step_config(settings, "diarize")
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = _value(value)
    cache = args.cache or settings.model_cache
    hints = {
        "num_speakers": args.num_speakers,
        "min_speakers": args.min_speakers,
        "max_speakers": args.max_speakers,
    }
    sweep: list[tuple[str, Any]] = [("", None)]
    if args.sweep:
        key, _, values = args.sweep.partition("=")
        sweep = [(key, _value(v)) for v in values.split(",")]
        print("sweep: segmentations and embeddings are memoised, so RTF is only meaningful")
        print("for the first value of the sweep")

    t0 = time.perf_counter()
    base = Diarizer(params, cache, threads=args.threads)
    base.ensure_loaded()
    print(f"models loaded in {time.perf_counter() - t0:.1f} s (not counted in RTF)")
    print(f"speaker embeddings: {base.embeddings}")
    if args.sweep:
        base._segmentation = _MemoSegmentation(base._segmentation)  # type: ignore[assignment]
        base.use_embedder(_MemoEmbedder(base._embedder))
    for key, value in sweep:
        diarizer = base
        if key:
            diarizer = Diarizer({**params, key: value}, cache, threads=args.threads)
            diarizer._segmentation = base._segmentation
            diarizer._counter = base._counter if diarizer.count_weight < 1.0 else None
            diarizer.use_embedder(base._embedder)
            diarizer._frame_embedder = base._frame_embedder
            diarizer._loaded = True
            print(f"--- {key}={value}")
        figures = run(diarizer, folder, hints, verbose=not (key or args.quiet), oracle=args.oracle)
        print(
            f"TOTAL DER {figures['der']:.1f} % (miss {figures['miss']:.1f}, "
            f"fa {figures['fa']:.1f}, conf {figures['conf']:.1f}); speakers right on "
            f"{figures['right']}/{figures['clips']} clips; RTF {figures['rtf']:.3f} "
            f"({args.threads} threads); CPU time per audio second {figures['cpu_rtf']:.3f} "
            f"(all threads; wall-clock RTF is inflated when the machine is shared)"
        )
        if args.shifts > 1:
            print(shifted_summary(diarizer, folder, hints, args, figures))
        if not key and not args.oracle and not any(hints.values()):
            for line in anchor_lines(folder.name, figures):
                print(line)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB (whole process, models included)")


if __name__ == "__main__":
    main()
