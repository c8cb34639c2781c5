"""Voice activity detection: speed and frame-level agreement with reference speech.

Reference speech is the union of all speakers' segments in the folder's RTTM files, scored
inside the UEM when a ``*.uem`` file is present (otherwise over the whole file), on 10 ms
frames. Figures: precision / recall / F1 of speech frames, miss rate and false-alarm rate
(both as a share of reference speech, the detection-error convention), and the VAD's speed
in milliseconds per second of audio (inference + post-processing, model load excluded).

    .venv/bin/python benchmarks/vad.py                     # AMI clips + call sample
    .venv/bin/python benchmarks/vad.py --data DIR --model all --per-clip

A folder is laid out like ``../shared/data/diarization/ami``: audio files, ``*.rttm`` and an
optional ``*.uem``. Timings are wall-clock on a shared machine: treat them as rough.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.vad import SpeechRegion, VoiceActivityDetector
from callannotate.pipeline.types import AudioBuffer

RES = 0.01  # scoring resolution, seconds
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus"}
MODELS: dict[str, dict[str, str]] = {
    "silero-6.2-seq": {
        "package": "silero_vad",
        "file": "data/silero_vad_16k_sequence.onnx",
        "sha256": "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
    },
    "silero-6.2": {
        "package": "silero_vad",
        "file": "data/silero_vad.onnx",
        "sha256": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    },
    "faster-whisper-v6": {
        "package": "faster_whisper",
        "file": "assets/silero_vad_v6.onnx",
        "sha256": "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
    },
}


def default_params() -> dict[str, Any]:
    """The ``vad`` section of ``config/models.yaml``."""
    from callannotate.config import Settings
    from callannotate.pipeline.registry import step_config

    return step_config(Settings(), "vad")


def shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


# ----------------------------------------------------------------------------- references


@dataclass
class Clip:
    uri: str
    path: Path
    speech: list[tuple[float, float]] = field(default_factory=list)
    uem: list[tuple[float, float]] = field(default_factory=list)


def read_rttm(files: Iterable[Path]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "SPEAKER":
                start, dur = float(parts[3]), float(parts[4])
                out.setdefault(parts[1], []).append((start, start + dur))
    return out


def read_uem(files: Iterable[Path]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4:
                out.setdefault(parts[0], []).append((float(parts[2]), float(parts[3])))
    return out


def load_folder(folder: Path) -> list[Clip]:
    """Audio files of ``folder`` that have reference speech in its RTTM files."""
    ref = read_rttm(sorted(folder.glob("*.rttm")))
    uem = read_uem(sorted(folder.glob("*.uem")))
    clips = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in AUDIO_EXT and path.stem in ref:
            clips.append(Clip(path.stem, path, ref[path.stem], uem.get(path.stem, [])))
    return clips


# ----------------------------------------------------------------------------- scoring


def mask(segments: Iterable[tuple[float, float]], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for s, e in segments:
        m[max(0, round(s / RES)) : max(0, round(e / RES))] = True
    return m


@dataclass
class Counts:
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    ref: float = 0.0
    audio_s: float = 0.0
    vad_s: float = 0.0

    def add(self, other: Counts) -> None:
        for k in ("tp", "fp", "fn", "ref", "audio_s", "vad_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def figures(self) -> dict[str, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {
            "precision": p,
            "recall": r,
            "f1": f1,
            "miss": self.fn / self.ref if self.ref else 0.0,
            "false_alarm": self.fp / self.ref if self.ref else 0.0,
            "ms_per_s": 1000 * self.vad_s / self.audio_s if self.audio_s else 0.0,
        }


def score(clip: Clip, hyp: list[SpeechRegion], duration: float) -> Counts:
    n = round(duration / RES) + 1
    ref_m = mask(clip.speech, n)
    hyp_m = mask([(r.start, r.end) for r in hyp], n)
    scored = mask(clip.uem, n) if clip.uem else np.ones(n, dtype=bool)
    ref_m &= scored
    hyp_m &= scored
    return Counts(
        tp=float(np.sum(ref_m & hyp_m)) * RES,
        fp=float(np.sum(hyp_m & ~ref_m)) * RES,
        fn=float(np.sum(ref_m & ~hyp_m)) * RES,
        ref=float(np.sum(ref_m)) * RES,
        audio_s=duration,
    )


def run_vad(vad: VoiceActivityDetector, buffer: AudioBuffer) -> tuple[list[SpeechRegion], float]:
    """Speech regions of the channel mix and the seconds the VAD took."""
    mono = AudioBuffer(buffer.mono()[None, :], buffer.sample_rate)
    t0 = time.perf_counter()
    result = vad.process(mono)
    return result.regions[0], time.perf_counter() - t0


def evaluate(
    vad: VoiceActivityDetector,
    clips: list[Clip],
    transform: Callable[[AudioBuffer], AudioBuffer] | None = None,
    per_clip: bool = False,
) -> Counts:
    total = Counts()
    for clip in clips:
        buffer = audio_io.decode(clip.path)
        if transform is not None:
            buffer = transform(buffer)
        hyp, seconds = run_vad(vad, buffer)
        counts = score(clip, hyp, buffer.duration)
        counts.vad_s = seconds
        total.add(counts)
        if per_clip:
            print(f"    {clip.uri:<10} {fmt(counts.figures())}")
    return total


def fmt(fig: dict[str, float]) -> str:
    return (
        f"P {fig['precision']:.3f}  R {fig['recall']:.3f}  F1 {fig['f1']:.3f}  "
        f"miss {100 * fig['miss']:5.1f} %  FA {100 * fig['false_alarm']:5.1f} %  "
        f"{fig['ms_per_s']:.2f} ms/s"
    )


def make_vad(model: str, threads: int, options: dict[str, Any]) -> VoiceActivityDetector:
    params: dict[str, Any] = {**default_params(), **MODELS.get(model, {}), **options}
    vad = VoiceActivityDetector(params, Path("/tmp"), threads=threads)
    t0 = time.perf_counter()
    vad.ensure_loaded()
    print(f"  model {model}: {vad.model.layout} layout, loaded in {time.perf_counter() - t0:.2f} s")
    return vad


def main(argv: list[str] | None = None) -> int:
    data = shared_data()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="folder(s) with audio + RTTM (+ UEM); default: AMI clips and the call sample",
    )
    parser.add_argument(
        "--model", choices=["config", *MODELS, "all"], default="all", help="config: models.yaml"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=float, help="default: models.yaml")
    parser.add_argument("--min-speech-ms", type=float, help="default: models.yaml")
    parser.add_argument("--min-silence-ms", type=float, help="default: models.yaml")
    parser.add_argument("--speech-pad-ms", type=float, help="default: models.yaml")
    parser.add_argument(
        "--input-lufs", help="level the VAD's input to this loudness; 'none': off (default: yaml)"
    )
    parser.add_argument("--per-clip", action="store_true")
    args = parser.parse_args(argv)
    folders = args.data or [data / "diarization" / "ami", data / "diarization" / "callsample"]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        print(f"data folder(s) not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    given = {
        "threshold": args.threshold,
        "min_speech_ms": args.min_speech_ms,
        "min_silence_ms": args.min_silence_ms,
        "speech_pad_ms": args.speech_pad_ms,
    }
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    config = default_params()
    if args.input_lufs is not None:
        lufs = None if args.input_lufs.lower() == "none" else float(args.input_lufs)
        options["input_lufs"] = given["input_lufs"] = lufs
    else:
        given["input_lufs"] = None
    shown = {k: options.get(k, config.get(k)) for k in given}
    print(f"VAD benchmark; data read from {', '.join(str(f) for f in folders)}")
    print(f"options {shown}, threads {args.threads}; 10 ms frames, scored inside the UEM;")
    print("miss / FA are shares of reference speech; timings are noisy (shared 2-core machine)")
    models = list(MODELS) if args.model == "all" else [args.model]
    for model in models:
        vad = make_vad(model, args.threads, options)
        for folder in folders:
            clips = load_folder(folder)
            total = evaluate(vad, clips, per_clip=args.per_clip)
            print(f"  {model:<18} {folder.name:<11} ({len(clips):2d} clips) {fmt(total.figures())}")
        vad.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
