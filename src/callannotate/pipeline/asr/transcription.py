"""Speech to text with Whisper (faster-whisper / CTranslate2, int8 on CPU).

:class:`Transcriber` is the ``transcription`` step. It takes 16 kHz mono float32 audio and
returns words with start/end times, probabilities, language and (when speaker regions or a
channel speaker are given) the speaker of every word.

How it decodes (see ``benchmarks/transcription.py`` for the figures behind the defaults):

* Silero VAD (the copy inside faster-whisper) finds speech; speech separated by less than
  ``clip_merge_gap_s`` forms one clip and Whisper decodes the clips *in place*
  (``clip_timestamps``). Long silences are never decoded (the main guard against
  hallucinated text). faster-whisper's own ``vad_filter`` glues the speech chunks together
  instead, which garbled words at the joins on the call sample (21.0 % vs 18.5 % WER).
* ``strategy: whole`` (default) decodes the whole file once and gives each word the speaker
  of the region it overlaps most. ``strategy: regions`` decodes each speaker region on its
  own; it loses the context across turns and was worse (23.5 % vs 18.5 % WER on the call
  sample with its reference turns) and 4-5x slower (one 30 s encoder pass per turn).
* ``batched: true`` (BatchedInferencePipeline) was not reliably faster on 2 cores for call
  lengths (RTF 0.16 vs 0.19-0.24 on the call sample, 0.67 vs 0.60 on short clips, on a
  loaded machine) and ignores ``hallucination_silence_threshold``; off by default.
* Language: a hint is used as given; ``auto`` detects on the longest stretch of speech (not
  on the first 30 s, which may be a ring tone or a greeting). With speaker regions and a
  multilingual model, long turns are checked on their own and re-decoded in their language
  when it clearly differs (calls switch languages).
* Guards against loops and hallucinations: compression-ratio, log-prob and no-speech
  thresholds with temperature fallback, no conditioning on previous text, a cap on the tokens
  per 30 s window (which bounds the time per chunk) and a wall-clock limit for the whole
  file, after which the words decoded so far are returned (``truncated``).
* Partial words: ``process(..., on_words=...)`` receives the words of every Whisper segment
  as soon as it is decoded, with its speaker (the regions are known before decoding). Turns
  re-decoded in another language are not sent again; the final result is authoritative.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callannotate.errors import BadRequest, ModelUnavailable
from callannotate.pipeline.asr.languages import WHISPER_LANGUAGES
from callannotate.pipeline.asr.spoken_numbers import spell_numbers_in_words
from callannotate.pipeline.asr.whisper_models import whisper_model_dir
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.settings import DecodeOptions, TranscriptionSettings
from callannotate.pipeline.types import (
    SAMPLE_RATE,
    Float32Array,
    PartialHook,
    ProgressHook,
    Step,
    Turn,
    Word,
    null_hook,
)

logger = logging.getLogger(__name__)

STEP = Step.TRANSCRIBE


@dataclass(frozen=True)
class SpeakerRegion:
    """A stretch of audio spoken by ``speaker`` (seconds)."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class TranscriptionInput:
    """What to transcribe: 16 kHz mono float32 ``audio`` and per-call options.

    ``regions`` (diarized exclusive turns) give every word a speaker; ``channel_speaker``
    labels every word of a single-channel input (per-channel transcription).
    """

    audio: Float32Array
    language: str = "auto"
    initial_prompt: str | None = None
    regions: Sequence[SpeakerRegion] | None = None
    channel_speaker: str | None = None
    spell_numbers: bool | None = None
    """Write numbers as words ("60 000" -> "шестьдесят тысяч"); None: the configured default."""


@dataclass(frozen=True)
class TranscriptSegment:
    """One decoded Whisper segment (a phrase), with its quality scores."""

    start: float
    end: float
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    speaker: str | None = None


@dataclass
class TranscriptionResult:
    """Words (with speaker when known), segments and the detected language."""

    language: str
    language_probability: float
    words: list[Word] = field(default_factory=list)
    segments: list[TranscriptSegment] = field(default_factory=list)
    duration: float = 0.0
    languages: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words).strip()


