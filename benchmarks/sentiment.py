"""Sentiment accuracy on a small labelled set (Russian and English call-centre sentences).

Data: ``benchmarks/data/sentiment_labelled.tsv`` (80 sentences, 40 ru + 40 en, 3 classes),
written for this project by its developers; labels were assigned before the scorer ran.
It is small and in-domain: treat the figures as a sanity check, not a general benchmark.

Prints accuracy and macro-F1 per language and overall, a confusion matrix and the misses.

    .venv/bin/python benchmarks/sentiment.py [--data FILE] [--show-misses]
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

from callannotate.pipeline.analysis.sentiment import SentimentAnalyzer

LABELS = ("positive", "neutral", "negative")
DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "sentiment_labelled.tsv"


def read_set(path: Path) -> list[tuple[str, str, str]]:
    lines = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    reader = csv.DictReader(lines, delimiter="\t")
    return [(row["lang"], row["label"], row["text"]) for row in reader]


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    scores = []
    for label in LABELS:
        tp = sum(1 for g, p in pairs if g == label and p == label)
        fp = sum(1 for g, p in pairs if g != label and p == label)
        fn = sum(1 for g, p in pairs if g == label and p != label)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    items = read_set(args.data)
    analyzer = SentimentAnalyzer()
    t0 = time.perf_counter()
    analyzer.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = [(lang, gold, analyzer.sentiment(text, lang), text) for lang, gold, text in items]
    run_s = time.perf_counter() - t0
    print(f"data: {args.data} ({len(items)} sentences)")
    print(
        f"scorer: VADER (en), pymorphy3 lemma lexicon (ru); load {load_s:.2f} s, "
        f"{1000 * run_s / max(1, len(items)):.1f} ms/sentence"
    )
    for lang in ("en", "ru", "all"):
        pairs = [(g, s.label) for lg, g, s, _ in results if lang in ("all", lg)]
        if not pairs:
            continue
        acc = sum(1 for g, p in pairs if g == p) / len(pairs)
        print(f"{lang:>3}: n={len(pairs):3d} accuracy={acc:.3f} macro-F1={macro_f1(pairs):.3f}")
    confusion = Counter((g, s.label) for _, g, s, _ in results)
    print("\nconfusion (rows gold, columns predicted):")
    print(" " * 10 + "".join(f"{p:>10}" for p in LABELS))
    for g in LABELS:
        print(f"{g:>10}" + "".join(f"{confusion[(g, p)]:>10d}" for p in LABELS))
    if args.show_misses:
        print("\nmisses:")
        for lang, gold, s, text in results:
            if s.label != gold:
                print(f"  [{lang}] gold={gold:8s} got={s.label:8s} ({s.score:+.2f}) {text}")


if __name__ == "__main__":
    main()
