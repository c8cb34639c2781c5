"""Cross-validate narrowband speech-detection settings against missed speech on codecs.

    python benchmarks/tune_codec_segmentation.py --build   # cache models' outputs (slow, once)
    python benchmarks/tune_codec_segmentation.py           # CV figures from the cache (fast)

The AMI loss under telephone codecs is missed speech (G.711 miss 12.4 % vs 7.8 % as WAV),
which no clustering threshold recovers (``tune_codec_threshold.py``). This script measures
the levers of the diarizer's speech detection on narrowband input only:

* ``silence_bias``: log-probability taken from segmentation-3.0's "no speaker" powerset
  class before its activity and soft marginals are computed (the model's speech threshold);
* ``speech_bias``: added to the mean speaker count only where it decides between silence
  and one speaker (frames with a mean count below 0.5);
* ``count_weight``: weight of segmentation-3.0's count against the second count model's;
* ``min_duration_on``: shorter turns are dropped;
* ``overlap_bias``: extra bias towards two speakers at once;
* ``seg_input``: what segmentation-3.0 hears (CAM++ and the count model keep the decoded
  signal): ``none``, pre-emphasis ``emph9``, or the empty 4.2-8 kHz band filled with white
  noise ``hfnoise45`` (45 dB below the signal's RMS; ``hfnoise45s1``: noise seed 1).

Each is a candidate value list (``--silence-biases`` ...); every combination is scored.
The runs of 2026-12-03 (``issue 15.15``)::

    tune_codec_segmentation.py --verbose                       # speech threshold levers
    tune_codec_segmentation.py --verbose --silence-biases 0 --speech-biases 0 \
        --count-weights 0.5,0.25 --overlap-biases 0.15,0.3,0.45 \
        --seg-inputs none,emph9,hfnoise40 [--no-call-check]
    tune_codec_segmentation.py --verbose --silence-biases 0 --speech-biases 0 \
        --count-weights 0.5 --overlap-biases 0.15 \
        --seg-inputs none,hfnoise50,hfnoise50s1,hfnoise50s2,hfnoise60,hfnoise45

``--build`` re-encodes every AMI clip and the call sample through the narrowband codecs
(G.711, GSM, G.723.1/AMR-NB; ``--codecs``), decodes them as the product does, and caches the
models' outputs per (clip, codec) in the format of ``tune_codec_threshold.py`` plus the raw
powerset log-probabilities of every segmentation window. Evaluation then runs the real
``Diarizer`` on the cached outputs (clustering included: the silence bias changes the local
speakers' masks, so clustering is re-run for each value).

Cross-validation: for each of the 12 AMI clips a setting is chosen on the other 11 (least
total error over their narrowband runs, codecs pooled) and the held-out clip is scored with
it; held-out errors are summed per codec (total error / total reference speech, collar 0,
overlap scored). WAV AMI runs are wideband and never use these settings. The call sample
(band-limited even as WAV) is a constraint: a candidate may not make its DER worse than
today's under any of its runs by more than ``--call-slack`` points nor change its speaker
count.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import audio_codecs as codecs
import tune_codec_threshold as base_tune
from callannotate.config import Settings
from callannotate.pipeline.audio.decode import decode
from callannotate.pipeline.diarization import DiarizationInput, Diarizer
from callannotate.pipeline.diarization.segmentation import (
    WindowSegmentation,
    powerset_to_multilabel,
    window_batches,
    window_starts,
)
from callannotate.pipeline.registry import step_config
from callannotate.pipeline.types import SAMPLE_RATE, AudioBuffer

HERE = Path(__file__).resolve().parents[1]
Cached = base_tune.Cached
Entry = base_tune.Entry
Score = base_tune.Score


def baseline_diarizer(threads: int) -> tuple[Settings, dict[str, Any], Diarizer]:
    """Today's settings, the diarize step's parameters without the narrowband overrides (the
    tuning runs set them per candidate), and a loaded ``Diarizer`` on those parameters."""
    settings = Settings()
    params = step_config(settings, "diarize")
    for key in ("narrowband_threshold", "narrowband_count_bias"):
        params.pop(key, None)
    base = Diarizer(params, settings.model_cache, threads=threads)
    base.ensure_loaded()
    return settings, params, base


def allowed_by_call(
    grid: dict[Any, dict[Entry, Score]],
    candidates: list[Any],
    before: dict[Entry, Score],
    args: argparse.Namespace,
) -> list[Any]:
    """The candidates that keep every call-sample run within ``args.call_slack`` DER points of
    today (``before``) and at its true speaker count (all of them with ``--no-call-check``)."""
    call_before = {e: s for e, s in before.items() if e[0] == "callsample"}
    return [
        c
        for c in candidates
        if args.no_call_check
        or all(
            _der([s])[0] <= _der([call_before[e]])[0] + args.call_slack and s.speakers == s.truth
            for e, s in grid[c].items()
            if e[0] == "callsample"
        )
    ]


def build(args: argparse.Namespace) -> None:
    settings = Settings()
    params = step_config(settings, "diarize")
    base = Diarizer(params, settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    seg_model = base._segmentation
    assert seg_model is not None
    ffmpeg = codecs.ffmpeg_binary()
    wanted = args.codecs.split(",")
    chosen = [c for c in base_tune.variants(ffmpeg) if (c.name if c else "wav") in wanted]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    for folder in (args.call, args.ami):
        for wav in sorted(folder.glob("*.wav")):
            for codec in chosen:
                name = "wav" if codec is None else codec.name
                target = args.cache_dir / f"{folder.name}.{wav.stem}.{name}.pkl"
                if target.exists():
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    path = wav if codec is None else codecs.encode(ffmpeg, wav, Path(tmp), codec)
                    audio = decode(path)
                signal = audio.mono()
                key = base_tune._key(signal)
                store = {key: Cached(signal)}
                diarizer = base_tune.cached_diarizer(params, settings.model_cache, store, base)
                diarizer.process(DiarizationInput(audio=AudioBuffer(signal[None], SAMPLE_RATE)))
                entry = store[key]
                entry.__dict__.pop("clusters", None)
                window = round(base.window * SAMPLE_RATE)
                starts = window_starts(len(signal), window, round(base.step * SAMPLE_RATE))
                entry.logprobs = np.concatenate(  # type: ignore[attr-defined]
                    [
                        seg_model.infer(b)
                        for b in window_batches(signal, window, starts, base.batch_size)
                    ]
                ).astype(np.float16)
                with target.open("wb") as fh:
                    pickle.dump(entry, fh)
                print(f"cached {target.name}", flush=True)


Setting = tuple[float, float, float, float, float, str]
NAMES = (
    "silence_bias",
    "speech_bias",
    "count_weight",
    "min_duration_on",
    "overlap_bias",
    "seg_input",
)


def seg_input(signal: Any, kind: str) -> Any:
    """What segmentation-3.0 hears: the signal as decoded (``none``), pre-emphasised
    (``emphN``: ``y[n] = x[n] - 0.N x[n-1]``, same RMS), or with its empty 4.2-8 kHz band
    filled with white noise ``N`` dB below the signal's RMS (``hfnoiseN``, ``hfnoiseNsK``:
    noise seed K, default 0)."""
    x = np.asarray(signal, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x**2)) + 1e-12)
    if kind.startswith("emph"):
        coef = float("0." + kind[4:])
        y = np.concatenate([x[:1], x[1:] - coef * x[:-1]])
        y *= rms / (np.sqrt(np.mean(y**2)) + 1e-12)
    elif kind.startswith("hfnoise"):
        level, _, seed = kind[7:].partition("s")
        noise = np.random.default_rng(int(seed or 0)).standard_normal(len(x))
        spectrum = np.fft.rfft(noise)
        spectrum[np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE) < 4200] = 0
        noise = np.fft.irfft(spectrum, len(x))
        noise *= rms * 10 ** (-float(level) / 20) / (np.sqrt(np.mean(noise**2)) + 1e-12)
        y = x + noise
    else:
        raise ValueError(kind)
    return y.astype(np.float32)


def logprobs_of(signal: Any, base: Diarizer) -> Any:
    model = base._segmentation
    assert model is not None
    window = round(base.window * SAMPLE_RATE)
    starts = window_starts(len(signal), window, round(base.step * SAMPLE_RATE))
    return np.concatenate(
        [model.infer(b) for b in window_batches(signal, window, starts, base.batch_size)]
    )


def derived(
    store: dict[Entry, Any],
    entry: Entry,
    bias: float,
    kind: str,
    memo: dict[Any, Any],
    base: Diarizer,
) -> Any:
    """The cached outputs of ``entry`` with segmentation-3.0 fed ``seg_input(kind)`` and
    ``bias`` taken from its no-speaker class (CAM++ and the count model unchanged)."""
    if (entry, bias, kind) not in memo:
        c = store[entry]
        if bias == 0.0 and kind == "none":
            memo[(entry, bias, kind)] = c
        else:
            if kind == "none":
                logprobs = c.logprobs.astype(np.float32)
            else:
                if (entry, kind) not in memo:
                    memo[(entry, kind)] = logprobs_of(seg_input(c.signal, kind), base)
                logprobs = memo[(entry, kind)].copy()
            logprobs[..., 0] -= bias
            seg = WindowSegmentation(
                starts=c.seg.starts,
                activity=powerset_to_multilabel(logprobs),
                soft=powerset_to_multilabel(logprobs, soft=True),
                window_duration=c.seg.window_duration,
                num_samples=c.seg.num_samples,
            )
            memo[(entry, bias, kind)] = Cached(c.signal, seg, c.count, c.features)
    return memo[(entry, bias, kind)]


def with_speech_bias(speech_bias: float) -> Any:
    """``frame_count`` that also counts one speaker where the mean count is within
    ``speech_bias`` below the silence/speech boundary."""
    from callannotate.pipeline.diarization.reconstruction import round_count

    def frame_count(local: Any, second: Any, weight: float, bias: float, overlap: float) -> Any:
        mean = local if second is None else weight * local + (1.0 - weight) * second
        out = round_count(mean, bias, overlap)
        if speech_bias:
            out = np.where((out == 0) & (mean + 0.5 + bias + speech_bias >= 1.0), 1, out)
        return out

    return frame_count


def evaluate(
    store: dict[Entry, Any],
    entries: list[Entry],
    params: dict[str, Any],
    setting: Setting,
    base: Diarizer,
    score: Any,
    memo: dict[Any, Any],
) -> dict[Entry, Score]:
    from callannotate.pipeline.diarization import diarizer as module

    silence, speech, weight, min_on, overlap, kind = setting
    tuned = {
        **params,
        "count_weight": weight,
        "min_duration_on": min_on,
        "overlap_bias": overlap,
    }
    chosen = {e: derived(store, e, silence, kind, memo, base) for e in entries}
    by_key = {base_tune._key(c.signal): c for c in chosen.values()}
    diarizer = base_tune.cached_diarizer(tuned, base.cache_dir, by_key, base)
    original = getattr(module, "frame_count")  # noqa: B009
    setattr(module, "frame_count", with_speech_bias(speech))  # noqa: B010
    try:
        out: dict[Entry, Score] = {}
        for entry in entries:
            signal = chosen[entry].signal
            result = diarizer.process(DiarizationInput(audio=AudioBuffer(signal[None], 16000)))
            out[entry] = score(entry[1], result, len(signal) / 16000)
        return out
    finally:
        setattr(module, "frame_count", original)  # noqa: B010


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def tune(args: argparse.Namespace) -> None:
    store = base_tune.load_cache(args.cache_dir)
    if not store:
        sys.exit(f"no cache in {args.cache_dir}: run with --build first")
    _settings, params, base = baseline_diarizer(args.threads)
    score = base_tune.scorer(args)
    memo: dict[Any, Any] = {}
    codec_names = sorted({e[2] for e in store}, key=lambda c: (c != "wav", c))
    narrow = {e: base.narrowband(c.signal) for e, c in store.items()}
    every = sorted(store)
    today: Setting = (
        0.0,
        0.0,
        float(params["count_weight"]),
        float(params["min_duration_on"]),
        float(params["overlap_bias"]),
        "none",
    )
    before = evaluate(store, every, params, today, base, score, memo)
    if args.check:  # the cached log-probabilities reproduce the cached segmentation
        replayed = evaluate(store, every, params, (1e-9, *today[1:]), base, score, memo)
        worst = max(abs(_err([replayed[e]]) - _err([before[e]])) for e in every)
        print(f"replay through the stored log-probabilities: largest change {worst:.3f} s")
    combos: list[Setting] = list(
        itertools.product(
            floats(args.silence_biases),
            floats(args.speech_biases),
            floats(args.count_weights),
            floats(args.min_ons),
            floats(args.overlap_biases),
            args.seg_inputs.split(","),
        )
    )
    narrow_entries = [e for e in every if narrow[e]]
    grid: dict[Setting, dict[Entry, Score]] = {}
    for n, combo in enumerate(combos):
        grid[combo] = evaluate(store, narrow_entries, params, combo, base, score, memo)
        if args.verbose:
            ami = [s for e, s in grid[combo].items() if e[0] == "ami"]
            call = " ".join(
                f"{e[2]} {_der([s])[0]:.1f}" for e, s in grid[combo].items() if e[0] != "ami"
            )
            print(
                f"  [{n + 1}/{len(combos)}] {combo}: AMI narrowband {_der(ami)[0]:.2f}; call {call}"
            )
    allowed = allowed_by_call(grid, combos, before, args)
    print(
        f"cache: {args.cache_dir} ({len(store)} clip/codec runs, {len(narrow_entries)} narrowband)"
    )
    print(
        f"candidates ({', '.join(NAMES)}): {len(combos)}; keeping every call-sample run within "
        f"{args.call_slack} points of today and 2 speakers: {len(allowed)}"
    )
    allowed = allowed or combos
    held, folds, overall, inside = base_tune.leave_one_clip_out(
        grid, allowed, every, narrow, before
    )
    choices = [f"{clip}: {'/'.join(map(str, choice))}" for clip, choice in folds]
    print(f"choice per fold (held-out clip: {'/'.join(NAMES)}):")
    for n in range(0, len(choices), 3):
        print("  " + ", ".join(choices[n : n + 3]))
    print(f"chosen on all 12 AMI clips: {'/'.join(map(str, overall))}")
    print("")
    print("in-sample error of the AMI narrowband runs (% of their reference speech), each")
    print("setting varied alone from today's:")
    for axis, name in enumerate(NAMES):
        cells = []
        for combo in combos:
            if all(combo[i] == today[i] for i in range(len(NAMES)) if i != axis):
                ami = [s for e, s in grid[combo].items() if e[0] == "ami"]
                der, miss, fa, _conf, _ = _der(ami)
                mark = "" if combo in allowed else " x"
                cells.append(f"{combo[axis]}: {der:.1f} (miss {miss:.1f} fa {fa:.1f}){mark}")
        print(f"  {name}: " + "; ".join(cells))
    for data, title, table in (
        ("ami", "AMI clips: held-out (leave one clip out)", held),
        ("callsample", "call sample (constraint only; the all-clips choice)", inside),
    ):
        print("")
        print(f"{title}; DER total over clips, collar 0, overlap scored, Diarizer on the")
        print("decoded file from cached model outputs:")
        print(
            f"  {'codec':<8} {'before':>7} {'miss':>6} {'after':>7} {'vs WAV':>7} "
            f"{'miss':>6} {'fa':>6} {'conf':>6} {'right':>6}"
        )
        wav_after = _der(s for e, s in table.items() if e[0] == data and e[2] == "wav")[0]
        for codec in codec_names:
            old = _der(s for e, s in before.items() if e[0] == data and e[2] == codec)
            new = _der(s for e, s in table.items() if e[0] == data and e[2] == codec)
            print(
                f"  {codec:<8} {old[0]:7.1f} {old[1]:6.1f} {new[0]:7.1f} "
                f"{new[0] - wav_after:+7.1f} {new[1]:6.1f} {new[2]:6.1f} {new[3]:6.1f} "
                f"{new[4]:6d}"
            )


_der = base_tune._der
_err = base_tune._errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = HERE.parent / "shared/data/diarization"
    parser.add_argument("--ami", type=Path, default=shared / "ami")
    parser.add_argument("--call", type=Path, default=shared / "callsample")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "callannotate-tune-seg"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="fill the cache (slow)")
    parser.add_argument("--codecs", default="wav,g711u,gsm,g723_1,amrnb")
    parser.add_argument("--silence-biases", default="0,0.5,1,2")
    parser.add_argument("--speech-biases", default="0,0.1,0.2,0.3,0.4")
    parser.add_argument("--count-weights", default="0.5,1")
    parser.add_argument("--min-ons", default="0.1")
    parser.add_argument("--overlap-biases", default="0.15")
    parser.add_argument("--seg-inputs", default="none", help="none, emph97, hfnoise40, ...")
    parser.add_argument(
        "--call-slack", type=float, default=0.5, help="call-sample DER rise allowed (points)"
    )
    parser.add_argument("--no-call-check", action="store_true")
    parser.add_argument("--check", action="store_true", help="verify the log-probability replay")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.build:
        build(args)
        return
    tune(args)


if __name__ == "__main__":
    main()
