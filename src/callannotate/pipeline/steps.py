"""The pipeline as a list of typed steps, and the runner that runs them.

Each step is one object with its ``name`` (a :class:`~callannotate.pipeline.types.Step`),
the :class:`RunState` fields it ``needs`` and ``adds``, ``able_to_run(state)`` (``None``,
or why it is skipped), ``setup(state)`` (fetch and load its model; returns the model
description for the report) and ``run(state)``. :func:`run_steps` runs a list of them and
writes one :class:`~callannotate.pipeline.types.StepReport` per step; a step's time covers
its ``run`` only (model loading happens once per process, in ``setup``).

Steps are created fresh for every run (:func:`default_steps`), so nothing of one job is kept
on an object another job uses; the model-backed processors they use are the process-wide
instances of :mod:`callannotate.pipeline.registry`, and what is particular to a job (its
voices folder, the shared embedder) is passed to them as arguments.

A new step (redaction, say) is one more class here and one more :class:`Step` value.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from callannotate.config import Settings
from callannotate.errors import ModelUnavailable
from callannotate.pipeline import registry
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.channels import ChannelLayout, as_mono, channel_layout
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.types import (
    ALWAYS_RUN,
    AnnotateOptions,
    AudioBuffer,
    AudioQuality,
    ChannelMode,
    ConversationStats,
    PartialHook,
    ProgressHook,
    Speaker,
    Step,
    StepReport,
    Turn,
    Utterance,
    VoiceMatch,
    Word,
    null_hook,
)

if TYPE_CHECKING:
    from callannotate.pipeline.analysis.sentiment import SentimentProcessor
    from callannotate.pipeline.asr.transcription import Transcriber
    from callannotate.pipeline.audio.preprocess import Preprocessor
    from callannotate.pipeline.audio.vad import VoiceActivityDetector
    from callannotate.pipeline.diarization import Diarizer
    from callannotate.pipeline.speakers.embedding import SpeakerEmbedder
    from callannotate.voices.service import Identifier

P = TypeVar("P", bound=MLProcessor[Any, Any])

# Step -> its section of config/models.yaml.
STEP_MODELS: dict[Step, str] = {
    Step.PREPROCESS: "preprocess",
    Step.VAD: "vad",
    Step.DIARIZE: "diarize",
    Step.TRANSCRIBE: "transcription",
    Step.IDENTIFY: "recognition",
    Step.SENTIMENT: "sentiment",
}


def processor(settings: Settings, section: str, kind: type[P]) -> P:
    """The process-wide, loaded processor of ``section``, checked to be a ``kind``."""
    proc = registry.loaded_processor(settings, section)
    if not isinstance(proc, kind):
        raise ModelUnavailable(
            f"{settings.models_config.name}: section {section!r} must name a "
            f"{kind.__name__}, not {type(proc).__name__}"
        )
    return proc


@dataclass
class RunState:
    """What one annotation run knows so far: each step reads some fields and fills others."""

    audio_path: Path
    options: AnnotateOptions
    settings: Settings
    hook: ProgressHook = null_hook
    on_words: PartialHook | None = None
    voice_owner: str | None = None  # identify among this user's voices (None: all of them)
    # decode
    probe: audio_io.ProbeResult | None = None
    buffer: AudioBuffer | None = None
    quality: AudioQuality | None = None
    layout: ChannelLayout = ChannelLayout.MONO
    per_channel: bool = False
    # vad
    has_speech: bool = True
    # diarize (identify adds voices to the speakers)
    speakers: list[Speaker] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    exclusive: list[Turn] = field(default_factory=list)
    # transcribe
    words: list[Word] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    language: str | None = None
    # align (sentiment fills in the utterances' and statistics' sentiment)
    utterances: list[Utterance] = field(default_factory=list)
    statistics: ConversationStats | None = None
    # one report per step run so far (the runner's)
    reports: list[StepReport] = field(default_factory=list)

    def audio(self) -> AudioBuffer:
        """The decoded (and maybe preprocessed) audio; decode must have run."""
        if self.buffer is None:
            raise RuntimeError("no audio: the decode step has not run")
        return self.buffer


class PipelineStep(ABC):
    """One step of the pipeline (see the module docstring)."""

    name: ClassVar[Step]
    needs: ClassVar[tuple[str, ...]] = ()
    """:class:`RunState` fields that must be set (not ``None``) before it runs."""
    adds: ClassVar[tuple[str, ...]] = ()
    """:class:`RunState` fields it fills."""

    def able_to_run(self, state: RunState) -> str | None:
        """``None`` when the step can run on ``state``, else the reason it is skipped."""
        return None

    def setup(self, state: RunState) -> str | None:
        """Fetch (and load once per process) the model; the model's description."""
        return None

    @abstractmethod
    def run(self, state: RunState) -> None:
        """Do the work: read ``needs`` from ``state`` and fill ``adds``."""


