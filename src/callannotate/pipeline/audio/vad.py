"""Voice activity detection with Silero VAD v6 on onnxruntime (no torch).

The model reads 16 kHz audio in 512-sample frames (32 ms), each preceded by the last 64
samples of the previous frame as context, and carries an LSTM state from frame to frame.
Two ONNX layouts of the same v6 network ship in pip packages and both are supported; the
layout is recognised from the graph's inputs:

* ``sequence`` (``input[seq, 576]``, ``h``, ``c``): many frames per call, the fast one.
  ``faster_whisper/assets/silero_vad_v6.onnx`` (faster-whisper==1.2.1, the default) and
  ``silero_vad/data/silero_vad_16k_sequence.onnx`` (silero-vad==6.2.3).
* ``stateful`` (``input[batch, 576]``, ``state[2, batch, 128]``, ``sr``): one frame per call.
  ``silero_vad/data/silero_vad.onnx`` (silero-vad==6.2.3).

Frame probabilities become speech regions with hysteresis (speech starts at ``threshold``
and ends below ``neg_threshold``), gaps shorter than ``min_silence_ms`` are bridged, regions
shorter than ``min_speech_ms`` dropped, the rest padded by ``speech_pad_ms`` and optionally
split to at most ``max_speech_s`` at their least speech-like frame. Each channel of the
input is processed separately, so a stereo call gives one region list per party. Silero's
output depends on the input level, so the detector scales its own copy of the audio to
``input_lufs`` (EBU R128) first; quiet recordings are then detected as well as loud ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callannotate.errors import ModelUnavailable
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.models import model_file, onnx_session
from callannotate.pipeline.settings import VadSettings
from callannotate.pipeline.types import (
    SAMPLE_RATE,
    AudioBuffer,
    Float32Array,
    ProgressHook,
    Step,
    null_hook,
)

logger = logging.getLogger(__name__)

FRAME = 512
CONTEXT = 64
FRAME_SECONDS = FRAME / SAMPLE_RATE
_CHUNK_FRAMES = 2048  # frames per onnxruntime call for the sequence layout (~65 s)
_STATE = 128


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech, seconds from the start of the recording."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class VadResult:
    """Speech regions and frame probabilities, one list per input channel."""

    regions: list[list[SpeechRegion]]
    probabilities: list[Float32Array]
    frame_seconds: float = FRAME_SECONDS

    def speech_duration(self, channel: int = 0) -> float:
        return sum(r.duration for r in self.regions[channel])

    def union(self) -> list[SpeechRegion]:
        """Regions where any channel speaks (merged, sorted)."""
        return merge_regions([r for ch in self.regions for r in ch])


def merge_regions(regions: list[SpeechRegion]) -> list[SpeechRegion]:
    """Sort and merge overlapping or touching regions."""
    out: list[SpeechRegion] = []
    for r in sorted(regions, key=lambda r: r.start):
        if out and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = SpeechRegion(out[-1].start, r.end)
        else:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- post-processing


def _split_long(
    start: int, end: int, probs: Float32Array, max_frames: int
) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` into pieces of at most ``max_frames`` at low-probability frames."""
    pieces: list[tuple[int, int]] = []
    while end - start > max_frames:
        lo = start + max_frames // 2
        hi = start + max_frames
        cut = lo + int(np.argmin(probs[lo:hi]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def regions_from_probabilities(
    probs: Float32Array, duration: float, options: VadSettings, frame_s: float = FRAME_SECONDS
) -> list[SpeechRegion]:
    """Frame speech probabilities → padded speech regions (seconds) within ``[0, duration]``."""
    on, off = options.threshold, options.offset_threshold
    raw: list[list[int]] = []
    active = False
    start = 0
    for i, p in enumerate(probs.tolist()):
        if not active and p >= on:
            active, start = True, i
        elif active and p < off:
            raw.append([start, i])
            active = False
    if active:
        raw.append([start, len(probs)])

    min_gap = options.min_silence_ms / 1000.0 / frame_s
    bridged: list[list[int]] = []
    for seg in raw:
        if bridged and seg[0] - bridged[-1][1] < min_gap:
            bridged[-1][1] = seg[1]
        else:
            bridged.append(seg)
    min_len = options.min_speech_ms / 1000.0 / frame_s
    kept = [(s, e) for s, e in bridged if e - s >= min_len]
    if options.max_speech_s is not None:
        max_frames = max(2, int(options.max_speech_s / frame_s))
        kept = [piece for s, e in kept for piece in _split_long(s, e, probs, max_frames)]

    pad = options.speech_pad_ms / 1000.0
    bounds = [[s * frame_s, min(e * frame_s, duration)] for s, e in kept]
    for i, b in enumerate(bounds):
        b[0] = max(0.0, b[0] - pad) if i == 0 else b[0]
        if i + 1 < len(bounds):
            nxt = bounds[i + 1]
            gap = nxt[0] - b[1]
            if gap < 2 * pad:  # padding would overlap: meet in the middle
                b[1] += gap / 2
                nxt[0] -= gap / 2
            else:
                b[1] += pad
                nxt[0] -= pad
        else:
            b[1] = min(duration, b[1] + pad)
    return [SpeechRegion(round(s, 3), round(e, 3)) for s, e in bounds if e - s > 0]


# ----------------------------------------------------------------------------- model runner


class SileroModel:
    """An onnxruntime session of Silero VAD v6 and the frame loop for its ONNX layout."""

    def __init__(self, session: Any) -> None:
        self.session = session
        names = {i.name for i in session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self.layout: Literal["sequence", "stateful"] = "sequence"
        elif {"input", "state"} <= names:
            self.layout = "stateful"
        else:
            raise ModelUnavailable(
                f"unrecognised Silero VAD ONNX inputs {sorted(names)}; "
                "use silero_vad_v6.onnx from faster-whisper or silero_vad.onnx from silero-vad"
            )
        self._needs_sr = "sr" in names

    def stream(self) -> VadStream:
        return VadStream(self)

    def probabilities(self, audio: Float32Array, hook: ProgressHook = null_hook) -> Float32Array:
        """Speech probability of each 512-sample frame of 16 kHz mono ``audio``.

        The last partial frame is zero-padded, so there are ``ceil(len / 512)`` values.
        """
        stream = self.stream()
        n = audio.shape[0]
        total = max(1, math.ceil(n / FRAME))
        step = _CHUNK_FRAMES * FRAME
        parts: list[Float32Array] = []
        for offset in range(0, n, step):
            parts.append(stream.push(audio[offset : offset + step]))
            hook(Step.VAD, completed=min(total, (offset + step) // FRAME), total=total)
        parts.append(stream.flush())
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _run_sequence(
        self, rows: Float32Array, h: Float32Array, c: Float32Array
    ) -> tuple[Float32Array, Float32Array, Float32Array]:
        probs, h, c = self.session.run(None, {"input": rows, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), h, c

    def _run_stateful(
        self, rows: Float32Array, state: Float32Array
    ) -> tuple[Float32Array, Float32Array]:
        out = np.empty(rows.shape[0], dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        for i in range(rows.shape[0]):
            feed: dict[str, Any] = {"input": rows[i : i + 1], "state": state}
            if self._needs_sr:
                feed["sr"] = sr
            prob, state = self.session.run(None, feed)
            out[i] = float(np.asarray(prob).reshape(-1)[0])
        return out, state


class VadStream:
    """Incremental VAD over one 16 kHz mono stream: push samples, get new frame probabilities.

    Keeps the LSTM state, the 64-sample context and any incomplete frame between pushes,
    so pushing audio in pieces gives the same probabilities as processing it at once.
    """

    def __init__(self, model: SileroModel) -> None:
        self.model = model
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._h = np.zeros((1, 1, _STATE), dtype=np.float32)
        self._c = np.zeros((1, 1, _STATE), dtype=np.float32)
        self._state = np.zeros((2, 1, _STATE), dtype=np.float32)
        self.frames = 0

    def push(self, samples: Float32Array) -> Float32Array:
        """Probabilities of the frames completed by ``samples`` (may be empty)."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = data.shape[0] // FRAME
        self._pending = data[n * FRAME :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        return self._run(data[: n * FRAME])

    def flush(self) -> Float32Array:
        """Zero-pad and score an incomplete last frame, if any."""
        if self._pending.size == 0:
            return np.zeros(0, dtype=np.float32)
        last = np.zeros(FRAME, dtype=np.float32)
        last[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return self._run(last)

    def _run(self, frames: Float32Array) -> Float32Array:
        joined = np.concatenate([self._context, frames])
        windows = np.lib.stride_tricks.sliding_window_view(joined, CONTEXT + FRAME)[::FRAME]
        rows = np.ascontiguousarray(windows, dtype=np.float32)
        self._context = frames[-CONTEXT:].copy()
        self.frames += rows.shape[0]
        if self.model.layout == "sequence":
            outs: list[Float32Array] = []
            for i in range(0, rows.shape[0], _CHUNK_FRAMES):
                probs, self._h, self._c = self.model._run_sequence(
                    rows[i : i + _CHUNK_FRAMES], self._h, self._c
                )
                outs.append(probs)
            return np.concatenate(outs)
        probs, self._state = self.model._run_stateful(rows, self._state)
        return probs


# ----------------------------------------------------------------------------- processor


def to_model_rate(audio: AudioBuffer) -> Float32Array:
    """``(channels, frames)`` samples at 16 kHz (polyphase resampling when needed)."""
    if audio.sample_rate == SAMPLE_RATE:
        return audio.samples
    from scipy.signal import resample_poly

    g = math.gcd(SAMPLE_RATE, audio.sample_rate)
    out = resample_poly(audio.samples, SAMPLE_RATE // g, audio.sample_rate // g, axis=1)
    return np.asarray(out, dtype=np.float32)


class VoiceActivityDetector(MLProcessor[AudioBuffer, VadResult]):
    """Step ``vad``: Silero VAD v6 speech regions for every channel of the input."""

    name: Step = Step.VAD

    settings_type = VadSettings
    settings: VadSettings

    def __init__(
        self, settings: VadSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self._model: SileroModel | None = None

    def load_model(self) -> None:
        path = model_file(self.settings)
        if self.settings.input_lufs is not None:
            import pyloudnorm  # noqa: F401
        self._model = SileroModel(onnx_session(path, self.threads))
        logger.info("loaded Silero VAD (%s layout) from %s", self._model.layout, path.name)

    @property
    def model(self) -> SileroModel:
        self.ensure_loaded()
        assert self._model is not None
        return self._model

    def cleanup(self) -> None:
        self._model = None
        super().cleanup()

    def describe(self) -> str:
        return self.settings.describe_model()

    def process(self, data: AudioBuffer, hook: ProgressHook = null_hook) -> VadResult:
        model = self.model
        samples = self._level(to_model_rate(data))
        channels = samples.shape[0]
        frames_per_channel = max(1, math.ceil(samples.shape[1] / FRAME))
        total = channels * frames_per_channel
        regions: list[list[SpeechRegion]] = []
        probabilities: list[Float32Array] = []
        for ch in range(channels):
            done = ch * frames_per_channel
            probs = model.probabilities(samples[ch], hook=_Relay(hook, self.name, done, total))
            probabilities.append(probs)
            regions.append(regions_from_probabilities(probs, data.duration, self.settings))
        hook(self.name, completed=total, total=total)
        return VadResult(regions=regions, probabilities=probabilities)

    def _level(self, samples: Float32Array) -> Float32Array:
        """The VAD's own copy of the audio at ``input_lufs`` (Silero is level-sensitive).

        One gain for all channels (a leaked, near-silent channel is not boosted on its own);
        at most ``input_max_gain_db``. The audio other steps see is not changed.
        """
        target = self.settings.input_lufs
        if target is None:
            return samples
        from callannotate.pipeline.audio.preprocess import normalize_loudness

        out, _ = normalize_loudness(
            samples,
            SAMPLE_RATE,
            target,
            max_gain_db=self.settings.input_max_gain_db,
        )
        return out


class _Relay:
    """Maps one channel's frame progress onto the whole job's progress."""

    def __init__(self, hook: ProgressHook, step: Step, base: int, total: int) -> None:
        self.hook, self.step, self.base, self.total = hook, step, base, total

    def __call__(self, step: Step, *, completed: int, total: int) -> None:
        self.hook(self.step, completed=self.base + completed, total=self.total)