def check_language(language: str | None) -> str:
    lang = (language or "auto").strip().lower()
    if lang != "auto" and lang not in WHISPER_LANGUAGES:
        raise BadRequest(
            f"language must be 'auto' or an ISO 639-1 code Whisper knows, got {language!r}"
        )
    return lang


class WhisperEngine:
    """A loaded faster-whisper model plus the decoding calls the product needs.

    Shared by the batch :class:`Transcriber` and the streaming engine.
    """

    def __init__(self, model_dir: Path, options: DecodeOptions, threads: int) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model_dir = model_dir
        self.options = options
        self.model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=options.compute_type,
            cpu_threads=max(1, threads),
            num_workers=1,
        )
        self.batched = BatchedInferencePipeline(self.model) if options.batched else None
        self.multilingual = bool(self.model.model.is_multilingual)
        self._local = threading.local()
        self._encode_full = self.model.encode
        self.model.encode = self._encode

    def _encode(self, features: Any) -> Any:
        """The encoder, on fewer than 30 s of features when a short context was asked for.

        CTranslate2's Whisper encoder accepts shorter inputs; encoding 4 s instead of the
        padded 30 s is ~10x cheaper, which is what makes live decoding affordable on CPU.
        """
        frames = getattr(self._local, "frames", None)
        if frames is not None and features.shape[-1] > frames:
            features = np.ascontiguousarray(features[..., :frames])
        return self._encode_full(features)

    # ------------------------------------------------------------------ language
    def speech_spans(self, audio: Float32Array) -> list[tuple[int, int]]:
        """Speech chunks (sample offsets) found by faster-whisper's Silero VAD."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        opts = VadOptions(**self.options.vad_parameters())
        return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, opts)]

    def detect_language(
        self, audio: Float32Array, spans: list[tuple[int, int]] | None = None
    ) -> tuple[str, float]:
        """Language of the longest stretch of speech (up to 30 s of it)."""
        if not self.multilingual:
            return "en", 1.0
        if spans is None:
            spans = self.speech_spans(audio)
        if spans:
            start, end = max(spans, key=lambda s: s[1] - s[0])
            # extend short spans with the following speech to reach ~30 s of context
            clip = audio[start : min(end, start + 30 * SAMPLE_RATE)]
            if clip.shape[0] < 10 * SAMPLE_RATE:
                speech = np.concatenate([audio[s:e] for s, e in spans])
                clip = speech[: 30 * SAMPLE_RATE]
        else:
            clip = audio[: 30 * SAMPLE_RATE]
        if clip.shape[0] < SAMPLE_RATE // 2:
            clip = audio[: 30 * SAMPLE_RATE]
        lang, prob, _ = self.model.detect_language(
            audio=np.ascontiguousarray(clip, dtype=np.float32),
            language_detection_threshold=self.options.language_threshold,
        )
        return str(lang), float(prob)

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        audio: Float32Array,
        language: str | None,
        *,
        initial_prompt: str | None = None,
        offset: float = 0.0,
        vad: bool | None = None,
        word_timestamps: bool = True,
        deadline: float | None = None,
        beam_size: int | None = None,
        temperatures: Sequence[float] | None = None,
        short_context: bool = False,
        on_segment: Callable[[Any], None] | None = None,
    ) -> tuple[list[Any], str, float, bool]:
        """Segments (times shifted by ``offset``), language, its probability, truncated.

        ``on_segment`` is called with each segment (already shifted) as soon as it is decoded.
        """
        o = self.options
        vad = o.vad_filter if vad is None else vad
        kwargs: dict[str, Any] = {
            "language": language,
            "beam_size": beam_size or o.beam_size,
            "best_of": o.best_of,
            "temperature": list(temperatures if temperatures is not None else o.temperatures),
            "compression_ratio_threshold": o.compression_ratio_threshold,
            "log_prob_threshold": o.log_prob_threshold,
            "no_speech_threshold": o.no_speech_threshold,
            "condition_on_previous_text": o.condition_on_previous_text,
            "initial_prompt": initial_prompt or None,
            "word_timestamps": word_timestamps,
            "repetition_penalty": o.repetition_penalty,
            "no_repeat_ngram_size": o.no_repeat_ngram_size,
            "max_new_tokens": o.max_new_tokens,
            "vad_filter": vad,
            "vad_parameters": o.vad_parameters() if vad else None,
        }
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if vad and o.chunking == "clips" and self.batched is None:
            clips = speech_clips(self.speech_spans(samples), o.clip_merge_gap_s)
            if not clips:
                return [], language or "", 0.0, False
            kwargs["vad_filter"] = False
            kwargs["vad_parameters"] = None
            kwargs["clip_timestamps"] = [t for clip in clips for t in clip]
        if self.batched is not None and vad:
            segments, info = self.batched.transcribe(samples, batch_size=o.batch_size, **kwargs)
        else:
            kwargs["hallucination_silence_threshold"] = o.hallucination_silence_threshold
            segments, info = self.model.transcribe(samples, **kwargs)
        out: list[Any] = []
        truncated = False
        if short_context and samples.shape[0] < 28 * SAMPLE_RATE:
            # features are 100 frames/s: >= 1 s of padding, >= 10 s in all, in 2 s steps
            seconds = samples.shape[0] / SAMPLE_RATE + 1.0
            self._local.frames = min(3000, max(1000, 200 * math.ceil(seconds / 2)))
        try:
            for seg in segments:
                if offset:
                    seg.start += offset
                    seg.end += offset
                    for w in seg.words or []:
                        w.start += offset
                        w.end += offset
                out.append(seg)
                if on_segment is not None:
                    on_segment(seg)
                if deadline is not None and time.monotonic() > deadline:
                    truncated = True
                    logger.warning("transcription stopped at %.1f s: time limit reached", seg.end)
                    break
        finally:
            self._local.frames = None
        return out, str(info.language), float(info.language_probability), truncated


def speech_clips(spans: Sequence[tuple[int, int]], merge_gap_s: float) -> list[tuple[float, float]]:
    """VAD spans (samples) merged across gaps shorter than ``merge_gap_s``, in seconds.

    Whisper then decodes each clip in place (silence inside a clip kept, long silences
    skipped) instead of decoding speech glued together, which garbles words at the joins.
    """
    clips: list[tuple[float, float]] = []
    for start, end in spans:
        a, b = start / SAMPLE_RATE, end / SAMPLE_RATE
        if clips and a - clips[-1][1] < merge_gap_s:
            clips[-1] = (clips[-1][0], max(clips[-1][1], b))
        else:
            clips.append((a, b))
    return [(round(a, 3), round(b, 3)) for a, b in clips]


def _words_of(segments: Iterable[Any], language: str, speaker: str | None) -> list[Word]:
    words: list[Word] = []
    for seg in segments:
        for w in seg.words or []:
            text = str(w.word).strip()
            if not text:
                continue
            start = max(0.0, float(w.start))
            words.append(
                Word(
                    text=text,
                    start=round(start, 3),
                    end=round(max(start, float(w.end)), 3),
                    probability=min(1.0, max(0.0, float(w.probability))),
                    speaker=speaker,
                    language=language,
                )
            )
    return words


def _segments_of(
    segments: Iterable[Any], language: str, speaker: str | None
) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(
            start=round(max(0.0, float(s.start)), 3),
            end=round(max(0.0, float(s.end)), 3),
            text=str(s.text).strip(),
            language=language,
            avg_logprob=float(s.avg_logprob),
            no_speech_prob=float(s.no_speech_prob),
            compression_ratio=float(s.compression_ratio),
            speaker=speaker,
        )
        for s in segments
        if str(s.text).strip()
    ]


def assign_region_speakers(words: Sequence[Word], regions: Sequence[SpeakerRegion]) -> list[Word]:
    """Each word gets the speaker of the region it overlaps most (nearest when none)."""
    from callannotate.pipeline.analysis.alignment import assign_speakers

    turns = [Turn(start=r.start, end=max(r.start, r.end), speaker=r.speaker) for r in regions]
    return assign_speakers(words, sorted(turns, key=lambda t: t.start))


def _partial_emitter(
    on_words: PartialHook | None,
    language: str,
    speaker: str | None,
    regions: Sequence[SpeakerRegion] | None,
    spell: bool,
) -> Callable[[Any], None] | None:
    """A per-segment callback that hands the segment's words to ``on_words`` (best effort)."""
    if on_words is None:
        return None

    def emit(segment: Any) -> None:
        words = _words_of([segment], language, speaker)
        if regions:
            words = assign_region_speakers(words, regions)
        if spell:
            words = spell_numbers_in_words(words, language)
        if not words:
            return
        try:
            on_words(words)
        except Exception:  # a consumer's failure must not fail the transcription
            logger.warning("partial words hook failed", exc_info=True)

    return emit