def _report(name: Step, status: str, t0: float | None = None, **extra: Any) -> StepReport:
    seconds = round(time.perf_counter() - t0, 3) if t0 is not None else 0.0
    return StepReport.model_validate({"name": name, "status": status, "seconds": seconds, **extra})


def run_steps(steps: list[PipelineStep], state: RunState) -> list[StepReport]:
    """Run ``steps`` in order on ``state``; one report per step.

    A step the options do not ask for (``decode`` and ``align`` always run) or that is not
    able to run is reported ``skipped`` with the reason. A step that raises is reported
    ``failed`` (in ``state.reports``) and the error propagates: no later step runs.
    """
    reports = state.reports
    for step in steps:
        if step.name not in ALWAYS_RUN and not state.options.wants(step.name):
            reports.append(_report(step.name, "skipped", detail="not requested"))
            continue
        reason = step.able_to_run(state)
        if reason is not None:
            reports.append(_report(step.name, "skipped", detail=reason))
            continue
        missing = [f for f in step.needs if getattr(state, f) is None]
        if missing:
            raise RuntimeError(f"step {step.name} needs {', '.join(missing)}: wrong step order")
        model: str | None = None
        t0: float | None = None
        try:
            model = step.setup(state)
            t0 = time.perf_counter()
            step.run(state)
        except Exception as exc:
            reports.append(_report(step.name, "failed", t0, model=model, detail=str(exc)[:500]))
            raise
        reports.append(_report(step.name, "done", t0, model=model))
    return reports


# ----------------------------------------------------------------------------- the steps


class DecodeStep(PipelineStep):
    """Probe and decode the file to 16 kHz, measure its quality, decide the channel mode.

    With ``channel_mode=auto`` a stereo file is diarized and transcribed per channel only
    when its channels carry two parties (:mod:`.audio.channels`); dual-mono, one-silent and
    echo-copy stereo files are mixed to one channel.
    """

    name = Step.DECODE
    adds = ("probe", "buffer", "quality", "layout", "per_channel")

    def setup(self, state: RunState) -> str | None:
        return "ffmpeg (PyAV)"

    def run(self, state: RunState) -> None:
        state.hook(Step.DECODE, completed=0, total=1)
        state.probe = audio_io.probe(state.audio_path, settings=state.settings)
        buffer = audio_io.decode(
            state.audio_path, sample_rate=audio_io.MODEL_SAMPLE_RATE, settings=state.settings
        )
        state.quality = audio_io.measure_quality(buffer)
        state.layout = channel_layout(buffer)
        mode = state.options.channel_mode
        state.per_channel = buffer.channels > 1 and (
            mode == ChannelMode.PER_CHANNEL
            or (mode == ChannelMode.AUTO and state.layout == ChannelLayout.TWO_PARTY)
        )
        state.buffer = buffer if state.per_channel else as_mono(buffer, state.layout)
        state.hook(Step.DECODE, completed=1, total=1)

    @staticmethod
    def channel_mode(state: RunState) -> str:
        """What was done with the channels, as the annotation reports it."""
        if state.per_channel:
            return "per-channel"
        if state.layout in (ChannelLayout.DUAL_MONO, ChannelLayout.ONE_SILENT):
            return f"mix ({state.layout.value})"
        return "mix"


