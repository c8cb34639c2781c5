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

Every run goes through the product's own entry point, ``callannotate.pipeline.annotate``
with the steps VAD and diarize, on the FILE (decoded as the CLI and the API decode it);
``--direct`` calls the ``Diarizer`` on the decoded audio instead (what ``--sweep`` uses, so
it can memoise the segmentation). Both give the same figures on the shared clips except
trn01 (2 % speech), where the product's VAD finds no speech and skips the diarize step
(100 %, all missed; the Diarizer alone also adds false alarms, 143.9 %): AMI total 19.9 %
through ``annotate``, 20.0 % with ``--direct``.

``--codecs`` also scores every clip after re-encoding it with ffmpeg (into a temporary
folder) through G.711 mu-law 8 kHz, GSM, AMR-NB (or its stand-in when this ffmpeg has no
AMR encoder; the output says so), Opus 16 kbit/s and MP3 24 (ffmpeg's default for 16 kHz
mono), 32 and 64 kbit/s, and prints DER and speakers found per codec next to the WAV
(``benchmarks/audio_codecs.py``). With ``--shifts`` each codec's figure is the mean over
the delays too (the delay is applied before encoding). ``--only-codecs g711u,gsm`` limits
the run to those codecs (by their short names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import yaml

import audio_codecs as codecs
from anchors import side_by_side
from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationInput, Diarizer
from callannotate.pipeline.registry import preload, step_config
from callannotate.pipeline.types import AudioBuffer, Turn


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


class HasTurns(Protocol):
    @property
    def turns(self) -> Sequence[Turn]: ...


def to_annotation(result: HasTurns, uri: str, delay_s: float = 0.0) -> Any:
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


@dataclass(frozen=True)
class Outcome:
    """One clip's diarization: turns, speakers found, seconds spent in the diarize step."""

    turns: list[Turn]
    speakers: int
    diarize_s: float


class Backend(Protocol):
    def __call__(self, path: Path, hints: dict[str, Any]) -> Outcome: ...


def annotate_backend(settings: Settings) -> Backend:
    """Diarize a file the way the CLI and the API do: ``annotate(path, steps=[vad, diarize])``."""
    from callannotate.pipeline import annotate
    from callannotate.pipeline.types import AnnotateOptions, Step

    def diarize(path: Path, hints: dict[str, Any]) -> Outcome:
        options = AnnotateOptions(steps=[Step.VAD, Step.DIARIZE], **hints)
        result = annotate(path, options, settings=settings)
        seconds = sum(s.seconds or 0.0 for s in result.steps if s.name == Step.DIARIZE.value)
        return Outcome(list(result.turns), len(result.speakers), seconds)

    return diarize


def direct_backend(diarizer: Diarizer) -> Backend:
    """Decode the file and call the ``Diarizer`` itself (used by ``--sweep``)."""

    def diarize(path: Path, hints: dict[str, Any]) -> Outcome:
        audio = decode(path)
        t0 = time.perf_counter()
        result = diarizer.process(DiarizationInput(audio=audio, **hints))
        return Outcome(list(result.turns), result.num_speakers, time.perf_counter() - t0)

    return diarize


def prepare(
    wav: Path, scratch: Path, delay_s: float, codec: codecs.Codec | None, ffmpeg: str
) -> Path:
    """The file to diarize: ``wav`` delayed by ``delay_s`` and encoded with ``codec``."""
    source = wav
    if delay_s > 0:
        source = scratch / f"{wav.stem}.delayed.wav"
        audio = delayed(decode(wav), delay_s)
        sf.write(source, audio.samples.T, audio.sample_rate, subtype="FLOAT")
    if codec is None:
        return source
    return codecs.encode(ffmpeg, source, scratch, codec)


def run(
    backend: Backend,
    folder: Path,
    hints: dict[str, Any],
    verbose: bool = True,
    oracle: bool = False,
    delay_s: float = 0.0,
    codec: codecs.Codec | None = None,
    ffmpeg: str = "ffmpeg",
) -> dict[str, Any]:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    refs, uems = load_references(folder)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    audio_s = 0.0
    compute_s = 0.0
    diarize_s = 0.0
    cpu_s = 0.0
    right = 0
    found: list[int] = []
    wavs = sorted(folder.glob("*.wav"))
    if verbose:
        print(
            f"{'clip':<10} {'DER%':>6} {'miss%':>6} {'fa%':>6} {'conf%':>6} "
            f"{'spk':>4} {'ref':>4} {'RTF':>6}"
        )
    with tempfile.TemporaryDirectory(prefix="diarization-bench-") as tmp:
        for wav in wavs:
            uri = wav.stem
            if uri not in refs:
                print(f"{uri}: no reference, skipped", file=sys.stderr)
                continue
            duration = sf.info(wav).duration
            path = prepare(wav, Path(tmp), delay_s, codec, ffmpeg)
            ref = refs[uri]
            uem = uems.get(uri) or Timeline([Segment(0.0, duration)], uri=uri)
            n_ref = len(ref.crop(uem).labels())
            if oracle:
                hints = {**hints, "num_speakers": max(n_ref, 1)}
            t0 = time.perf_counter()
            c0 = time.process_time()
            outcome = backend(path, hints)
            elapsed = time.perf_counter() - t0
            cpu_s += time.process_time() - c0
            audio_s += duration + delay_s
            compute_s += elapsed
            diarize_s += outcome.diarize_s
            comp = metric(ref, to_annotation(outcome, uri, delay_s), uem=uem, detailed=True)
            right += int(outcome.speakers == n_ref)
            found.append(outcome.speakers)
            if verbose:
                total = max(comp["total"], 1e-9)
                print(
                    f"{uri:<10} {100 * comp['diarization error rate']:6.1f} "
                    f"{100 * comp['missed detection'] / total:6.1f} "
                    f"{100 * comp['false alarm'] / total:6.1f} "
                    f"{100 * comp['confusion'] / total:6.1f} "
                    f"{outcome.speakers:4d} {n_ref:4d} "
                    f"{outcome.diarize_s / (duration + delay_s):6.3f}"
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
        "found": found,
        "rtf": diarize_s / max(audio_s, 1e-9),
        "run_rtf": compute_s / max(audio_s, 1e-9),
        "cpu_rtf": cpu_s / max(audio_s, 1e-9),
    }


def delays_of(args: argparse.Namespace, step_s: float) -> list[float]:
    """The input delays of a ``--shifts`` run (the first is 0)."""
    shift = args.shift_s if args.shift_s is not None else step_s / args.shifts
    return [k * shift for k in range(max(1, args.shifts))]


def shifted_summary(
    backend: Backend,
    folder: Path,
    hints: dict[str, Any],
    args: argparse.Namespace,
    first: dict[str, Any],
    step_s: float,
    codec: codecs.Codec | None = None,
    ffmpeg: str = "ffmpeg",
) -> tuple[str, list[dict[str, Any]]]:
    """Total DER and speakers right over ``args.shifts`` delays of the input (the first,
    undelayed run is ``first``)."""
    delays = delays_of(args, step_s)
    runs = [first]
    for delay in delays[1:]:
        runs.append(
            run(
                backend,
                folder,
                hints,
                verbose=False,
                oracle=args.oracle,
                delay_s=delay,
                codec=codec,
                ffmpeg=ffmpeg,
            )
        )
    ders = [r["der"] for r in runs]
    rights = [r["right"] for r in runs]
    line = (
        f"over {len(runs)} input delays (0-{delays[-1]:.2f} s): DER mean "
        f"{np.mean(ders):.1f} % (min {min(ders):.1f}, max {max(ders):.1f}; "
        f"{' '.join(f'{d:.1f}' for d in ders)}); speakers right on {np.mean(rights):.1f}/"
        f"{int(first['clips'])} clips on average"
    )
    return line, runs


def codec_table(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """Per codec: mean total DER (and its parts) over the runs, change against the first row
    (the WAV), speakers right and the speaker count found on each clip (first run)."""
    base = float(np.mean([r["der"] for r in rows[0][1]]))
    lines = [
        f"{'codec':<46} {'DER%':>6} {'vs WAV':>7} {'miss%':>6} {'fa%':>6} {'conf%':>6} "
        f"{'right':>6}  speakers found per clip"
    ]
    for title, runs in rows:
        der = float(np.mean([r["der"] for r in runs]))
        lines.append(
            f"{title:<46} {der:6.1f} {der - base:+7.1f} "
            f"{np.mean([r['miss'] for r in runs]):6.1f} "
            f"{np.mean([r['fa'] for r in runs]):6.1f} "
            f"{np.mean([r['conf'] for r in runs]):6.1f} "
            f"{np.mean([r['right'] for r in runs]):6.1f}  "
            f"{' '.join(str(n) for n in runs[0]['found'])}"
        )
    return lines


def anchor_lines(data_name: str, figures: dict[str, Any]) -> list[str]:
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


def settings_with(settings: Settings, params: dict[str, Any], scratch: Path) -> Settings:
    """``settings`` whose models file is a copy of the configured one with the ``diarize``
    section replaced by ``params`` (how ``--set`` reaches the ``annotate`` entry point)."""
    models = yaml.safe_load(settings.models_config.read_text(encoding="utf-8")) or {}
    plain = json.loads(json.dumps(params, default=str))  # paths and the like as text
    path = scratch / "models.yaml"
    path.write_text(yaml.safe_dump({**models, "diarize": plain}, sort_keys=False))
    return settings.model_copy(update={"models_config": path})


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
    parser.add_argument(
        "--codecs",
        action="store_true",
        help="also score every clip re-encoded through telephone / streaming codecs (ffmpeg)",
    )
    parser.add_argument(
        "--only-codecs",
        default=None,
        metavar="NAME,NAME",
        help="with --codecs: only these (g711u, gsm, amrnb, g723_1, opus16, mp3_24, ...)",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="call the Diarizer on decoded audio instead of annotate() on the file",
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
    if args.cache is not None:
        settings = settings.model_copy(update={"model_cache_dir": args.cache})
    settings = settings.model_copy(
        update={"workers": settings.workers.model_copy(update={"threads": args.threads})}
    )
    hints = {
        "num_speakers": args.num_speakers,
        "min_speakers": args.min_speakers,
        "max_speakers": args.max_speakers,
    }
    hints = {k: v for k, v in hints.items() if v is not None}
    sweep: list[tuple[str, Any]] = [("", None)]
    direct = args.direct or bool(args.sweep)
    if args.sweep:
        key, _, values = args.sweep.partition("=")
        sweep = [(key, _value(v)) for v in values.split(",")]
        print("sweep: segmentations and embeddings are memoised, so RTF is only meaningful")
        print("for the first value of the sweep; the Diarizer is called directly")
    ffmpeg = codecs.ffmpeg_binary() if args.codecs else "ffmpeg"
    chosen: list[codecs.Codec] = []
    if args.codecs:
        chosen, notes = codecs.plan(codecs.available_encoders(ffmpeg))
        for note in notes:
            print(f"codecs: {note}")
        if args.only_codecs:
            names = set(args.only_codecs.split(","))
            chosen = [c for c in chosen if c.name in names]
            print(f"codecs: only {', '.join(c.name for c in chosen)}")

    scratch = Path(tempfile.mkdtemp(prefix="diarization-bench-config-"))
    t0 = time.perf_counter()
    base = Diarizer(params, cache, threads=args.threads)
    if direct:
        base.ensure_loaded()
        print("entry point: Diarizer.process on decoded audio (--direct)")
    else:
        settings = settings_with(settings, params, scratch)
        preload(settings, ["vad", "embedding", "diarize"])
        print("entry point: callannotate.pipeline.annotate(file, steps=[vad, diarize])")
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
        backend = direct_backend(diarizer) if direct else annotate_backend(settings)
        figures = run(backend, folder, hints, verbose=not (key or args.quiet), oracle=args.oracle)
        print(
            f"TOTAL DER {figures['der']:.1f} % (miss {figures['miss']:.1f}, "
            f"fa {figures['fa']:.1f}, conf {figures['conf']:.1f}); speakers right on "
            f"{figures['right']}/{figures['clips']} clips; RTF {figures['rtf']:.3f} "
            f"({args.threads} threads, diarize step); whole run incl. decode and VAD "
            f"{figures['run_rtf']:.3f}; CPU time per audio second {figures['cpu_rtf']:.3f} "
            f"(all threads; wall-clock RTF is inflated when the machine is shared)"
        )
        runs = [figures]
        if args.shifts > 1:
            line, runs = shifted_summary(backend, folder, hints, args, figures, diarizer.step)
            print(line)
        if not key and not args.oracle and not hints:
            for line in anchor_lines(folder.name, figures):
                print(line)
        if chosen:
            rows = [("WAV (as stored)", runs)]
            for codec in chosen:
                first = run(backend, folder, hints, False, args.oracle, codec=codec, ffmpeg=ffmpeg)
                coded = [first]
                if args.shifts > 1:
                    coded = shifted_summary(
                        backend, folder, hints, args, first, diarizer.step, codec, ffmpeg
                    )[1]
                rows.append((codec.title, coded))
                print(f"codec {codec.name}: DER {np.mean([r['der'] for r in coded]):.1f} %")
            what = f"mean over {args.shifts} delays" if args.shifts > 1 else "delay 0"
            print(f"DER per codec ({what}; total over clips, collar 0, overlap scored):")
            for line in codec_table(rows):
                print(line)
    shutil.rmtree(scratch, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB (whole process, models included)")


if __name__ == "__main__":
    main()