def _segment_speaker(seg: TranscriptSegment, words: Sequence[Word]) -> str | None:
    votes: dict[str, float] = {}
    for w in words:
        if w.speaker and w.start < seg.end and w.end > seg.start:
            votes[w.speaker] = votes.get(w.speaker, 0.0) + (w.end - w.start)
    return max(votes, key=lambda k: votes[k]) if votes else seg.speaker


class Transcriber(MLProcessor[TranscriptionInput, TranscriptionResult]):
    """The ``transcription`` step: Whisper on CPU with word timestamps and speakers."""

    name: Step = STEP

    settings_type = TranscriptionSettings
    settings: TranscriptionSettings

    def __init__(
        self,
        settings: TranscriptionSettings | Mapping[str, Any],
        cache_dir: Path,
        threads: int = 2,
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self.options = self.settings.decode_options()
        self._engine: WhisperEngine | None = None

    def load_model(self) -> None:
        cfg = self.settings
        model_dir = whisper_model_dir(cfg.model, self.cache_dir, path=cfg.path, sha256=cfg.sha256)
        try:
            self._engine = WhisperEngine(model_dir, self.options, self.threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelUnavailable(f"cannot load Whisper model from {model_dir}: {exc}") from exc
        logger.info("whisper model loaded from %s (%s)", model_dir, self.options.compute_type)

    @property
    def engine(self) -> WhisperEngine:
        self.ensure_loaded()
        assert self._engine is not None
        return self._engine

    def cleanup(self) -> None:
        self._engine = None
        super().cleanup()

    def describe(self) -> str:
        return self.settings.describe_model()

    def process(
        self,
        data: TranscriptionInput,
        hook: ProgressHook = null_hook,
        *,
        on_words: PartialHook | None = None,
    ) -> TranscriptionResult:
        """Transcribe ``data``; ``on_words`` receives each decoded segment's words at once."""
        engine = self.engine
        opts = self.options
        audio = np.asarray(data.audio, dtype=np.float32).reshape(-1)
        duration = audio.shape[0] / SAMPLE_RATE
        lang_hint = check_language(data.language)
        if not engine.multilingual and lang_hint not in ("auto", "en"):
            raise BadRequest(
                f"the configured Whisper model is English-only; got language {lang_hint!r}"
            )
        deadline = time.monotonic() + opts.time_limit_base_s + opts.time_limit_factor * duration
        hook(STEP, completed=0, total=100)
        if duration < 0.1 or not np.any(audio):
            return TranscriptionResult(
                language=lang_hint if lang_hint != "auto" else "",
                language_probability=0.0,
                duration=duration,
            )

        if lang_hint == "auto":
            language, lang_prob = engine.detect_language(audio)
        else:
            language, lang_prob = lang_hint, 1.0
        hook(STEP, completed=5, total=100)

        regions = sorted(data.regions or [], key=lambda r: r.start)
        spell = data.spell_numbers if data.spell_numbers is not None else opts.spell_numbers
        if opts.strategy == "regions" and regions:
            words, segments, truncated = self._decode_regions(
                audio, regions, language, data, deadline, hook, on_words, spell
            )
        else:
            raw, _, _, truncated = engine.decode(
                audio,
                language,
                initial_prompt=data.initial_prompt,
                deadline=deadline,
                on_segment=_partial_emitter(
                    on_words, language, data.channel_speaker, regions, spell
                ),
            )
            words = _words_of(raw, language, data.channel_speaker)
            segments = _segments_of(raw, language, data.channel_speaker)
            hook(STEP, completed=80, total=100)
            if regions and lang_hint == "auto" and engine.multilingual and opts.turn_language:
                words, segments = self._turn_languages(
                    audio, regions, language, words, segments, data, deadline
                )
            if regions:
                words = assign_region_speakers(words, regions)

        if regions:
            segments = [
                TranscriptSegment(**{**s.__dict__, "speaker": _segment_speaker(s, words)})
                for s in segments
            ]
        if spell:
            words = spell_numbers_in_words(words, language)
        languages = sorted(
            {w.language for w in words if w.language} | ({language} if words else set())
        )
        hook(STEP, completed=100, total=100)
        return TranscriptionResult(
            language=language,
            language_probability=lang_prob,
            words=words,
            segments=segments,
            duration=duration,
            languages=languages,
            truncated=truncated,
        )

    def _decode_regions(
        self,
        audio: Float32Array,
        regions: list[SpeakerRegion],
        language: str,
        data: TranscriptionInput,
        deadline: float,
        hook: ProgressHook,
        on_words: PartialHook | None = None,
        spell: bool = False,
    ) -> tuple[list[Word], list[TranscriptSegment], bool]:
        """Decode each region on its own (``strategy: regions``)."""
        engine = self.engine
        words: list[Word] = []
        segments: list[TranscriptSegment] = []
        pad = 0.2
        for i, region in enumerate(regions):
            a = max(0, int((region.start - pad) * SAMPLE_RATE))
            b = min(audio.shape[0], int((region.end + pad) * SAMPLE_RATE))
            if b - a < SAMPLE_RATE // 4:
                continue
            lang = language
            if (
                self.options.turn_language
                and engine.multilingual
                and data.language == "auto"
                and region.end - region.start >= self.options.turn_language_min_s
            ):
                cand, prob = engine.detect_language(audio[a:b], spans=[])
                if prob >= self.options.turn_language_threshold:
                    lang = cand
            raw, _, _, truncated = engine.decode(
                audio[a:b],
                lang,
                initial_prompt=data.initial_prompt,
                offset=a / SAMPLE_RATE,
                vad=False,
                deadline=deadline,
                on_segment=_partial_emitter(on_words, lang, region.speaker, None, spell),
            )
            words.extend(_words_of(raw, lang, region.speaker))
            segments.extend(_segments_of(raw, lang, region.speaker))
            hook(STEP, completed=5 + 90 * (i + 1) // len(regions), total=100)
            if truncated:
                return words, segments, True
        return words, segments, False

    def _turn_languages(
        self,
        audio: Float32Array,
        regions: list[SpeakerRegion],
        language: str,
        words: list[Word],
        segments: list[TranscriptSegment],
        data: TranscriptionInput,
        deadline: float,
    ) -> tuple[list[Word], list[TranscriptSegment]]:
        """Re-decode long turns whose own language clearly differs from the file's."""
        engine = self.engine
        opts = self.options
        for region in regions:
            if region.end - region.start < opts.turn_language_min_s or time.monotonic() > deadline:
                continue
            a = int(region.start * SAMPLE_RATE)
            b = min(audio.shape[0], int(region.end * SAMPLE_RATE))
            lang, prob = engine.detect_language(audio[a:b], spans=[])
            if lang == language or prob < opts.turn_language_threshold:
                continue
            logger.info(
                "turn %.1f-%.1f s is in %s (p=%.2f); re-decoding it",
                region.start,
                region.end,
                lang,
                prob,
            )
            raw, _, _, _ = engine.decode(
                audio[a:b],
                lang,
                initial_prompt=data.initial_prompt,
                offset=a / SAMPLE_RATE,
                vad=False,
                deadline=deadline,
            )

            def inside(
                start: float, end: float, lo: float = region.start, hi: float = region.end
            ) -> bool:
                return lo <= (start + end) / 2 < hi

            words = [w for w in words if not inside(w.start, w.end)]
            words.extend(_words_of(raw, lang, region.speaker))
            segments = [s for s in segments if not inside(s.start, s.end)]
            segments.extend(_segments_of(raw, lang, region.speaker))
        words.sort(key=lambda w: w.start)
        segments.sort(key=lambda s: s.start)
        return words, segments
