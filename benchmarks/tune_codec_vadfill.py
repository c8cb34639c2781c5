"""Cross-validate VAD-guided gap filling of the diarization on narrowband (codec) input.

    python benchmarks/tune_codec_segmentation.py --build   # the models' outputs (slow, once)
    python benchmarks/tune_codec_vadfill.py --build        # + Silero VAD per run (fast)
    python benchmarks/tune_codec_vadfill.py [--verbose]    # CV figures from the caches

The AMI loss under telephone codecs is missed speech (G.711 miss 12.4 % vs 7.8 % as WAV):
segmentation-3.0, a 16 kHz model, hears less speech once 4-8 kHz is empty. Silero VAD
(the product's ``vad`` step) is trained on telephone audio too. The idea: on input the
diarizer classes as narrowband (``diarization/bandwidth.py``), frames that the VAD calls
speech (frame probability >= ``vad_threshold``) but the diarization leaves without a
speaker are given one, by one of these rules (``fill``):

* ``count``: the frame's speaker count is raised to one there, and the reconstruction's
  own rules pick the speaker: the best-scoring one if any local speaker scored there, else
  the best scored within ``reach`` seconds (``fill_count``; at least ``fill_min_s`` long);
* ``near``: the speaker at the nearer edge of the diarization's gap, if within ``reach``
  seconds (``inf``: any distance);
* ``soft``: the speaker with the highest soft marginal (segmentation-3.0's powerset
  marginal of the local speakers clustered to it, averaged over the windows, without the
  activity mask) if it is at least ``floor``;
* ``soft+near``: ``soft`` first, ``near`` for the frames it leaves.

``none`` (no filling) is always a candidate. ``--build`` runs the product's
``VoiceActivityDetector`` (``vad`` settings: its own copy levelled to -23 LUFS) on every
decoded signal of the ``tune_codec_segmentation.py`` cache and stores the frame
probabilities (32 ms) under ``--vad-dir``. Evaluation rebuilds the diarizer's frames from the
cached model outputs exactly as ``Diarizer._diarize_signal`` does (checked against it on
every run with ``--check``), fills them, and makes turns with ``Diarizer._result``.

Cross-validation as in ``tune_codec_threshold.py`` (``leave_one_clip_out``): for each of
the 12 AMI clips the setting is chosen on the other 11 (least total error over their
narrowband runs, codecs pooled) and the held-out clip is scored with it; held-out errors
are summed per codec (collar 0, overlap scored). AMI WAV runs are wideband and never
filled. The call sample (band-limited even as WAV, so narrowband in every run) is a
constraint: a candidate may not raise its DER under any run by more than ``--call-slack``
points nor change its speaker count.

Secondary idea (``--build-noise``, then ``--noise-average``): segmentation-3.0 fed K copies
of the narrowband signal with the empty 4.2-8 kHz band filled with white noise
(``--noise-levels`` dB below the signal's RMS, seeds 0..K-1, deterministic), its powerset
probabilities averaged over the copies; CAM++ and the count model keep the decoded signal,
clustering re-runs. Candidates: no change or the average of seeds 0..K-1 for each K of
``--averages``; the other disjoint seed sets are printed only, to show the spread.

Runs of 2026-12-03 (issue 15.15; caches as above, 52 runs: 13 recordings x WAV, G.711,
GSM, G.723.1 standing in for AMR-NB; 40 narrowband)::

    tune_codec_vadfill.py --check
    tune_codec_vadfill.py --build-noise --noise-levels 50 --seeds 8     # 320 x 3-5 s
    tune_codec_vadfill.py --noise-average --noise-levels 50 --seeds 8 --averages 2,4,8

Result: negative, neither changes the product. VAD filling cannot recover the codec loss
(miss counted on the diarizer's frame grid, % of the AMI reference speech): 1.3-2.9
points of the codecs' extra miss are overlap (frames with fewer speakers than the
reference: G.711 5.8 %, G.723.1 6.1 %, GSM 7.4 % against 4.5 % as WAV), and the 3.2-4.2
points in frames left empty (G.711 6.3 %, G.723.1 6.9 %, GSM 7.3 % against 3.1 %) are
speech that Silero does not hear either: its recall of the reference speech is 73-79 %
on these far-field clips, and of the empty frames it calls speech at >= 0.3 only 0.9 s
(G.711), 0.9 s (G.723.1), 1.2 s (GSM) are speech, against 2.5, 2.9, 0.8 s that are not
(of 14.6-16.9 s missed in empty frames per codec). Every one of the 82 candidates keeps
the call sample; the best in-sample (soft+near/0.3/0.25/0.2) gives 27.32 % against
27.40 % (AMI narrowband runs pooled). Held out (8 of 12 folds pick it, the others close
variants): WAV 20.0 %, G.711 25.1 %
(+5.1; today 25.0), G.723.1 27.7 % (+7.8; 27.4), GSM 29.8 % (+9.8; 29.8); call sample
with it: WAV 5.5 %, G.711 3.9 %, G.723.1 6.6 %, GSM 7.7 %, 2 speakers in every run.

Noise averaging at 50 dB does not remove the seed dependence, and what it gains is
confusion, not missed speech (miss 13.1-13.5 % in every variant against 13.5 %). AMI
narrowband runs pooled (today 27.40 %): single seeds 0-7 26.45-27.48 %; two copies
26.32 % (seeds 0-1), 27.41 % (2-3), 26.98 % (4-5), 27.17 % (6-7); four copies 26.98 %
(0-3), 26.42 % (4-7); eight copies 27.13 % (G.711 25.3, G.723.1 27.3, GSM 28.8 %).
Every fold picks two copies (seeds 0-1, the luckiest pair): held-out G.711 24.6 % (+4.6),
G.723.1 27.6 % (+7.6), GSM 26.8 % (+6.8), WAV 20.0 %; call WAV 5.4 %, G.711 3.9 %,
G.723.1 6.4 %, GSM 7.8 %, 2 speakers each. Short of the 3-point target under every codec,
and the GSM gain depends on which seeds were drawn (eight copies: 28.8 %).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tune_codec_segmentation as seg_tune
import tune_codec_threshold as base_tune
from callannotate.config import Settings
from callannotate.pipeline.diarization import Diarizer
from callannotate.pipeline.diarization.reconstruction import (
    _runs,
    clustered_scores,
    fill_count,
    frame_weights,
    mean_count,
    select_top,
    total_frames_for,
    window_offsets,
)
from callannotate.pipeline.diarization.segmentation import FRAME_DURATION, FRAME_STEP
from callannotate.pipeline.diarization.speaker_count import (
    frame_count,
    kept_speakers,
    single_speaker,
)
from callannotate.pipeline.registry import step_config
from callannotate.pipeline.types import SAMPLE_RATE, AudioBuffer, null_hook

HERE = Path(__file__).resolve().parents[1]
Entry = base_tune.Entry
Score = base_tune.Score
_der = base_tune._der

VAD_FRAME_S = 512 / SAMPLE_RATE


def build(args: argparse.Namespace) -> None:
    from callannotate.pipeline.audio.vad import VoiceActivityDetector

    store = base_tune.load_cache(args.cache_dir)
    if not store:
        sys.exit(f"no cache in {args.cache_dir}: run tune_codec_segmentation.py --build first")
    settings = Settings()
    vad = VoiceActivityDetector(step_config(settings, "vad"), settings.model_cache, threads=2)
    vad.ensure_loaded()
    args.vad_dir.mkdir(parents=True, exist_ok=True)
    for entry, cached in sorted(store.items()):
        target = args.vad_dir / f"{'.'.join(entry)}.npy"
        if target.exists():
            continue
        result = vad.process(AudioBuffer(np.asarray(cached.signal)[None], SAMPLE_RATE))
        np.save(target, result.probabilities[0])
        print(f"vad {target.name}", flush=True)


@dataclass
class Frames:
    """One run's diarization frames before filling."""

    binary: Any  # (frames, speakers), what the product outputs
    scores: Any  # (frames, speakers), the product's speaker scores
    soft: Any  # (frames, speakers), soft marginals without the activity mask
    count: Any  # (frames,), speakers per frame
    speech: Any  # (frames,), VAD probability at each frame's centre
    duration: float


