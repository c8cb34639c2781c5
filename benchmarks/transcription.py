"""Word error rate, real-time factor and memory of transcription, as users run it.

Usage::

    .venv/bin/python benchmarks/transcription.py --data ../shared/data/asr \
        --stm ../shared/data/diarization/callsample/sample.stm [--model base|tiny.en]

Every file goes through ``callannotate.pipeline.annotate`` (the function the CLI and the
workers call) with the steps ``vad`` and ``transcribe`` and the language hint of its set:
decoding, channel handling (``channel_mode=auto``: a dual-mono file such as JFK is mixed,
a two-party stereo file is transcribed per channel), VAD and Whisper with the settings of
``config/models.yaml`` (``--model``, ``--beam``, ``--strategy``, ``--param`` override its
``transcription`` section). The hypothesis is the annotation's utterance text.

Scoring: jiwer WER after lower-casing, removing punctuation and spelling numbers out (the
references spell them), English "mr"/"mrs"/"dr" written out as the LibriVox reference does.
Totals are summed errors over summed reference words, not means of per-file WER; ``en``
is JFK + the 5 LibriVox utterances (93 words, the anchor's set), ``cards`` the 5 short
card-name clips, ``call`` the call sample (whole file against the STM text).
RTF = the transcribe step's own time (its report) / audio duration (model loading
excluded); peak memory is the
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
from typing import Any

import yaml

from anchors import side_by_side
from callannotate.config import Settings
from callannotate.pipeline import annotate, registry
from callannotate.pipeline.asr.spoken_numbers import spell_numbers
from callannotate.pipeline.types import AnnotateOptions, Step

_ABBREV_EN = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


@dataclass
class Item:
    name: str
    lang: str
    audio: Path
    reference: str


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
        texts: list[str] = []
        for line in stm.read_text(encoding="utf-8").splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or line.startswith(";;"):
                continue
            texts.append(parts[5])
        items.append(Item("callsample", "en", stm.with_suffix(".wav"), " ".join(texts)))
    return items


def product_settings(overrides: dict[str, Any], workdir: Path) -> Settings:
    """The product's settings with the models file's ``transcription`` section overridden."""
    base = Settings()
    config = yaml.safe_load(base.models_config.read_text(encoding="utf-8"))
    config["transcription"] = {**config["transcription"], **overrides}
    models = workdir / "models.yaml"
    models.write_text(yaml.safe_dump(config), encoding="utf-8")
    return base.model_copy(update={"models_config": models, "data_dir": workdir / "data"})


def main() -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "asr")
    parser.add_argument("--stm", type=Path, default=None, help="call sample STM (whole-file WER)")
    parser.add_argument("--model", default=None, help="base | tiny.en (default: models.yaml)")
    parser.add_argument("--path", default=None, help="a CTranslate2 model directory instead")
    parser.add_argument("--beam", type=int, default=None, help="default: models.yaml")
    parser.add_argument(
        "--strategy",
        choices=["whole", "regions"],
        default=None,
        help="default: models.yaml; regions adds the diarize step (its turns are the regions)",
    )
    parser.add_argument("--batched", action="store_true", help="BatchedInferencePipeline")
    parser.add_argument("--auto-language", action="store_true", help="detect instead of hint")
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
    params: dict[str, object] = {}
    if args.model:
        params["model"] = args.model
    if args.beam is not None:
        params["beam_size"] = args.beam
    if args.strategy:
        params["strategy"] = args.strategy
    if args.batched:
        params["batched"] = True
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
    workdir = Path(tempfile.mkdtemp(prefix="bench-transcription-"))
    settings = product_settings(params, workdir)
    steps = [Step.VAD, Step.TRANSCRIBE]
    if params.get("strategy") == "regions":
        steps.append(Step.DIARIZE)
    t0 = time.perf_counter()
    registry.loaded_processor(settings, "vad")
    proc = registry.loaded_processor(settings, "transcription")
    print(
        f"model {proc.describe()} loaded in {time.perf_counter() - t0:.1f} s; "
        f"overrides {params}; steps {','.join(steps)} through annotate()"
    )

    totals: dict[str, list[float]] = {}
    print(
        f"{'item':48s} {'lang':4s} {'words':>5s} {'err':>4s} {'WER%':>6s} {'dur':>6s} {'RTF':>5s}"
    )
    for item in items:
        lang = "auto" if args.auto_language else item.lang
        annotation = annotate(
            item.audio, AnnotateOptions(language=lang, steps=steps), settings=settings
        )
        dur = annotation.recording.duration
        elapsed = next(r.seconds for r in annotation.steps if r.name == Step.TRANSCRIBE)
        language = annotation.recording.languages[0] if annotation.recording.languages else "-"
        ref = normalize(item.reference, item.lang)
        hyp = normalize(" ".join(u.text for u in annotation.utterances), item.lang)
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
            f"{item.name:48s} {language:4s} {n:5d} {errors:4d} {wer:6.1f}"
            f" {dur:6.1f} {elapsed / dur:5.2f}  {annotation.recording.channel_mode}"
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
