"""Speaker identification / verification benchmark for the voices feature (CAM++).

    python benchmarks/speaker_id.py --data ../shared/data/speakers/fsdd --enroll 5
    python benchmarks/speaker_id.py --data ../shared/data/speakers/fsdd --enroll 5 \\
        --ami ../shared/data/diarization/ami

Any folder of audio files works: the speaker comes from the file name pattern
``{label}_{speaker}_{index}.ext`` (FSDD: ``{digit}_{speaker}_{index}.wav``) or, when the name
does not match, from the file's folder. With the pattern, each speaker is enrolled from the
takes with index 0 of the first K labels (the anchor protocol: index 0 of digits 0-4) and
every take with index >= ``--test-min-index`` (5) is identified; without it, the first K
files of each speaker are enrolled and the rest identified.

Printed: top-1 accuracy (closed set over the enrolled speakers), EER of all verification
trials (every test take against every enrolled voice), the thresholds reaching given
false-accept rates, open-set false-accept / false-reject at the chosen threshold (FA over
impostor trials, and "unknown speaker" FA: the true speaker left out of the gallery, any
acceptance is an error), and embedding speed (ms per second of audio; on a shared machine,
so noisy). The product's own entry points are used: the voice service that ``voices
enroll`` / ``voices identify`` and ``POST /voices`` build (:func:`voices.routes.voice_service`,
the process-wide CAM++ and GE2E), ``VoiceService.samples_from_files`` + ``enroll`` into a
real voice store (16 kHz decode, sample checks, the sample and its views), ``VoiceService.embed``
for the takes identified (CAM++ with reflection padding of short clips, plus GE2E unless
disabled) and, as ``identify_wave`` does, the store's gallery (normalisation fitted on the
enrolled voices) scored by ``score_voices`` with the configured thresholds; every voice's
score is kept (not only the top candidates) for the EER. The threshold reaching 5 %
unknown-speaker FA is printed too: that is how the thresholds in ``config/models.yaml`` are
calibrated.

``--ami``: cross-recording check on the AMI clips whose speakers appear in two clips: each
speaker's non-overlapped speech (from ``reference.rttm``) in one clip is enrolled and the
same speaker's speech in the other clip identified against all speakers enrolled from that
first clip (both directions).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anchors import side_by_side
from callannotate.config import Settings
from callannotate.errors import Unprocessable
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.types import SAMPLE_RATE, Float32Array
from callannotate.voices.routes import voice_service
from callannotate.voices.schemas import Voice
from callannotate.voices.scoring import Embeddings
from callannotate.voices.service import VoiceService, gallery_of, score_voices, shared_ge2e
from callannotate.voices.store import VoiceStore

AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".amr", ".webm"}
PATTERN = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>.+)_(?P<index>\d+)$")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Take:
    path: Path
    speaker: str
    label: str | None
    index: int | None


def find_takes(root: Path) -> list[Take]:
    takes = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXT or not path.is_file():
            continue
        m = PATTERN.match(path.stem)
        if m:
            takes.append(Take(path, m["speaker"], m["label"], int(m["index"])))
        else:
            takes.append(Take(path, path.parent.name, None, None))
    return takes


def split(takes: list[Take], k: int, test_min_index: int) -> tuple[list[Take], list[Take]]:
    by_speaker: dict[str, list[Take]] = defaultdict(list)
    for t in takes:
        by_speaker[t.speaker].append(t)
    enroll: list[Take] = []
    test: list[Take] = []
    for group in by_speaker.values():
        if all(t.index is not None for t in group):
            firsts = sorted((t for t in group if t.index == 0), key=lambda t: str(t.label))
            enroll += firsts[:k]
            test += [t for t in group if (t.index or 0) >= test_min_index]
        else:
            enroll += group[:k]
            test += group[k:]
    return enroll, test


def service_on(service: VoiceService, folder: Path) -> VoiceService:
    """The same service (embedders, settings) over an empty voice store in ``folder``."""
    return VoiceService(VoiceStore(folder), service.embedder, service.params, service.ge2e)


def eer(target: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs."""
    scores = np.concatenate([target, impostor])
    labels = np.concatenate([np.ones(target.size, bool), np.zeros(impostor.size, bool)])
    order = np.argsort(-scores, kind="stable")
    lab = labels[order]
    fa = np.cumsum(~lab) / max(1, impostor.size)
    fr = 1 - np.cumsum(lab) / max(1, target.size)
    i = int(np.argmin(np.abs(fa - fr)))
    return float((fa[i] + fr[i]) / 2), float(scores[order][i])