def frames_of(diarizer: Diarizer, cached: Any, vad_probs: Any) -> Frames:
    """``Diarizer._diarize_signal`` on the cached outputs, keeping its intermediates."""
    signal = np.ascontiguousarray(cached.signal, dtype=np.float32)
    seg = cached.seg
    recon = diarizer.reconstruction
    params = diarizer.clustering
    duration = len(signal) / SAMPLE_RATE
    total = total_frames_for(duration)
    offsets = window_offsets(seg.starts)
    weights = frame_weights(seg.frames_per_window, recon)
    mean = mean_count(seg.soft if diarizer.soft_count else seg.activity, offsets, total, weights)
    second = (
        None
        if diarizer._counter is None
        else diarizer._counter.mean_count(
            signal, total, diarizer.count_window, diarizer.count_step, diarizer.count_batch
        )
    )
    count = frame_count(mean, second, diarizer.count_weight, recon.count_bias, recon.overlap_bias)
    active = seg.activity.sum(axis=1) > 0
    if single_speaker(params) or not active.any():
        assignment = np.where(active, 0, -1).astype(np.int64)
        num = 1 if active.any() else 0
    else:
        assignment, num = diarizer._cluster(
            signal, seg, active, params, diarizer._embedder, lambda _f: None
        )
    local = seg.soft * seg.activity if diarizer.soft_scores else seg.activity
    scores = clustered_scores(local, assignment, num, offsets, total, weights)
    soft = clustered_scores(seg.soft, assignment, num, offsets, total, weights)
    reach = round(diarizer.fill_s / FRAME_STEP)
    least = max(1, round(diarizer.fill_min_s / FRAME_STEP))
    binary = fill_count(select_top(scores, count), scores, count, reach, least)
    keep = kept_speakers(binary.sum(axis=0) * FRAME_STEP, diarizer.min_speaker_s, params)
    if keep is not None:
        scores, soft = scores[:, keep], soft[:, keep]
        binary = fill_count(select_top(scores, count), scores, count, reach, least)
    centres = np.arange(total) * FRAME_STEP + FRAME_DURATION / 2 + recon.time_shift
    index = np.clip((centres / VAD_FRAME_S).astype(np.int64), 0, max(len(vad_probs) - 1, 0))
    speech = vad_probs[index] if len(vad_probs) else np.zeros(total, dtype=np.float32)
    return Frames(binary, scores, soft, count, speech, duration)