class PreprocessStep(PipelineStep):
    name = Step.PREPROCESS
    needs = ("buffer",)
    adds = ("buffer", "quality")

    def setup(self, state: RunState) -> str | None:
        from callannotate.pipeline.audio.preprocess import Preprocessor

        self.proc: Preprocessor = processor(state.settings, STEP_MODELS[self.name], Preprocessor)
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        result = self.proc.process(state.audio(), state.hook)
        state.buffer, state.quality = result.audio, result.quality


class VadStep(PipelineStep):
    name = Step.VAD
    needs = ("buffer",)
    adds = ("has_speech",)

    def setup(self, state: RunState) -> str | None:
        from callannotate.pipeline.audio.vad import VoiceActivityDetector

        self.proc: VoiceActivityDetector = processor(
            state.settings, STEP_MODELS[self.name], VoiceActivityDetector
        )
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        state.has_speech = bool(self.proc.process(state.audio(), state.hook).union())


def _shared_embedder(settings: Settings) -> SpeakerEmbedder:
    """The process-wide CAM++ embedder diarization and voice identification share."""
    from callannotate.pipeline.speakers.embedding import SpeakerEmbedder

    return processor(settings, "embedding", SpeakerEmbedder)


class DiarizeStep(PipelineStep):
    name = Step.DIARIZE
    needs = ("buffer",)
    adds = ("speakers", "turns", "exclusive")

    def able_to_run(self, state: RunState) -> str | None:
        return None if state.has_speech else "no speech found"

    def setup(self, state: RunState) -> str | None:
        from callannotate.pipeline.diarization import Diarizer

        self.proc: Diarizer = processor(state.settings, STEP_MODELS[self.name], Diarizer)
        self.embedder = _shared_embedder(state.settings)
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        from callannotate.pipeline.diarization import DiarizationInput

        opts = state.options
        result = self.proc.process(
            DiarizationInput(
                audio=state.audio(),
                num_speakers=opts.num_speakers,
                min_speakers=opts.min_speakers,
                max_speakers=opts.max_speakers,
                per_channel=state.per_channel,
                embedder=self.embedder,
            ),
            state.hook,
        )
        state.speakers, state.turns = result.speakers, result.turns
        state.exclusive = result.exclusive_turns


class TranscribeStep(PipelineStep):
    """Whisper over the mixed audio (words get the diarized speakers' regions), or over
    each channel with the channel's party as the speaker (per-channel mode)."""

    name = Step.TRANSCRIBE
    needs = ("buffer",)
    adds = ("words", "languages", "language")

    def able_to_run(self, state: RunState) -> str | None:
        return None if state.has_speech else "no speech found"

    def setup(self, state: RunState) -> str | None:
        from callannotate.pipeline.asr.transcription import Transcriber

        self.proc: Transcriber = processor(state.settings, STEP_MODELS[self.name], Transcriber)
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        from callannotate.pipeline.asr.transcription import SpeakerRegion, TranscriptionInput

        buffer, options = state.audio(), state.options
        if state.per_channel:
            words: list[Word] = []
            languages: set[str] = set()
            first_language: str | None = None
            for ch in range(buffer.channels):
                label = next((s.label for s in state.speakers if s.channel == ch), f"CH{ch}")
                result = self.proc.process(
                    TranscriptionInput(
                        audio=buffer.channel(ch),
                        language=options.language,
                        initial_prompt=options.initial_prompt,
                        channel_speaker=label,
                    ),
                    state.hook,
                    on_words=state.on_words,
                )
                words.extend(result.words)
                languages.update(result.languages)
                first_language = first_language or result.language or None
            words.sort(key=lambda w: (w.start, w.end))
            state.words, state.languages, state.language = words, sorted(languages), first_language
            return
        regions = [SpeakerRegion(t.start, t.end, t.speaker) for t in state.exclusive] or None
        result = self.proc.process(
            TranscriptionInput(
                audio=buffer.mono(),
                language=options.language,
                initial_prompt=options.initial_prompt,
                regions=regions,
            ),
            state.hook,
            on_words=state.on_words,
        )
        state.words, state.languages = list(result.words), list(result.languages)
        state.language = result.language or None