def score_matrix(
    probes: list[Embeddings], voices: list[Voice], service: VoiceService
) -> tuple[np.ndarray, float]:
    """Every probe's score against every voice (columns in ``voices`` order), as
    ``VoiceService.identify_wave`` scores them, and the threshold in force."""
    gallery = gallery_of(voices, service.params)
    order = [[v.id for v in gallery.voices].index(v.id) for v in voices]
    rows = []
    threshold = service.params.threshold
    for e in probes:
        s, threshold = score_voices(e, gallery, service.params)
        rows.append(np.asarray(s)[order])
    return np.asarray(rows), threshold


def run_fsdd(args: argparse.Namespace, product: VoiceService, workdir: Path) -> None:
    params = product.params
    service = service_on(product, workdir / "fsdd-voices")
    takes = find_takes(args.data)
    enroll, test = split(takes, args.enroll, args.test_min_index)
    speakers = sorted({t.speaker for t in enroll})
    print(f"data: {args.data} ({len(takes)} files, {len(speakers)} speakers)")
    print(
        f"protocol: enroll {args.enroll} take(s) per speaker ({len(enroll)} files), "
        f"identify {len(test)} files; embeddings: CAM++{' + GE2E' if service.ge2e else ''}; "
        f"score_norm: {params.score_norm}; pad_to_s={params.pad_to_s}"
    )
    t0 = time.perf_counter()
    waves = [decode(t.path, sample_rate=SAMPLE_RATE).mono() for t in test]
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    rejected: list[str] = []
    for name in speakers:  # as `voices enroll NAME FILE...` does, file by file
        samples = []
        for t in enroll:
            if t.speaker != name:
                continue
            try:
                samples += service.samples_from_files([(t.path, t.path.name)])
            except Unprocessable as exc:  # the product refuses it: enroll the others
                rejected.append(f"{t.path.name} ({exc.detail})")
        service.enroll(name, samples)
    if rejected:
        print(f"enrollment refused {len(rejected)} file(s): {'; '.join(rejected)}")
    t_enroll = time.perf_counter() - t0
    by_name = {v.name: v for v in service.store.list()}
    voices = [by_name[name] for name in speakers]
    enroll_s = sum(s.duration for v in voices for s in v.samples)
    n_views = sum(len(s.views) for v in voices for s in v.samples)
    t0 = time.perf_counter()
    probes = service.embed(waves)
    t_embed = time.perf_counter() - t0
    seconds = sum(w.size for w in waves) / SAMPLE_RATE
    padded = sum(max(w.size, int(params.pad_to_s * SAMPLE_RATE)) for w in waves) / SAMPLE_RATE
    truth = np.array([speakers.index(t.speaker) for t in test])
    scores, threshold = score_matrix(probes, voices, service)
    top1 = float(np.mean(scores.argmax(axis=1) == truth))
    target_mask = np.zeros_like(scores, dtype=bool)
    target_mask[np.arange(len(truth)), truth] = True
    target, impostor = scores[target_mask], scores[~target_mask]
    e, e_th = eer(target, impostor)
    print(f"top-1 accuracy: {100 * top1:.1f} % ({int(top1 * len(truth))}/{len(truth)})")
    print(
        f"EER (verification, {target.size} target / {impostor.size} impostor trials): "
        f"{100 * e:.2f} % at score {e_th:.3f}"
    )
    if args.data.name == "fsdd" and args.enroll == 5 and args.test_min_index == 5:
        print(side_by_side("spk_top1", 100 * top1))  # the anchor's protocol
        print(side_by_side("spk_eer", 100 * e))
    for far in (0.005, 0.01, 0.02, 0.05):
        th = float(np.quantile(impostor, 1 - far))
        frr = 100 * np.mean(target < th)
        print(f"  threshold for FA {100 * far:.1f} %: {th:.3f} (FR {frr:.1f} %)")
    fa = float(np.mean(impostor >= threshold))
    fr = float(np.mean(target < threshold))
    best = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == truth) & (best >= threshold)
    print(
        f"open set at threshold {threshold:.3f}: FA {100 * fa:.2f} % of impostor trials, "
        f"FR {100 * fr:.1f} % of target trials; identified and accepted "
        f"{100 * correct.mean():.1f} % of takes"
    )
    # Unknown speakers: leave each test take's speaker out of the gallery.
    unknown_fa = []
    unknown_best = []
    for j, name in enumerate(speakers):
        rest = [v for v in voices if v.name != name]
        mask = truth == j
        if not mask.any() or not rest:
            continue
        s, th = score_matrix([p for p, m in zip(probes, mask, strict=True) if m], rest, service)
        unknown_fa.append(s.max(axis=1) >= th)
        unknown_best.append(s.max(axis=1))
    if unknown_fa:
        print(
            f"unknown-speaker FA (true speaker not enrolled, any acceptance): "
            f"{100 * np.mean(np.concatenate(unknown_fa)):.1f} %"
        )
        calib = float(np.quantile(np.concatenate(unknown_best), 0.95))
        ok = float(np.mean((scores.argmax(axis=1) == truth) & (best >= calib)))
        print(
            f"calibration: threshold for 5 % unknown-speaker FA {calib:.3f} "
            f"(identified and accepted there: {100 * ok:.1f} % of takes)"
        )
    print(
        f"enrollment: {len(enroll)} samples ({enroll_s:.1f} s) with {n_views} views in "
        f"{t_enroll:.1f} s ({1000 * t_enroll / enroll_s:.0f} ms per second of sample)"
    )
    print(
        f"speed: decode {1000 * t_decode / seconds:.1f} ms/s; embedding "
        f"{1000 * t_embed / seconds:.1f} ms per second of original audio "
        f"({1000 * t_embed / padded:.1f} ms per second after padding), "
        f"{service.embedder.threads} threads (shared machine: noisy)"
    )


