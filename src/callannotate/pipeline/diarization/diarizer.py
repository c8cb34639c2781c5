"""The diarization step: segmentation-3.0 + CAM++ + clustering + reconstruction.

``Diarizer.process(DiarizationInput(audio, ...))`` returns a :class:`DiarizationResult`.
Mono (or mixed) audio goes through the full pipeline (speaker embeddings by masked
pooling of CAM++ features computed once, :mod:`.pooled`); with ``per_channel`` each
channel of a stereo call is one party: its speech activity comes from the segmentation model and
its speakers are clustered within the channel only when ``per_channel_max_speakers`` > 1,
and a channel's frames that only carry the far party's echo (more than ``crosstalk_db``
below the other channel, each relative to its own speech level) are dropped.

Narrowband audio (telephone codecs: nothing above about 4 kHz in the decoded signal,
:mod:`.bandwidth`) is clustered with ``narrowband_threshold`` and counted with
``narrowband_count_bias`` when those are set: the bandwidth is measured on the signal, not
taken from the file's format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from callannotate.errors import Unprocessable
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.diarization.bandwidth import upper_band_db
from callannotate.pipeline.diarization.clustering import (
    ClusteringParams,
)
from callannotate.pipeline.diarization.counting import CountModel
from callannotate.pipeline.diarization.pooled import PooledParams, pooled_assignment
from callannotate.pipeline.diarization.reconstruction import (
    ReconstructionParams,
    binary_to_turns,
    clustered_scores,
    exclusive,
    fill_count,
    frame_weights,
    mean_count,
    select_top,
    total_frames_for,
    window_offsets,
)
from callannotate.pipeline.diarization.result import DiarizationInput, DiarizationResult
from callannotate.pipeline.diarization.segmentation import (
    FRAME_CENTRE,
    FRAME_SAMPLES,
    FRAME_STEP,
    SegmentationModel,
    WindowSegmentation,
)
from callannotate.pipeline.diarization.speaker_count import (
    frame_count,
    kept_speakers,
    single_speaker,
)
from callannotate.pipeline.models import model_file
from callannotate.pipeline.settings import DiarizeSettings
from callannotate.pipeline.types import SAMPLE_RATE, ProgressHook, Speaker, Step, Turn, null_hook

if TYPE_CHECKING:
    from callannotate.pipeline.speakers.embedding import SpeakerEmbedder

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ChannelActivity:
    """One signal's frame-level outcome before labelling."""

    binary: FloatArray  # (frames, speakers)
    scores: FloatArray  # (frames, speakers)