Setting = tuple[str, float, float, float]  # (fill, vad_threshold, reach_s, floor)
NONE: Setting = ("none", 0.0, 0.0, 0.0)


def near_fill(binary: Any, scores: Any, wanted: Any, reach: float) -> Any:
    """Frames in ``wanted`` (empty in ``binary``) take the speaker at the nearer edge of
    their gap (the best-scoring active speaker of the frame next to it) within ``reach``
    frames."""
    out = binary.copy()
    frames = binary.shape[0]
    empty = binary.sum(axis=1) == 0
    for first, last in _runs(empty):
        idx = np.arange(first, last)
        todo = idx[wanted[first:last]]
        if len(todo) == 0:
            continue
        left = None if first == 0 else _best_active(binary[first - 1], scores[first - 1])
        right = None if last >= frames else _best_active(binary[last], scores[last])
        for f in todo:
            d_left = f - first + 1 if left is not None else math.inf
            d_right = last - f if right is not None else math.inf
            speaker, dist = (left, d_left) if d_left <= d_right else (right, d_right)
            if speaker is not None and dist <= reach:
                out[f, speaker] = 1.0
    return out


def _best_active(active: Any, scores: Any) -> int:
    return int(np.argmax(np.where(active > 0, scores + 1, -1)))


def fill(frames: Frames, setting: Setting, diarizer: Diarizer) -> Any:
    rule, threshold, reach_s, floor = setting
    binary = frames.binary
    if rule == "none" or binary.shape[1] == 0:
        return binary
    wanted = (frames.speech >= threshold) & (binary.sum(axis=1) == 0)
    reach = math.inf if math.isinf(reach_s) else round(reach_s / FRAME_STEP)
    if rule == "count":
        count = np.where(wanted, np.maximum(frames.count, 1), frames.count)
        least = max(1, round(diarizer.fill_min_s / FRAME_STEP))
        return fill_count(select_top(frames.scores, count), frames.scores, count, int(reach), least)
    out = binary.copy()
    if rule in ("soft", "soft+near"):
        best = frames.soft.argmax(axis=1)
        value = frames.soft[np.arange(len(best)), best]
        rows = np.flatnonzero(wanted & (value >= floor))
        out[rows, best[rows]] = 1.0
        wanted = wanted & (out.sum(axis=1) == 0)
    if rule in ("near", "soft+near"):
        out = near_fill(out, frames.scores, wanted, reach)
    return out


