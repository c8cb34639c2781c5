"""What the alternatives score on the shared data, printed beside our own figures.

The figures are those of ``../shared/ANCHORS.md`` (measured there on the same 2-core machine
kind, model loading excluded); ``tests/benchmarks/test_anchors.py`` checks that every figure
here still appears in that file. Each benchmark calls :func:`side_by_side` for the lines it
measures on the anchor's own data and protocol, so one run shows both numbers and the
verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

PYANNOTE = "pyannote.audio 4.0.7 pipeline, segmentation-3.0 + CAM++"
WHISPER = "faster-whisper 1.2.1, Whisper base int8, beam 5, VAD filter"


@dataclass(frozen=True)
class Anchor:
    metric: str
    alternative: str
    value: float
    unit: str
    higher_is_better: bool = False
    tolerance: float = 0.05  # differences up to this are a tie


ANCHORS: dict[str, Anchor] = {
    "der_ami": Anchor("DER, AMI 12 x 30 s", PYANNOTE, 27.4, "%"),
    "count_ami": Anchor(
        "speaker count right, AMI clips", PYANNOTE, 6, " of 12", higher_is_better=True
    ),
    "rtf_ami": Anchor("diarization RTF, AMI clips", PYANNOTE, 0.20, "", tolerance=0.005),
    "der_call": Anchor("DER, call sample", PYANNOTE, 5.6, "%"),
    "wer_en": Anchor("WER, LibriVox + JFK", WHISPER, 2.2, "%"),
    "wer_call": Anchor("WER, call sample", WHISPER, 19.8, "%"),
    "wer_ru": Anchor("WER, Russian asr/ru/ru.wav", WHISPER, 11.1, "%"),
    "spk_top1": Anchor(
        "speaker ID top-1, FSDD", "CAM++ cosine to the mean enrollment", 82.2, "%", True
    ),
    "spk_eer": Anchor("speaker ID EER, FSDD", "CAM++ cosine to the mean enrollment", 18.4, "%"),
}


def verdict(anchor: Anchor, ours: float) -> str:
    """``better``, ``tie`` or ``worse`` than the anchor."""
    gain = ours - anchor.value if anchor.higher_is_better else anchor.value - ours
    if abs(gain) <= anchor.tolerance:
        return "tie"
    return "better" if gain > 0 else "worse"


def side_by_side(key: str, ours: float) -> str:
    """One line: our figure, the alternative's, and the verdict."""
    anchor = ANCHORS[key]
    digits = 3 if anchor.value < 1 else 1
    if anchor.unit.startswith(" of"):
        digits = 0
    return (
        f"vs anchor | {anchor.metric}: ours {ours:.{digits}f}{anchor.unit}, "
        f"{anchor.alternative} {anchor.value:.{digits}f}{anchor.unit} -> "
        f"{verdict(anchor, ours).upper()}"
    )
