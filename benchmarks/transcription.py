"""Word error rate, real-time factor and memory of the ``transcription`` step.

Usage::

    .venv/bin/python benchmarks/transcription.py --data ../shared/data/asr \
        --stm ../shared/data/diarization/callsample/sample.stm [--model base|tiny.en]

Scoring: jiwer WER after lower-casing, removing punctuation and spelling numbers out (the
references spell them), English "mr"/"mrs"/"dr" written out as the LibriVox reference does.
Totals are summed errors over summed reference words, not means of per-file WER; ``en``
is JFK + the 5 LibriVox utterances (93 words, the anchor's set), ``cards`` the 5 short
card-name clips, ``call`` the call sample (whole file against the STM text).
RTF = decoding wall time / audio duration (model loading excluded); peak memory is the
process's maximum resident set size. Timings are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from anchors import side_by_side
from callannotate.pipeline.asr.spoken_numbers import spell_numbers
from callannotate.pipeline.asr.transcription import SpeakerRegion, Transcriber, TranscriptionInput
from callannotate.pipeline.audio.decode import decode

_ABBREV_EN = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


@dataclass
class Item:
    name: str
    lang: str
    audio: Path
    reference: str
    regions: list[SpeakerRegion] | None = None


def normalize(text: str, lang: str) -> str:
    text = spell_numbers(text, lang).lower().replace("ё", "е")
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    words = text.split()
    if lang == "en":
        words = [_ABBREV_EN.get(w, w) for w in words]
    return " ".join(words)


def load_items(data: Path, stm: Path | None) -> list[Item]:
    items: list[Item] = []
    jfk = data / "en" / "jfk"
    if (jfk / "jfk.flac").is_file():
        items.append(Item("jfk", "en", jfk / "jfk.flac", (jfk / "jfk.txt").read_text()))
    libri = data / "en" / "librivox"
    if (libri / "transcripts.tsv").is_file():
        with open(libri / "transcripts.tsv", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                items.append(Item(row["utt_id"], "en", libri / f"{row['utt_id']}.wav", row["text"]))
    ru = data / "ru"
    if (ru / "ru.csv").is_file():
        with open(ru / "ru.csv", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                items.append(
                    Item(
                        "ru/" + row["wav_filename"],
                        "ru",
                        ru / row["wav_filename"],
                        row["transcript"],
                    )
                )
    if stm is not None and stm.is_file():
        regions: list[SpeakerRegion] = []
        texts: list[str] = []
        for line in stm.read_text(encoding="utf-8").splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or line.startswith(";;"):
                continue
            regions.append(SpeakerRegion(float(parts[3]), float(parts[4]), parts[2]))
            texts.append(parts[5])
        wav = stm.with_suffix(".wav")
        items.append(Item("callsample", "en", wav, " ".join(texts), regions))
    return items


def main() -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "asr")
    parser.add_argument("--stm", type=Path, default=None, help="call sample STM (whole-file WER)")
    parser.add_argument("--model", default="base", help="base | tiny.en (tiny.en: English only)")
    parser.add_argument("--path", default=None, help="a CTranslate2 model directory instead")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--strategy", choices=["whole", "regions"], default="whole")
    parser.add_argument("--batched", action="store_true", help="BatchedInferencePipeline")
    parser.add_argument("--auto-language", action="store_true", help="detect instead of hint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="regex on item names")
    parser.add_argument("--show", action="store_true", help="print hypotheses")
    parser.add_argument("--param", action="append", default=[], help="key=value decode option")
    args = parser.parse_args()

    import jiwer

    print(f"data: {args.data.resolve()}  stm: {args.stm}")
    items = load_items(args.data, args.stm)
    if args.only:
        items = [i for i in items if re.search(args.only, i.name)]
    if args.model == "tiny.en" and not args.path:
        items = [i for i in items if i.lang == "en"]
    if not items:
        print("no evaluation data found", file=sys.stderr)
        return 1
    params: dict[str, object] = {
        "model": args.model,
        "beam_size": args.beam,
        "strategy": args.strategy,
        "batched": args.batched,
    }
    if args.path:
        params["path"] = args.path
    for kv in args.param:
        key, _, value = kv.partition("=")
        params[key] = (
            None
            if value == "none"
            else (
                value
                if not re.fullmatch(r"-?[\d.]+|true|false", value)
                else (value == "true")
                if value in ("true", "false")
                else float(value)
                if "." in value
                else int(value)
            )
        )
    cache = Path(
        os.environ.get(
            "CALLANNOTATE_MODEL_CACHE", Path(tempfile.gettempdir()) / "callannotate-models"
        )
    )
    proc = Transcriber(params, cache, threads=args.threads)
    t0 = time.perf_counter()
    proc.ensure_loaded()
    print(f"model {proc.describe()} loaded in {time.perf_counter() - t0:.1f} s; params {params}")

    totals: dict[str, list[float]] = {}
    print(
        f"{'item':48s} {'lang':4s} {'words':>5s} {'err':>4s} {'WER%':>6s} {'dur':>6s} {'RTF':>5s}"
    )
    for item in items:
        audio = decode(item.audio).mono()
        dur = audio.shape[0] / 16000
        lang = "auto" if args.auto_language else item.lang
        t = time.perf_counter()
        result = proc.process(TranscriptionInput(audio=audio, language=lang, regions=item.regions))
        elapsed = time.perf_counter() - t
        ref = normalize(item.reference, item.lang)
        hyp = normalize(result.text, item.lang)
        out = jiwer.process_words(ref, hyp)
        n = len(ref.split())
        errors = out.substitutions + out.deletions + out.insertions
        group = "call" if item.name == "callsample" else item.lang
        if item.name.startswith("cards/"):
            group = "cards"  # pocketsphinx's 5 short card-name clips, not in the anchor's set
        tot = totals.setdefault(group, [0, 0, 0.0, 0.0])
        tot[0] += n
        tot[1] += errors
        tot[2] += dur
        tot[3] += elapsed
        wer = 100 * errors / max(n, 1)
        print(
            f"{item.name:48s} {result.language:4s} {n:5d} {errors:4d} {wer:6.1f}"
            f" {dur:6.1f} {elapsed / dur:5.2f}"
        )
        if args.show:
            print(f"    REF: {ref}\n    HYP: {hyp}")
    for key, (n, errors, dur, elapsed) in totals.items():
        print(
            f"TOTAL {key:4s}: WER {100 * errors / max(n, 1):.1f} % ({int(errors)}/{int(n)} words), "
            f"RTF {elapsed / dur:.3f} ({dur:.1f} s audio)"
        )
    for key, (n, errors, _dur, _elapsed) in totals.items():
        anchor = {"en": "wer_en", "call": "wer_call", "ru": "wer_ru"}.get(key)
        if anchor and not args.auto_language and not (args.only and key == "en"):
            print(side_by_side(anchor, 100 * errors / max(n, 1)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB; load average {os.getloadavg()[0]:.1f} (2 cores, shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