def candidates(args: argparse.Namespace) -> list[Setting]:
    thresholds = [float(v) for v in args.vad_thresholds.split(",")]
    reaches = [float(v) for v in args.reaches.split(",")]
    floors = [float(v) for v in args.floors.split(",")]
    out: list[Setting] = [NONE]
    for t in thresholds:
        out += [("count", t, r, 0.0) for r in reaches if not math.isinf(r)]
        out += [("near", t, r, 0.0) for r in reaches]
        out += [("soft", t, math.inf, f) for f in floors]
        out += [("soft+near", t, r, f) for f, r in itertools.product(floors, reaches)]
    return out


def tune(args: argparse.Namespace) -> None:
    store = base_tune.load_cache(args.cache_dir)
    if not store:
        sys.exit(f"no cache in {args.cache_dir}: run tune_codec_segmentation.py --build first")
    settings, params, base = seg_tune.baseline_diarizer(args.threads)
    by_key = {base_tune._key(c.signal): c for c in store.values()}
    diarizer = base_tune.cached_diarizer(params, settings.model_cache, by_key, base)
    score = base_tune.scorer(args)
    every = sorted(store)
    narrow = {e: base.narrowband(store[e].signal) for e in every}
    frames: dict[Entry, Frames] = {}
    for e in every:
        vad_file = args.vad_dir / f"{'.'.join(e)}.npy"
        if not vad_file.exists():
            sys.exit(f"no VAD for {e} in {args.vad_dir}: run with --build first")
        frames[e] = frames_of(diarizer, store[e], np.load(vad_file))
        if args.check:  # the replica gives the product's frames
            signal = np.ascontiguousarray(store[e].signal, dtype=np.float32)
            real = diarizer._diarize_signal(
                signal,
                diarizer.clustering,
                diarizer.reconstruction,
                diarizer._embedder,
                null_hook,
                0.0,
                1.0,
            )
            assert np.array_equal(real.binary, frames[e].binary), e
    if args.check:
        print(f"replica of Diarizer._diarize_signal: same frames on all {len(every)} runs")

    def run(e: Entry, setting: Setting) -> Score:
        f = frames[e]
        binary = fill(f, setting, diarizer)
        k = binary.shape[1]
        result = diarizer._result(
            binary, f.scores, [f"SPEAKER_{i:02d}" for i in range(k)], None, f.duration
        )
        out: Score = score(e[1], result, f.duration)
        return out

    before = {e: run(e, NONE) for e in every}
    oracle(args, frames, diarizer)
    combos = candidates(args)
    narrow_entries = [e for e in every if narrow[e]]
    grid: dict[Setting, dict[Entry, Score]] = {}
    for n, combo in enumerate(combos):
        grid[combo] = {e: run(e, combo) for e in narrow_entries}
        if args.verbose:
            ami = [s for e, s in grid[combo].items() if e[0] == "ami"]
            der, miss, fa, conf, _ = _der(ami)
            call = " ".join(
                f"{e[2]} {_der([s])[0]:.1f}/{s.speakers}"
                for e, s in grid[combo].items()
                if e[0] != "ami"
            )
            print(
                f"  [{n + 1}/{len(combos)}] {show(combo)}: AMI narrowband {der:.2f} "
                f"(miss {miss:.1f} fa {fa:.1f} conf {conf:.1f}); call {call}",
                flush=True,
            )
    allowed = seg_tune.allowed_by_call(grid, combos, before, args)
    print(f"cache: {args.cache_dir} ({len(store)} runs, {len(narrow_entries)} narrowband)")
    print(
        f"candidates (fill/vad_threshold/reach_s/floor): {len(combos)}; keeping every "
        f"call-sample run within {args.call_slack} points of today and its speaker count: "
        f"{len(allowed)}"
    )
    held, folds, overall, inside = base_tune.leave_one_clip_out(
        grid, allowed, every, narrow, before
    )
    choices = [f"{clip}: {show(choice)}" for clip, choice in folds]
    print("choice per fold (held-out clip: fill/vad_threshold/reach_s/floor):")
    for n in range(0, len(choices), 3):
        print("  " + ", ".join(choices[n : n + 3]))
    print(f"chosen on all 12 AMI clips: {show(overall)}")
    ranked = sorted(
        allowed, key=lambda c: base_tune._errors(s for e, s in grid[c].items() if e[0] == "ami")
    )
    print("best 8 allowed in-sample (AMI narrowband runs pooled, DER miss fa conf):")
    for c in ranked[:8]:
        der, miss, fa, conf, _ = _der(s for e, s in grid[c].items() if e[0] == "ami")
        print(f"  {show(c)}: {der:.2f} {miss:.1f} {fa:.1f} {conf:.1f}")
    report_tables(store, before, held, inside)


