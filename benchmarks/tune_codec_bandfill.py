"""Cross-validate a deterministic 4-8 kHz band fill for segmentation-3.0 on narrowband codecs.

    python benchmarks/tune_codec_segmentation.py --build   # the models' outputs (slow, once)
    python benchmarks/tune_codec_bandfill.py --build       # segmentation per fill (slow)
    python benchmarks/tune_codec_bandfill.py [--verbose]   # CV figures from the caches

segmentation-3.0 (16 kHz) misses speech once 4-8 kHz is empty; white noise in that band
(``tune_codec_segmentation.py``'s ``hfnoiseN``) helped but depends on the noise seed. Here
the band is filled from the signal itself (a blind, crude spectral band replication), so
the fill is deterministic and follows the speech's envelope. Only segmentation-3.0 hears
the filled signal; CAM++ and the count model keep the decoded one (as every ``seg_input``
of ``tune_codec_segmentation.py``). The fills (``--kinds``), all high-passed at 4.2 kHz and
scaled to ``G`` dB below the RMS of the signal's own 2-4 kHz band (whole-file gain):

* ``foldL_G``: spectral folding, ``x_bp[n] * (-1)^n`` with ``x_bp`` the signal band-passed
  to ``L``-4 kHz (``L`` = 0: the whole signal, 0-4 kHz mirrored to 4-8 kHz; ``L`` = 1: to
  4-7 kHz, the spectrum upside down);
* ``...r`` (e.g. ``fold0_40r``): ``G`` dB below the whole signal's RMS instead;
* ``shiftL_G``: ``x`` band-passed to ``L``-4 kHz and shifted up by 4 kHz (``L`` = 1: to
  5-8 kHz, ``L`` = 2: to 6-8 kHz), spectral shape kept.

``none`` (no fill) is always a candidate. ``--build`` computes segmentation-3.0's powerset
log-probabilities for every narrowband run and fill and stores them under ``--fill-dir``;
the tuning then runs ``tune_codec_segmentation.tune`` (today's silence/speech biases, count
weight, min duration and overlap bias fixed; only ``seg_input`` varies) with these fills
taken from that store: the real ``Diarizer`` on the cached outputs, leave-one-AMI-clip-out
(``tune_codec_threshold.leave_one_clip_out``: each fold picks the fill with the least error
over the other 11 clips' narrowband runs, codecs pooled), the call sample as a constraint
(no run's DER more than ``--call-slack`` points worse than today, speaker count unchanged).

In the AMI WAV runs the 4.2-8 kHz band carries about as much energy as 2-4 kHz (-8 to +5 dB),
against -16 to -37 dB after GSM; the call sample's WAV is band-limited (-48 dB).

Runs of 2026-12-03 (issue 15.15; caches as in ``tune_codec_segmentation.py``: 52 runs, 13
recordings x WAV, G.711, GSM, G.723.1; 40 narrowband; segmentation ~1.5 s per run)::

    K=shift1_30,shift1_20,shift1_10,shift2_10,fold1_10,fold0_40,fold0_30,fold0_20,fold0_10,\
    fold0_45r,fold0_35r
    nice -n 5 tune_codec_bandfill.py --build --kinds $K,fold0_0
    nice -n 5 tune_codec_bandfill.py --verbose --kinds $K                  # the honest CV
    nice -n 5 tune_codec_bandfill.py --verbose --kinds $K --no-call-check  # AMI alone

Result: negative under the call-sample constraint; product unchanged. AMI narrowband runs
pooled, in sample (today 27.40 %, miss 13.5 %): shift1_30 27.70, shift1_20 27.82,
shift1_10 28.35, shift2_10 27.50, fold1_10 28.52 (shape-keeping or 1-4 kHz fills: nothing);
plain folding fold0_40 27.30, fold0_30 26.67, fold0_20 23.43, fold0_10 22.60, fold0_0
23.70 (``--kinds fold0_0 --no-call-check``; call 11.4 / 10.1 / 12.9 / 13.7), fold0_45r
22.95, fold0_35r 24.37 (miss 11.0-11.8 % for fold0_10/20/35r/45r: unlike white noise,
whose gain was confusion, this recovers missed speech). But every fill makes some
call-sample run worse by more than 0.5 points, most of them all four (today WAV 5.4,
G.711 3.8, G.723.1 6.5, GSM 7.5 %): fold0_10 9.1 / 9.4 / 12.0 / 10.2
(false alarm +2-3 points, confusion +1.6-3.2), fold0_20 7.5 / 7.4 / 10.2 / 10.0, the
mildest fold0_40 8.3 / 4.2 / 8.5 / 8.9, and fold0_30 and fold0_45r collapse its G.723.1
run to one speaker (44 %). So no candidate but ``none`` keeps the call within 0.5 points,
every fold picks ``none``, held out = today: WAV 20.0, G.711 25.0, G.723.1 27.4, GSM 29.8 %.
Without the call constraint every fold picks fold0_10 (one fold0_45r): held out G.711
21.9 % (+1.9 vs WAV), G.723.1 25.6 % (+5.6), GSM 21.6 % (+1.6), WAV 20.0 %; call sample
as above. The AMI gain is uneven across clips (% per run, fold0_0/10/20): trn03, trn06,
trn09 gain under every codec and gain (trn09 20-22 -> 6-8, trn03 11 -> 4-8), but trn07
loses 4-10 points under every codec at 0 and -10 dB, and single runs swing 12-26 points
either way with the gain (dev00 G.711 26.1 -> 38.8 at -10 dB, 26.1 at -20 dB; dev01 G.711 48.3
-> 23.6 at -10 dB, 48.0 at -20 dB), the speaker count changing with it. And the gain is
not bandwidth extension: with the fold's source high-passed at 300 Hz (``fold0.3_10``,
``fold0.3_20``, 4-7.7 kHz filled, run afterwards: ``--kinds fold0.3_10,fold0.3_20``) it is
gone (27.21 / 27.63 %; call G.723.1 collapses to one speaker, 44 %). The AMI far-field
clips carry most of their energy below 300 Hz (100-300 Hz 1.5-5.6 dB below the total,
0-100 Hz 1.5-14 dB; 300-4000 Hz 3.5-17 dB below; the call sample: 8.1, 27.8 and 0.7 dB), so
``fold0`` is mostly their pitch and room rumble mirrored to 7.7-8 kHz, next to Nyquist:
the model reacts to that artefact, as it did to white noise, not to speech-like 4-8 kHz
content (the fills that keep the speech's spectral shape, ``shift*``, do nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import tune_codec_segmentation as seg
import tune_codec_threshold as base_tune
from callannotate.config import Settings
from callannotate.pipeline.diarization import Diarizer
from callannotate.pipeline.registry import step_config
from callannotate.pipeline.types import SAMPLE_RATE

HERE = Path(__file__).resolve().parents[1]
EDGE_HZ = 4200.0


def _band_rms(spectrum: Any, freqs: Any, low: float, high: float, n: int) -> float:
    part = np.where((freqs >= low) & (freqs < high), spectrum, 0)
    return float(np.sqrt(np.mean(np.fft.irfft(part, n) ** 2)) + 1e-12)


def band_fill(signal: Any, kind: str) -> Any:
    """``signal`` plus its deterministic 4.2-8 kHz fill ``kind`` (``foldL_G``, ``shiftL_G``)."""
    x = np.asarray(signal, dtype=np.float64)
    n = len(x)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum = np.fft.rfft(x)
    reference = _band_rms(spectrum, freqs, 2000.0, 4000.0, n)
    name = "fold" if kind.startswith("fold") else "shift" if kind.startswith("shift") else ""
    if not name:
        raise ValueError(kind)
    low_text, _, gain_text = kind[len(name) :].partition("_")
    gain_db = float(gain_text.rstrip("r"))
    if gain_text.endswith("r"):  # re the whole signal's RMS instead
        reference = float(np.sqrt(np.mean(x**2)) + 1e-12)
    source = np.where((freqs >= float(low_text) * 1000) & (freqs < 4000.0), spectrum, 0)
    if name == "fold":  # x[n] (-1)^n: f -> 8 kHz - f
        carrier = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    else:  # cos(2 pi 4 kHz t): f -> f + 4 kHz (and 4 kHz - f, removed below)
        carrier = np.cos(2 * np.pi * 4000.0 * np.arange(n) / SAMPLE_RATE)
    fill = np.fft.rfft(np.fft.irfft(source, n) * carrier)
    fill[freqs < EDGE_HZ] = 0
    hf = np.fft.irfft(fill, n)
    hf *= reference * 10 ** (-gain_db / 20) / (np.sqrt(np.mean(hf**2)) + 1e-12)
    return (x + hf).astype(np.float32)


def _is_fill(kind: str) -> bool:
    return kind.startswith(("fold", "shift"))


def _fill_path(folder: Path, entry: Any, kind: str) -> Path:
    return folder / f"{'.'.join(entry)}.{kind}.npy"


def build(args: argparse.Namespace) -> None:
    store = base_tune.load_cache(args.cache_dir)
    if not store:
        sys.exit(f"no cache in {args.cache_dir}: run tune_codec_segmentation.py --build first")
    settings = Settings()
    params = step_config(settings, "diarize")
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    args.fill_dir.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if _is_fill(k)]
    for kind in kinds:
        for entry, cached in sorted(store.items()):
            target = _fill_path(args.fill_dir, entry, kind)
            if target.exists() or not base.narrowband(cached.signal):
                continue
            logprobs = seg.logprobs_of(band_fill(cached.signal, kind), base)
            np.save(target, logprobs.astype(np.float32))
            print(f"segmented {target.name}", flush=True)


def tune(args: argparse.Namespace) -> None:
    original_input = seg.seg_input
    original_derived = seg.derived

    def seg_input(signal: Any, kind: str) -> Any:
        return band_fill(signal, kind) if _is_fill(kind) else original_input(signal, kind)

    def derived(
        st: dict[Any, Any], entry: Any, bias: float, kind: str, memo: dict[Any, Any], b: Any
    ) -> Any:
        if _is_fill(kind) and (entry, kind) not in memo:
            path = _fill_path(args.fill_dir, entry, kind)
            if path.exists():
                memo[(entry, kind)] = np.load(path)
        return original_derived(st, entry, bias, kind, memo, b)

    seg.seg_input = seg_input
    seg.derived = derived
    settings = Settings()
    params = step_config(settings, "diarize")
    tuned = argparse.Namespace(
        ami=args.ami,
        call=args.call,
        cache_dir=args.cache_dir,
        threads=args.threads,
        silence_biases="0",
        speech_biases="0",
        count_weights=str(params["count_weight"]),
        min_ons=str(params["min_duration_on"]),
        overlap_biases=str(params["overlap_bias"]),
        seg_inputs=",".join(["none", *[k for k in args.kinds.split(",") if k != "none"]]),
        call_slack=args.call_slack,
        no_call_check=args.no_call_check,
        check=False,
        verbose=args.verbose,
    )
    try:
        seg.tune(tuned)
    finally:
        seg.seg_input = original_input
        seg.derived = original_derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = HERE.parent / "shared/data/diarization"
    tmp = Path(tempfile.gettempdir())
    parser.add_argument("--ami", type=Path, default=shared / "ami")
    parser.add_argument("--call", type=Path, default=shared / "callsample")
    parser.add_argument("--cache-dir", type=Path, default=tmp / "callannotate-tune-seg")
    parser.add_argument("--fill-dir", type=Path, default=tmp / "callannotate-tune-bandfill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="segment the filled runs (slow)")
    parser.add_argument(
        "--kinds", default="shift1_20,shift1_10,fold1_10,shift2_10,shift1_30,fold0_20"
    )
    parser.add_argument(
        "--call-slack", type=float, default=0.5, help="call-sample DER rise allowed (points)"
    )
    parser.add_argument("--no-call-check", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.build:
        build(args)
        return
    tune(args)


if __name__ == "__main__":
    main()