class Diarizer(MLProcessor[DiarizationInput, DiarizationResult]):
    """Who spoke when. ``config/models.yaml`` section ``diarize`` documents the parameters."""

    name: Step = Step.DIARIZE

    settings_type = DiarizeSettings
    settings: DiarizeSettings

    def __init__(
        self, settings: DiarizeSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        cfg = self.settings
        self.window = cfg.window
        self.step = cfg.step
        self.batch_size = cfg.batch_size
        self.clustering = ClusteringParams(
            threshold=cfg.threshold,
            min_cluster_size=cfg.min_cluster_size,
            method=cfg.linkage,
            neighbours=cfg.neighbours,
            split_together=cfg.split_together,
        )
        self.reconstruction = ReconstructionParams(
            min_duration_on=cfg.min_duration_on,
            min_duration_off=cfg.min_duration_off,
            edge_weight=cfg.edge_weight,
            edge_s=cfg.edge_s,
            hamming=cfg.hamming,
            count_bias=cfg.count_bias,
            overlap_bias=cfg.overlap_bias,
            time_shift=cfg.time_shift,
        )
        # Weight of segmentation-3.0's expected speaker count against the second model's
        # (`.counting`); 1.0 uses 3.0 alone and does not load the second model.
        self.count_weight = cfg.count_weight
        self.count_window = cfg.count_window
        self.count_step = cfg.count_step
        # Windows per onnxruntime call: its first convolution holds 80 channels x 80,000
        # samples per 5 s window in float32 (26 MB), so large batches cost memory, not speed.
        self.count_batch = cfg.count_batch
        # Frames short of speakers take the best other speaker within this many seconds.
        self.fill_s = cfg.fill_s
        self.fill_min_s = cfg.fill_min_s
        self.soft_scores = cfg.soft_scores
        self.soft_count = cfg.soft_count
        self.min_speaker_s = cfg.min_speaker_s
        self.crosstalk_db = cfg.crosstalk_db
        self.per_channel_max_speakers = cfg.per_channel_max_speakers
        self.narrowband_db = cfg.narrowband_db
        self.narrowband_threshold = cfg.narrowband_threshold
        self.narrowband_count_bias = cfg.narrowband_count_bias
        self.feature_chunk_s = cfg.feature_chunk_s
        self.feature_context_s = cfg.feature_context_s
        # Speaker embeddings: CAM++ features once per chunk, masked pooling (see `.pooled`).
        self.pooled = PooledParams(
            overlap_weight=cfg.overlap_weight,
            min_embed_s=cfg.min_embed_s,
            min_train_s=cfg.min_train_s,
            max_cluster_rows=cfg.max_cluster_rows,
            piece_s=cfg.refine_piece_s,
            hop_s=cfg.refine_hop_s,
            min_piece_s=cfg.refine_min_s,
            margin=cfg.refine_margin,
            iterations=cfg.refine_iterations,
            cluster_piece_s=cfg.piece_s,
        )
        self._segmentation: SegmentationModel | None = None
        self._counter: CountModel | None = None
        self._embedder: Any = None
        self._frame_embedder: Any = None

    @property
    def embeddings(self) -> str:
        """How speakers are embedded (``benchmarks/diarization.py`` prints it): CAM++
        features pooled per local speaker, the only path since the waveform one went."""
        return "pooled"

    # -- MLProcessor ----------------------------------------------------------------------

    def load_model(self) -> None:
        from callannotate.pipeline.speakers.embedding import SpeakerEmbedder

        checkpoint = model_file(self.settings.segmentation)
        self._segmentation = SegmentationModel(checkpoint, self.cache_dir, self.threads)
        if self.count_weight < 1.0:
            self._counter = CountModel(model_file(self.settings.count_model), self.threads)
        if self._embedder is None:
            embedder = SpeakerEmbedder(self.settings.embedding, self.cache_dir, self.threads)
            embedder.ensure_loaded()
            self._embedder = embedder
        self.frame_embedder()
        logger.info("diarization models loaded (segmentation %s)", checkpoint.name)

    def use_embedder(self, embedder: Any) -> None:
        """Replace the embedder this instance created (benchmarks wrap it); a pipeline run
        passes the process-wide one with each input instead (``DiarizationInput.embedder``)."""
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
        return self.settings.describe_model()

    def process(self, data: DiarizationInput, hook: ProgressHook = null_hook) -> DiarizationResult:
        self.ensure_loaded()
        audio = data.audio
        if audio.sample_rate != SAMPLE_RATE:
            raise Unprocessable(f"diarization needs 16 kHz audio, got {audio.sample_rate} Hz")
        if audio.frames == 0:
            return DiarizationResult()
        started = time.perf_counter()
        embedder = data.embedder or self._embedder
        clustering, reconstruction = self.clustering, self.reconstruction
        if self.has_narrowband_settings:  # (the mix is only measured when it matters)
            clustering, reconstruction = self.settings_for(audio.mono())
        params = replace(
            clustering,
            num_speakers=data.num_speakers,
            min_speakers=data.min_speakers,
            max_speakers=data.max_speakers,
        )
        duration = audio.duration
        if data.per_channel and audio.channels > 1:
            per_channel = replace(
                clustering,
                max_speakers=self.per_channel_max_speakers,
            )
            binaries: list[FloatArray] = []
            scores: list[FloatArray] = []
            labels: list[str] = []
            channels: list[int] = []
            for c in range(audio.channels):
                part = self._diarize_signal(
                    audio.channel(c),
                    per_channel,
                    reconstruction,
                    embedder,
                    hook,
                    c / audio.channels,
                    1 / audio.channels,
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
            part = self._diarize_signal(
                audio.mono(), params, reconstruction, embedder, hook, 0.0, 1.0
            )
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

    def narrowband(self, signal: FloatArray) -> bool:
        """Whether ``signal`` (16 kHz mono) is band-limited like telephone audio."""
        if self.narrowband_db >= 0:
            return False
        level = upper_band_db(signal, SAMPLE_RATE)
        narrow = level < self.narrowband_db
        logger.info(
            "upper band (4.3-7.6 kHz) %.1f dB below speech band: %s",
            -level,
            "narrowband" if narrow else "wideband",
        )
        return narrow

    @property
    def has_narrowband_settings(self) -> bool:
        return self.narrowband_threshold is not None or self.narrowband_count_bias is not None

    def settings_for(self, signal: FloatArray) -> tuple[ClusteringParams, ReconstructionParams]:
        """Clustering and reconstruction parameters for ``signal``: the narrowband ones
        when it is narrowband and they are set, else the configured ones."""
        clustering, reconstruction = self.clustering, self.reconstruction
        if not self.has_narrowband_settings or not self.narrowband(signal):
            return clustering, reconstruction
        if self.narrowband_threshold is not None:
            clustering = replace(clustering, threshold=self.narrowband_threshold)
        if self.narrowband_count_bias is not None:
            reconstruction = replace(reconstruction, count_bias=self.narrowband_count_bias)
        return clustering, reconstruction

    def _diarize_signal(
        self,
        signal: FloatArray,
        params: ClusteringParams,
        recon: ReconstructionParams,
        embedder: SpeakerEmbedder,
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
        weights = frame_weights(seg.frames_per_window, recon)
        mean = mean_count(
            seg.soft if self.soft_count else seg.activity, offsets, total_frames, weights
        )
        second = (  # loaded only when count_weight < 1
            None
            if self._counter is None
            else self._counter.mean_count(
                signal, total_frames, self.count_window, self.count_step, self.count_batch
            )
        )
        count = frame_count(
            mean,
            second,
            self.count_weight,
            recon.count_bias,
            recon.overlap_bias,
        )
        active = seg.activity.sum(axis=1) > 0  # (windows, local)

        assignment: npt.NDArray[np.int64]
        if single_speaker(params) or not active.any():
            assignment = np.where(active, 0, -1).astype(np.int64)
            num = 1 if active.any() else 0
        else:
            assignment, num = self._cluster(signal, seg, active, params, embedder, report)
        report(0.95)
        local_scores = seg.soft * seg.activity if self.soft_scores else seg.activity
        scores = clustered_scores(local_scores, assignment, num, offsets, total_frames, weights)
        reach = round(self.fill_s / FRAME_STEP)
        least = max(1, round(self.fill_min_s / FRAME_STEP))
        binary = fill_count(select_top(scores, count), scores, count, reach, least)
        keep = kept_speakers(binary.sum(axis=0) * FRAME_STEP, self.min_speaker_s, params)
        if keep is not None:  # spurious clusters: their frames go to the remaining speakers
            scores = scores[:, keep]
            binary = fill_count(select_top(scores, count), scores, count, reach, least)
        return ChannelActivity(binary=binary, scores=scores)

    def _cluster(
        self,
        signal: FloatArray,
        seg: WindowSegmentation,
        active: npt.NDArray[np.bool_],
        params: ClusteringParams,
        embedder: SpeakerEmbedder,
        report: Any,
    ) -> tuple[npt.NDArray[np.int64], int]:
        """Frame-level global speaker of each (window, frame, local speaker).

        Local speakers (or, with ``piece_s``, their pieces on a global grid) are embedded by
        masked pooling of CAM++ features computed once (see :mod:`.pooled`), clustered, and
        re-assigned piece by piece (``refine_*``).
        """
        encoder, features, times = self._features(signal)
        report(0.7)
        return pooled_assignment(encoder, features, times, seg, active, params, self.pooled)

    def _features(
        self, signal: FloatArray
    ) -> tuple[Any, npt.NDArray[np.float16], npt.NDArray[np.float64]]:
        from callannotate.pipeline.diarization.frames import chunk_features

        encoder = self.frame_embedder()
        features, times = chunk_features(
            encoder, signal, self.feature_chunk_s, self.feature_context_s
        )
        return encoder, features, times

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