def oracle(
    args: argparse.Namespace,
    frames: dict[Entry, Frames],
    diarizer: Diarizer,
) -> None:
    """What VAD filling could recover at best, per codec (AMI clips, frame counts on the
    diarizer's grid, % of the reference speech counted per speaker as DER counts it):
    missed speech in frames the output leaves empty and in frames with too few speakers
    (overlap), the VAD's recall of the reference speech, and the empty frames the VAD
    calls speech that are speech / not speech in the reference (seconds)."""
    from diarization import load_references

    refs, _uems = load_references(args.ami)
    thresholds = [float(v) for v in args.vad_thresholds.split(",")]
    print("AMI clips, per codec: miss in empty frames / in frames short of speakers (% of")
    print("reference speech), VAD recall of reference speech, and the empty frames the VAD")
    print("calls speech: reference speech / not speech (s), at each VAD threshold:")
    for codec in sorted({e[2] for e in frames}, key=lambda c: (c != "wav", c)):
        ref_total = miss_empty = miss_short = 0.0
        speech_frames = 0
        recall = dict.fromkeys(thresholds, 0)
        gain = {t: [0.0, 0.0] for t in thresholds}
        for e, f in frames.items():
            if e[0] != "ami" or e[2] != codec:
                continue
            centres = (
                np.arange(len(f.speech)) * FRAME_STEP
                + FRAME_DURATION / 2
                + diarizer.reconstruction.time_shift
            )
            truth = np.zeros(len(centres))
            for seg, _track in refs[e[1]].itertracks():
                truth += (centres >= seg.start) & (centres < seg.end)
            found = f.binary.sum(axis=1)
            ref_total += truth.sum()
            miss_empty += (truth * (found == 0)).sum()
            miss_short += (np.maximum(truth - found, 0) * (found > 0)).sum()
            speech_frames += int((truth > 0).sum())
            for t in thresholds:
                on = f.speech >= t
                recall[t] += int(((truth > 0) & on).sum())
                gain[t][0] += float(((found == 0) & (truth > 0) & on).sum()) * FRAME_STEP
                gain[t][1] += float(((found == 0) & (truth == 0) & on).sum()) * FRAME_STEP
        cells = "; ".join(
            f">={t:g}: recall {100 * recall[t] / max(speech_frames, 1):.0f} %, "
            f"{gain[t][0]:.1f}/{gain[t][1]:.1f} s"
            for t in thresholds
        )
        print(
            f"  {codec:<7} miss {100 * miss_empty / ref_total:.1f} / "
            f"{100 * miss_short / ref_total:.1f} %; VAD {cells}"
        )


# ---------------------------------------------------------------- secondary: noise averaging


def noise_file(args: argparse.Namespace, entry: Entry, level: float, seed: int) -> Path:
    folder: Path = args.vad_dir / "noise"
    return folder / f"{'.'.join(entry)}.hf{level:g}s{seed}.npy"