class IdentifyStep(PipelineStep):
    """Match each diarized speaker against the enrolled voices of this run's settings."""

    name = Step.IDENTIFY
    needs = ("buffer",)
    adds = ("speakers",)

    def able_to_run(self, state: RunState) -> str | None:
        return None if state.speakers else "no speakers"

    def setup(self, state: RunState) -> str | None:
        from callannotate.voices.service import Identifier

        self.proc: Identifier = processor(state.settings, STEP_MODELS[self.name], Identifier)
        self.embedder = _shared_embedder(state.settings)
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        from callannotate.security.atrest import vault_for

        matches: dict[str, VoiceMatch] = self.proc.identify_speakers(
            state.audio(),
            state.exclusive,
            state.speakers,
            state.hook,
            voices_dir=state.settings.voices_dir,
            embedder=self.embedder,
            vault=vault_for(state.settings),
            owner=state.voice_owner,
        )
        state.speakers = [
            s if matches.get(s.label) is None else s.model_copy(update={"voice": matches[s.label]})
            for s in state.speakers
        ]


class AlignStep(PipelineStep):
    """Words to speakers, utterances and conversation statistics (always runs)."""

    name = Step.ALIGN
    needs = ("buffer", "probe")
    adds = ("words", "turns", "exclusive", "utterances", "statistics", "speakers")

    def setup(self, state: RunState) -> str | None:
        return "max-overlap word alignment + analytics"

    def run(self, state: RunState) -> None:
        from callannotate.pipeline.analysis.alignment import build_annotation_parts

        state.hook(Step.ALIGN, completed=0, total=1)
        assert state.probe is not None  # `needs`
        parts = build_annotation_parts(
            state.words,
            state.exclusive,
            state.turns,
            state.audio(),
            duration=state.probe.duration,
            language=state.language,
            keep_word_speakers=state.per_channel,
        )
        state.words, state.utterances, state.statistics = (
            parts.words,
            parts.utterances,
            parts.statistics,
        )
        state.turns, state.exclusive = parts.turns, parts.exclusive_turns
        totals: dict[str, float] = {}
        for t in state.exclusive:
            totals[t.speaker] = totals.get(t.speaker, 0.0) + (t.end - t.start)
        state.speakers = [
            s.model_copy(update={"speech_duration": round(totals.get(s.label, 0.0), 3)})
            for s in state.speakers
        ]
        state.hook(Step.ALIGN, completed=1, total=1)


class SentimentStep(PipelineStep):
    """Sentiment and emotion of each utterance, then of each speaker and the call."""

    name = Step.SENTIMENT
    needs = ("buffer", "statistics")
    adds = ("utterances", "statistics")

    def able_to_run(self, state: RunState) -> str | None:
        return None if state.words else "no words to score"

    def setup(self, state: RunState) -> str | None:
        from callannotate.pipeline.analysis.sentiment import SentimentProcessor

        self.proc: SentimentProcessor = processor(
            state.settings, STEP_MODELS[self.name], SentimentProcessor
        )
        return self.proc.describe()

    def run(self, state: RunState) -> None:
        from callannotate.pipeline.analysis.sentiment import SentimentInput

        assert state.statistics is not None  # `needs`
        state.utterances = self.proc.process(
            SentimentInput(utterances=state.utterances, audio=state.audio()), state.hook
        )
        state.statistics = self.proc.analyzer.annotate_statistics(
            state.statistics, state.utterances
        )


def default_steps() -> list[PipelineStep]:
    """A fresh list of the pipeline's steps, in the order they run."""
    return [
        DecodeStep(),
        PreprocessStep(),
        VadStep(),
        DiarizeStep(),
        TranscribeStep(),
        IdentifyStep(),
        AlignStep(),
        SentimentStep(),
    ]