def read_rttm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    turns: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0] == "SPEAKER":
            start, dur = float(parts[3]), float(parts[4])
            turns[parts[1]].append((start, start + dur, parts[7]))
    return turns


def exclusive_speech(
    wave: Float32Array, turns: list[tuple[float, float, str]], speaker: str
) -> Float32Array:
    """The speaker's speech where nobody else speaks (10 ms resolution)."""
    n = wave.size // 160
    mine = np.zeros(n, bool)
    others = np.zeros(n, bool)
    for a, b, who in turns:
        sl = slice(int(a * 100), min(n, int(b * 100)))
        (mine if who == speaker else others)[sl] = True
    keep = np.repeat(mine & ~others, 160)
    return wave[: keep.size][keep]


def run_ami(args: argparse.Namespace, product: VoiceService, workdir: Path) -> None:
    root: Path = args.ami
    turns = read_rttm(root / "reference.rttm")
    speech: dict[str, dict[str, Float32Array]] = {}
    for clip in sorted(turns):
        wave = decode(root / f"{clip}.wav", sample_rate=SAMPLE_RATE).mono()
        spk = {who for _, _, who in turns[clip]}
        speech[clip] = {s: exclusive_speech(wave, turns[clip], s) for s in sorted(spk)}
    min_s = args.ami_min_speech
    clips = sorted(speech)
    pairs = []
    for i, a in enumerate(clips):
        for b in clips[i + 1 :]:
            shared = [
                s
                for s in set(speech[a]) & set(speech[b])
                if speech[a][s].size >= min_s * SAMPLE_RATE
                and speech[b][s].size >= min_s * SAMPLE_RATE
            ]
            if shared:
                pairs.append((a, b, sorted(shared)))
    print(f"\nAMI cross-recording check: {root}")
    print(
        f"speakers with >= {min_s:.1f} s of non-overlapped speech in two clips: "
        f"{sum(len(p[2]) for p in pairs)} in {len(pairs)} clip pairs"
    )
    correct = total = 0
    targets: list[float] = []
    impostors: list[float] = []
    for a, b, shared in pairs:
        for src, dst in ((a, b), (b, a)):
            names = [s for s, w in speech[src].items() if w.size >= min_s * SAMPLE_RATE]
            service = service_on(product, workdir / f"ami-{src}-{dst}")
            for s in names:
                service.enroll(s, [service.make_sample(speech[src][s], f"{src}/{s}")])
            by_name = {v.name: v for v in service.store.list()}
            voices = [by_name[s] for s in names]
            for s in shared:
                probe = service.embed([speech[dst][s]])
                scores, _ = score_matrix(probe, voices, service)
                row = scores[0]
                best = names[int(np.argmax(row))]
                ok = best == s
                correct += ok
                total += 1
                for name, sc in zip(names, row, strict=True):
                    (targets if name == s else impostors).append(float(sc))
                print(
                    f"  enroll {src} -> identify {dst}: {s:8s} best={best:8s} "
                    f"score={row.max():.3f} gallery={len(names)} {'ok' if ok else 'WRONG'}"
                )
    if total:
        e, _ = eer(np.array(targets), np.array(impostors))
        print(
            f"AMI top-1: {100 * correct / total:.1f} % ({correct}/{total}); "
            f"target scores mean {np.mean(targets):.3f}, impostor mean {np.mean(impostors):.3f}; "
            f"EER {100 * e:.1f} % ({len(targets)} target / {len(impostors)} impostor trials)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of audio files")
    parser.add_argument("--enroll", type=int, default=5, help="enrollment takes per speaker")
    parser.add_argument("--test-min-index", type=int, default=5)
    parser.add_argument("--ami", type=Path, help="AMI clips folder for the cross-recording check")
    parser.add_argument("--ami-min-speech", type=float, default=2.0)
    parser.add_argument("--models", type=Path, default=REPO / "config" / "models.yaml")
    parser.add_argument("--score-norm", choices=["none", "center"], help="override models.yaml")
    parser.add_argument("--no-ge2e", action="store_true", help="CAM++ alone")
    parser.add_argument("--pad-to", type=float, help="override pad_to_s (0 disables)")
    parser.add_argument(
        "--min-speech",
        type=float,
        help="override min_speech_s, the least speech an enrollment sample must hold "
        "(0.15 enrolls every FSDD take; the product's 0.2 refuses four of the 30)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no such folder: {args.data}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-speaker-id-"))
    settings = Settings(models_config=args.models, data_dir=workdir / "data")
    product = voice_service(settings)  # what `voices enroll` / `voices identify` use
    params = product.params
    if args.score_norm:
        params = params.model_copy(update={"score_norm": args.score_norm})
    if args.pad_to is not None:
        params = params.model_copy(update={"pad_to_s": args.pad_to})
    if args.min_speech is not None:
        params = params.model_copy(update={"min_speech_s": args.min_speech})
    if args.no_ge2e:
        params = params.model_copy(
            update={"ge2e": params.ge2e.model_copy(update={"enabled": False})}
        )
    if params != product.params:
        ge2e = shared_ge2e(params, settings.model_cache, product.embedder.threads)
        product = VoiceService(product.store, product.embedder, params, ge2e)
    if product.ge2e is not None:
        product.ge2e.ensure_loaded()
    run_fsdd(args, product, workdir)
    if args.ami:
        run_ami(args, product, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