def build_noise(args: argparse.Namespace) -> None:
    """segmentation-3.0's powerset log-probabilities of every narrowband run with its empty
    4.2-8 kHz band filled with white noise (``tune_codec_segmentation.seg_input``), one
    file per level and seed."""
    store = base_tune.load_cache(args.cache_dir)
    settings = Settings()
    base = Diarizer(step_config(settings, "diarize"), settings.model_cache, threads=args.threads)
    base.ensure_loaded()
    (args.vad_dir / "noise").mkdir(parents=True, exist_ok=True)
    for level in [float(v) for v in args.noise_levels.split(",")]:
        for seed in range(args.seeds):
            for entry, cached in sorted(store.items()):
                target = noise_file(args, entry, level, seed)
                if target.exists() or not base.narrowband(cached.signal):
                    continue
                kind = f"hfnoise{level:g}s{seed}"
                logprobs = seg_tune.logprobs_of(seg_tune.seg_input(cached.signal, kind), base)
                np.save(target, logprobs.astype(np.float16))
                print(f"noise {target.name}", flush=True)


def noise_average(args: argparse.Namespace) -> None:
    """Leave-one-clip-out choice among: no change, or segmentation-3.0 fed K noise-filled
    copies (seeds 0..K-1) with its powerset probabilities averaged (deterministic)."""
    from callannotate.pipeline.diarization.segmentation import (
        WindowSegmentation,
        powerset_to_multilabel,
    )

    store = base_tune.load_cache(args.cache_dir)
    _settings, params, base = seg_tune.baseline_diarizer(args.threads)
    score = base_tune.scorer(args)
    every = sorted(store)
    narrow = {e: base.narrowband(store[e].signal) for e in every}
    narrow_entries = [e for e in every if narrow[e]]
    today = (
        0.0,
        0.0,
        float(params["count_weight"]),
        float(params["min_duration_on"]),
        float(params["overlap_bias"]),
    )
    memo: dict[Any, Any] = {}
    before = seg_tune.evaluate(store, every, params, (*today, "none"), base, score, memo)
    kinds: dict[str, list[tuple[float, int]]] = {}
    for level in [float(v) for v in args.noise_levels.split(",")]:
        for seed in range(args.seeds):
            kinds[f"hf{level:g}s{seed}"] = [(level, seed)]
        for k in sorted({args.seeds, *(int(v) for v in args.averages.split(","))}):
            for first in range(0, args.seeds - k + 1, k):  # disjoint seed sets of K
                name = f"hf{level:g}avg{k}" + (f"@{first}" if first else "")
                kinds[name] = [(level, s) for s in range(first, first + k)]
    for kind, members in kinds.items():
        for e in narrow_entries:
            c = store[e]
            logs = np.stack(
                [np.load(noise_file(args, e, lv, sd)).astype(np.float32) for lv, sd in members]
            )
            top = logs.max(axis=0)
            mean = top + np.log(np.exp(logs - top).mean(axis=0))
            seg = WindowSegmentation(
                starts=c.seg.starts,
                activity=powerset_to_multilabel(mean),
                soft=powerset_to_multilabel(mean, soft=True),
                window_duration=c.seg.window_duration,
                num_samples=c.seg.num_samples,
            )
            memo[(e, 0.0, kind)] = base_tune.Cached(c.signal, seg, c.count, c.features)
    grid: dict[str, dict[Entry, Score]] = {"none": {e: before[e] for e in narrow_entries}}
    for kind in kinds:
        grid[kind] = seg_tune.evaluate(
            store, narrow_entries, params, (*today, kind), base, score, memo
        )
    for kind, scores in grid.items():
        ami = [s for e, s in scores.items() if e[0] == "ami"]
        der, miss, fa, conf, _ = _der(ami)
        per_codec = " ".join(
            f"{c} {_der(s for e, s in scores.items() if e[0] == 'ami' and e[2] == c)[0]:.1f}"
            for c in ("g711u", "g723_1", "gsm")
        )
        call = " ".join(
            f"{e[2]} {_der([s])[0]:.1f}/{s.speakers}"
            for e, s in sorted(scores.items())
            if e[0] == "callsample"
        )
        print(
            f"  {kind:<11} AMI narrowband {der:.2f} (miss {miss:.1f} fa {fa:.1f} conf "
            f"{conf:.1f}; {per_codec}); call {call}"
        )
    # Candidates: the K copies from seed 0 (the other seed sets only show the spread).
    averaged = ["none", *(k for k in kinds if "avg" in k and "@" not in k)]
    allowed = seg_tune.allowed_by_call(grid, averaged, before, args)
    print(f"candidates (averaged copies only): {averaged}; allowed by the call: {allowed}")
    held, folds, overall, inside = base_tune.leave_one_clip_out(
        grid, allowed or averaged, every, narrow, before
    )
    print("choice per fold: " + ", ".join(f"{clip}: {k}" for clip, k in folds))
    print(f"chosen on all 12 AMI clips: {overall}")
    report_tables(store, before, held, inside)


