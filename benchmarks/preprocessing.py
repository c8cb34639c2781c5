"""What each preprocessing step does to VAD F1, DER and WER.

Every condition runs the ``Preprocessor`` with one set of steps on, then scores
* VAD: frame F1 / miss / false alarm against the RTTM speech (see ``benchmarks/vad.py``),
* DER: the ``diarize`` step (pyannote.metrics, collar 0, overlap scored, over the UEM,
  summed over clips), when ``callannotate.pipeline.diarization`` imports,
* WER: the ``transcription`` step (jiwer, lower-cased, punctuation removed) on the call sample's
  STM, the LibriVox + cards utterances, JFK and the Russian utterance, when it imports;
on four versions of the audio: as recorded, with white noise added at ``--snr`` dB to the
reference speech level, 25 dB quieter, and with a DC offset of 0.05.

    .venv/bin/python benchmarks/preprocessing.py                 # VAD only (fast)
    .venv/bin/python benchmarks/preprocessing.py --tasks vad,der,wer
    .venv/bin/python benchmarks/preprocessing.py --conditions none,denoise --variants noisy

Data is read from ``../shared/data`` (or ``CALLANNOTATE_SHARED_DATA``). The data set is small
(6.5 min of AMI, a 30 s call, ~1.5 min of ASR clips): differences under ~1 point are noise.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vad as vad_bench
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.preprocess import Preprocessor
from callannotate.pipeline.audio.vad import VoiceActivityDetector
from callannotate.pipeline.types import AudioBuffer

SR = 16_000
CONDITIONS: dict[str, dict[str, Any]] = {
    "none": {"dc_removal": False},
    "dc": {"dc_removal": True},
    "highpass60": {"dc_removal": True, "highpass_hz": 60.0},
    "loudness": {"dc_removal": False, "loudness_normalize": True},
    "denoise": {"dc_removal": False, "denoise": True},
    "denoise-nr": {"dc_removal": False, "denoise": True, "denoise_method": "noisereduce"},
    "dc+loud": {"dc_removal": True, "loudness_normalize": True},
    "dc+loud+denoise": {"dc_removal": True, "loudness_normalize": True, "denoise": True},
}
VARIANTS = ("clean", "noisy", "quiet", "offset")


# ----------------------------------------------------------------------------- audio variants


def speech_rms(samples: np.ndarray, speech: list[tuple[float, float]]) -> float:
    mono = samples.mean(axis=0)
    parts = [mono[int(s * SR) : int(e * SR)] for s, e in speech]
    joined = np.concatenate([p for p in parts if p.size]) if parts else mono
    if joined.size == 0:
        joined = mono
    return float(np.sqrt(np.mean(np.square(joined, dtype=np.float64))) + 1e-9)


def make_variant(
    buffer: AudioBuffer, name: str, speech: list[tuple[float, float]], snr_db: float, seed: int
) -> AudioBuffer:
    if name == "clean":
        return buffer
    if name == "quiet":
        return AudioBuffer((buffer.samples * 10 ** (-25 / 20)).astype(np.float32), SR)
    if name == "offset":  # a DC offset of 0.05 (cheap telephony hardware, bad ADCs)
        return AudioBuffer(np.clip(buffer.samples + 0.05, -1, 1).astype(np.float32), SR)
    if name == "noisy":
        rng = np.random.default_rng(seed)
        level = speech_rms(buffer.samples, speech) * 10 ** (-snr_db / 20)
        noise = rng.standard_normal(buffer.samples.shape) * level
        return AudioBuffer(np.clip(buffer.samples + noise, -1, 1).astype(np.float32), SR)
    raise ValueError(name)


def preprocessor(condition: str) -> Preprocessor:
    proc = Preprocessor(dict(CONDITIONS[condition]), Path("/tmp"))
    proc.ensure_loaded()
    return proc


# ----------------------------------------------------------------------------- VAD


def bench_vad(folders: list[Path], conditions: list[str], variants: list[str], snr: float) -> None:
    vad = VoiceActivityDetector(vad_bench.default_params(), Path("/tmp"), threads=2)
    vad.ensure_loaded()
    clips = [(f.name, clip) for f in folders for clip in vad_bench.load_folder(f)]
    decoded = {id(c): audio_io.decode(c.path) for _, c in clips}
    print("\nVAD (models.yaml vad settings; channel mix; F1 of 10 ms speech frames)")
    print(f"{'variant':<7} {'condition':<16} " + "  ".join(f"{f.name:>28}" for f in folders))
    for variant in variants:
        for condition in conditions:
            proc = preprocessor(condition)
            totals = {f.name: vad_bench.Counts() for f in folders}
            pre_s = 0.0
            for i, (folder, clip) in enumerate(clips):
                buffer = make_variant(decoded[id(clip)], variant, clip.speech, snr, seed=i)
                t0 = time.perf_counter()
                buffer = proc.process(buffer).audio
                pre_s += time.perf_counter() - t0
                hyp, _ = vad_bench.run_vad(vad, buffer)
                totals[folder].add(vad_bench.score(clip, hyp, buffer.duration))
            audio_s = sum(t.audio_s for t in totals.values())
            cells = []
            for f in folders:
                fig = totals[f.name].figures()
                miss, fa = 100 * fig["miss"], 100 * fig["false_alarm"]
                cells.append(f"F1 {fig['f1']:.3f} miss {miss:4.1f} FA {fa:4.1f}")
            print(
                f"{variant:<7} {condition:<16} "
                + "  ".join(cells)
                + f"  pre {1000 * pre_s / audio_s:.1f} ms/s"
            )


# ----------------------------------------------------------------------------- DER


def bench_der(folders: list[Path], conditions: list[str], variants: list[str], snr: float) -> None:
    try:
        from pyannote.core import Annotation, Segment, Timeline
        from pyannote.metrics.diarization import DiarizationErrorRate

        from callannotate.config import Settings
        from callannotate.pipeline.diarization import DiarizationInput, Diarizer
        from callannotate.pipeline.registry import step_config
    except ImportError as exc:
        print(f"\nDER skipped: {exc}")
        return
    settings = Settings()
    diarizer = Diarizer(step_config(settings, "diarize"), settings.model_cache, threads=2)
    diarizer.ensure_loaded()
    print("\nDER % (diarize settings from models.yaml; collar 0, overlap scored, UEM, total)")
    print(f"{'variant':<7} {'condition':<16} " + "  ".join(f"{f.name:>30}" for f in folders))
    for variant in variants:
        for condition in conditions:
            proc = preprocessor(condition)
            cells = []
            for folder in folders:
                metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
                refs = _rttm_annotations(folder, Annotation, Segment)
                clips = vad_bench.load_folder(folder)
                for i, clip in enumerate(clips):
                    buffer = audio_io.decode(clip.path)
                    buffer = make_variant(buffer, variant, clip.speech, snr, seed=i)
                    buffer = proc.process(buffer).audio
                    result = diarizer.process(DiarizationInput(audio=buffer))
                    hyp = Annotation(uri=clip.uri)
                    for k, turn in enumerate(result.turns):
                        hyp[Segment(turn.start, turn.end), k] = turn.speaker
                    uem_parts = clip.uem or [(0.0, buffer.duration)]
                    uem = Timeline([Segment(s, e) for s, e in uem_parts], uri=clip.uri)
                    metric(refs[clip.uri], hyp, uem=uem)
                d = _totals(metric)
                tot = max(d["total"], 1e-9)
                miss, fa = 100 * d["missed detection"] / tot, 100 * d["false alarm"] / tot
                conf = 100 * d["confusion"] / tot
                cells.append(
                    f"DER {100 * abs(metric):5.1f} (miss {miss:4.1f} fa {fa:4.1f} conf {conf:4.1f})"
                )
            print(f"{variant:<7} {condition:<16} " + "  ".join(cells), flush=True)


def _totals(metric: Any) -> dict[str, float]:
    """Accumulated components of a pyannote metric (summed over clips)."""
    return dict(metric[:])


def _rttm_annotations(folder: Path, annotation: Any, segment: Any) -> dict[str, Any]:
    refs: dict[str, Any] = {}
    for rttm in sorted(folder.glob("*.rttm")):
        for line in rttm.read_text().splitlines():
            p = line.split()
            if len(p) >= 8 and p[0] == "SPEAKER":
                ann = refs.setdefault(p[1], annotation(uri=p[1]))
                ann[segment(float(p[3]), float(p[3]) + float(p[4])), len(ann)] = p[7]
    return refs


# ----------------------------------------------------------------------------- WER


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def wer_sets(data: Path) -> list[tuple[str, Path, str, str]]:
    """(set, audio, language, reference text) for every ASR clip found."""
    items: list[tuple[str, Path, str, str]] = []
    call = data / "diarization" / "callsample"
    if (call / "sample.stm").is_file():
        words = [" ".join(ln.split()[5:]) for ln in (call / "sample.stm").read_text().splitlines()]
        items.append(("call", call / "sample.wav", "en", " ".join(words)))
    libri = data / "asr" / "en" / "librivox"
    if (libri / "transcripts.tsv").is_file():
        for line in (libri / "transcripts.tsv").read_text().splitlines()[1:]:
            utt, _, text = line.partition("\t")
            items.append(("librivox", libri / f"{utt}.wav", "en", text))
    jfk = data / "asr" / "en" / "jfk"
    if (jfk / "jfk.txt").is_file():
        items.append(("jfk", jfk / "jfk.flac", "en", (jfk / "jfk.txt").read_text()))
    ru = data / "asr" / "ru"
    if (ru / "ru.csv").is_file():
        for line in (ru / "ru.csv").read_text().splitlines()[1:]:
            name, _, text = line.split(",", 2)
            items.append(("ru", ru / name, "ru", text))
    return items


def bench_wer(
    data: Path,
    conditions: list[str],
    variants: list[str],
    snr: float,
    transcribe: Callable[[AudioBuffer, str], str] | None,
) -> None:
    if transcribe is None:
        return
    import jiwer

    items = wer_sets(data)
    sets = sorted({s for s, *_ in items}, key=[s for s, *_ in items].index)
    print("\nWER % (transcription settings from models.yaml, language given; jiwer, lower-cased,")
    print("punctuation removed; totals over each set; 'en' pools every English set)")
    langs = {s: lang for s, _, lang, _ in items}
    print(f"{'variant':<7} {'condition':<16} " + " ".join(f"{s:>9}" for s in [*sets, "en"]))
    for variant in variants:
        for condition in conditions:
            proc = preprocessor(condition)
            refs: dict[str, list[str]] = {s: [] for s in sets}
            hyps: dict[str, list[str]] = {s: [] for s in sets}
            for i, (name, path, lang, ref) in enumerate(items):
                buffer = audio_io.decode(path)
                # speech level of ASR clips: whole clip (they are nearly all speech)
                speech = [(0.0, buffer.duration)]
                buffer = proc.process(make_variant(buffer, variant, speech, snr, seed=i)).audio
                refs[name].append(normalise_text(ref))
                hyps[name].append(normalise_text(transcribe(buffer, lang)))
            cells = [f"{100 * jiwer.wer(refs[s], hyps[s]):9.1f}" for s in sets]
            en = [s for s in sets if langs[s] == "en"]
            en_refs = [r for s in en for r in refs[s]]
            en_hyps = [h for s in en for h in hyps[s]]
            cells.append(f"{100 * jiwer.wer(en_refs, en_hyps):9.1f}")
            print(f"{variant:<7} {condition:<16} " + " ".join(cells), flush=True)


def load_transcriber() -> Callable[[AudioBuffer, str], str] | None:
    """A function audio -> text from the ``transcription`` step, or None when it is missing."""
    try:
        from callannotate.config import Settings
        from callannotate.pipeline.asr.transcription import TranscriptionInput
        from callannotate.pipeline.registry import get_processor
    except ImportError as exc:
        print(f"\nWER skipped: {exc}")
        return None
    proc = get_processor(Settings(), "transcription")
    proc.ensure_loaded()

    def run(buffer: AudioBuffer, language: str) -> str:
        result = proc.process(TranscriptionInput(audio=buffer.mono(), language=language))
        return " ".join(w.text.strip() for w in result.words)

    return run


def main(argv: list[str] | None = None) -> int:
    data = vad_bench.shared_data()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="vad", help="comma list of vad,der,wer")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--snr", type=float, default=10.0, help="SNR of the noisy variant, dB")
    parser.add_argument(
        "--data", type=Path, action="append", help="diarization folders (RTTM + audio)"
    )
    args = parser.parse_args(argv)
    folders = args.data or [data / "diarization" / "ami", data / "diarization" / "callsample"]
    if not all(f.is_dir() for f in folders):
        print(f"data not found under {data} (set CALLANNOTATE_SHARED_DATA)", file=sys.stderr)
        return 2
    conditions = [c for c in args.conditions.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [c for c in conditions if c not in CONDITIONS] + [
        v for v in variants if v not in VARIANTS
    ]
    if unknown:
        print(f"unknown condition/variant: {unknown}", file=sys.stderr)
        return 2
    tasks = set(args.tasks.split(","))
    print(f"preprocessing benchmark; data read from {data}")
    print(f"variants: clean, noisy (white noise at {args.snr:g} dB SNR to reference speech), ")
    print("quiet (-25 dB), offset (DC +0.05); timings are noisy (shared 2-core machine)")
    if "vad" in tasks:
        bench_vad(folders, conditions, variants, args.snr)
    if "der" in tasks:
        bench_der(folders, conditions, variants, args.snr)
    if "wer" in tasks:
        bench_wer(data, conditions, variants, args.snr, load_transcriber())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