def report_tables(
    store: dict[Entry, Any],
    before: dict[Entry, Score],
    held: dict[Entry, Score],
    inside: dict[Entry, Score],
) -> None:
    codec_names = sorted({e[2] for e in store}, key=lambda c: (c != "wav", c))
    for data, title, table in (
        ("ami", "AMI clips: held-out (leave one clip out)", held),
        ("callsample", "call sample (constraint only; the all-clips choice)", inside),
    ):
        print("")
        print(f"{title}; DER total over clips, collar 0, overlap scored:")
        print(
            f"  {'codec':<8} {'before':>7} {'miss':>6} {'after':>7} {'vs WAV':>7} "
            f"{'miss':>6} {'fa':>6} {'conf':>6} {'right':>6} {'speakers':>9}"
        )
        wav_after = _der(s for e, s in table.items() if e[0] == data and e[2] == "wav")[0]
        for codec in codec_names:
            mine = sorted(e for e in table if e[0] == data and e[2] == codec)
            old = _der(before[e] for e in mine)
            new = _der(table[e] for e in mine)
            found = " ".join(str(table[e].speakers) for e in mine) if data != "ami" else ""
            print(
                f"  {codec:<8} {old[0]:7.1f} {old[1]:6.1f} {new[0]:7.1f} "
                f"{new[0] - wav_after:+7.1f} {new[1]:6.1f} {new[2]:6.1f} {new[3]:6.1f} "
                f"{new[4]:6d} {found:>9}"
            )


def show(setting: Setting) -> str:
    rule, t, r, f = setting
    return "none" if rule == "none" else f"{rule}/{t:g}/{r:g}/{f:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = HERE.parent / "shared/data/diarization"
    parser.add_argument("--ami", type=Path, default=shared / "ami")
    parser.add_argument("--call", type=Path, default=shared / "callsample")
    tmp = Path(tempfile.gettempdir())
    parser.add_argument("--cache-dir", type=Path, default=tmp / "callannotate-tune-seg")
    parser.add_argument("--vad-dir", type=Path, default=tmp / "callannotate-tune-vad")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="fill the VAD cache")
    parser.add_argument("--vad-thresholds", default="0.3,0.5,0.7")
    parser.add_argument("--reaches", default="0.25,0.5,1,2,inf", help="seconds")
    parser.add_argument("--floors", default="0.05,0.1,0.2")
    parser.add_argument(
        "--call-slack", type=float, default=0.5, help="call-sample DER rise allowed (points)"
    )
    parser.add_argument("--no-call-check", action="store_true")
    parser.add_argument("--check", action="store_true", help="verify the frame replica")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--build-noise", action="store_true", help="cache noise-filled segmentations (slow)"
    )
    parser.add_argument(
        "--noise-average", action="store_true", help="the secondary idea instead of VAD fill"
    )
    parser.add_argument("--noise-levels", default="50", help="dB below the signal's RMS")
    parser.add_argument("--seeds", type=int, default=4, help="noise seeds 0..N-1")
    parser.add_argument("--averages", default="2,4", help="copies averaged (K)")
    args = parser.parse_args()
    if args.build:
        build(args)
    elif args.build_noise:
        build_noise(args)
    elif args.noise_average:
        noise_average(args)
    else:
        tune(args)


if __name__ == "__main__":
    main()
