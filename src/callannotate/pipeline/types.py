"""Typed inputs and outputs of the pipeline, including the versioned ``Annotation`` schema.

Times are seconds from the start of the recording. Speaker labels are strings such as
``SPEAKER_00``; on per-channel diarization they are ``CH0``/``CH1``-derived labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from callannotate import __version__
from callannotate.pipeline.asr.languages import WHISPER_LANGUAGES

SCHEMA_VERSION = "1.0"

Float32Array = npt.NDArray[np.float32]

#: The sample rate (Hz) every model reads; audio is decoded or resampled to it.
SAMPLE_RATE = 16_000


class Step(StrEnum):
    """The pipeline's steps in the order they run: the one vocabulary of job options, progress
    hooks, step reports, job metadata, events, the docs and the CLI.

    ``decode`` and ``align`` (words to speakers, utterances, statistics) always run; a job
    asks for the others (:data:`ALL_STEPS`).
    """

    DECODE = "decode"
    PREPROCESS = "preprocess"
    VAD = "vad"
    DIARIZE = "diarize"
    TRANSCRIBE = "transcribe"
    IDENTIFY = "identify"
    ALIGN = "align"
    SENTIMENT = "sentiment"


ALWAYS_RUN: frozenset[Step] = frozenset({Step.DECODE, Step.ALIGN})
ALL_STEPS: tuple[Step, ...] = tuple(s for s in Step if s not in ALWAYS_RUN)
"""The steps a job may ask for (all of them by default)."""


class ChannelMode(StrEnum):
    AUTO = "auto"  # per-channel when the file is stereo, otherwise mix
    MIX = "mix"
    PER_CHANNEL = "per-channel"


#: Validation context of options a caller sends now (``POST /jobs`` form, ``annotate`` flags):
#: ``AnnotateOptions.model_validate(raw, context=REQUEST_CONTEXT)`` also refuses a language
#: Whisper does not know (``xx``, ``rus``), which would otherwise fail the job only after
#: decoding and diarization, and a step list naming only the steps that always run
#: (``decode,align``: a job that would annotate nothing). Stored job records are read without
#: it, so a job queued before these checks still loads.
REQUEST_CONTEXT: dict[str, bool] = {"request": True}


def validation_detail(exc: ValidationError) -> str:
    """The problems of invalid options as ``loc: message`` joined by ``; ``, without pydantic's
    ``Value error, `` prefix: one wording for the API's 422 and the CLI's error."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


class AnnotateOptions(BaseModel):
    """What the caller asks of one annotation run."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field("auto", description="ISO 639-1 code such as 'ru' or 'en', or 'auto'.")
    num_speakers: int | None = Field(None, ge=1, le=32)
    min_speakers: int | None = Field(None, ge=1, le=32)
    max_speakers: int | None = Field(None, ge=1, le=32)
    steps: list[Step] = Field(
        default_factory=lambda: list(ALL_STEPS),
        min_length=1,
        description="Steps to run (decode and align always run); at least one.",
    )
    channel_mode: ChannelMode = ChannelMode.AUTO
    initial_prompt: str | None = Field(
        None, max_length=2000, description="Names and product terms that help transcription."
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AnnotateOptions:
        if (
            self.min_speakers is not None
            and self.max_speakers is not None
            and self.min_speakers > self.max_speakers
        ):
            raise ValueError("min_speakers must not exceed max_speakers")
        if self.num_speakers is not None and (
            self.min_speakers is not None or self.max_speakers is not None
        ):
            raise ValueError("give either num_speakers or min_speakers/max_speakers, not both")
        if self.language != "auto" and not (
            2 <= len(self.language) <= 3 and self.language.isalpha()
        ):
            raise ValueError("language must be 'auto' or an ISO 639-1 code such as 'en'")
        if (
            info.context == REQUEST_CONTEXT
            and self.language != "auto"
            and self.language.lower() not in WHISPER_LANGUAGES
        ):
            raise ValueError(
                f"language {self.language!r} is not one Whisper transcribes; "
                "use 'auto' or an ISO 639-1 code such as 'en' or 'ru'"
            )
        if info.context == REQUEST_CONTEXT and ALWAYS_RUN.issuperset(self.steps):
            raise ValueError(
                "steps must name at least one of "
                + ", ".join(ALL_STEPS)
                + " (decode and align always run)"
            )
        return self

    def wants(self, step: Step) -> bool:
        return step in self.steps


@dataclass(frozen=True)
class AudioBuffer:
    """Decoded audio: ``samples`` is float32 in [-1, 1], shape ``(channels, frames)``."""

    samples: Float32Array
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.frames / float(self.sample_rate)

    def mono(self) -> Float32Array:
        """Mean of the channels, shape ``(frames,)``."""
        if self.channels == 1:
            return np.asarray(self.samples[0], dtype=np.float32)
        return np.asarray(self.samples.mean(axis=0), dtype=np.float32)

    def channel(self, index: int) -> Float32Array:
        return np.asarray(self.samples[index], dtype=np.float32)


class ProgressHook(Protocol):
    """Called by steps as they advance: ``hook(Step.DIARIZE, completed=3, total=10)``."""

    def __call__(self, step: Step, *, completed: int, total: int) -> None: ...


def null_hook(step: Step, *, completed: int, total: int) -> None:
    """A hook that ignores progress."""


class PartialHook(Protocol):
    """Called with words as soon as a step has decoded them: ``on_words([Word, ...])``.

    Words arrive in decoding order (per channel in per-channel mode), carry a speaker when
    one is known at that point, and are provisional: the final :class:`Annotation` may
    re-decode or re-label some of them. A hook must be cheap; it runs on the decoding thread.
    """

    def __call__(self, words: list[Word]) -> None: ...


# ----------------------------------------------------------------------------- annotation


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioQuality(_Model):
    peak_dbfs: float = Field(description="Highest absolute sample level, dBFS.")
    rms_dbfs: float = Field(description="Overall RMS level, dBFS.")
    loudness_lufs: float | None = Field(None, description="Integrated loudness (EBU R128).")
    dc_offset: float = Field(0.0, description="Mean sample value (largest over channels).")
    clipping_ratio: float = Field(0.0, description="Share of samples at or near full scale.")
    clipped: bool = Field(False, description="True when clipping is audible (ratio > 0.1 %).")
    snr_db: float | None = Field(None, description="Estimated speech-to-noise ratio, dB.")


class RecordingInfo(_Model):
    filename: str | None = None
    format: str | None = Field(None, description="Container format as probed, e.g. 'wav'.")
    codec: str | None = None
    duration: float = Field(ge=0)
    sample_rate: int = Field(gt=0, description="Original sample rate.")
    channels: int = Field(ge=1)
    channel_mode: Literal["mix", "per-channel", "mix (dual-mono)", "mix (one-silent)"] = Field(
        "mix",
        description="What was done with the channels: mixed to one, each channel on its own, "
        "or mixed because both carry the same signal (dual-mono, or one an echo of the other) "
        "or one is silent (then the live channel is used).",
    )
    languages: list[str] = Field(default_factory=list, description="Languages detected.")
    quality: AudioQuality | None = None


class VoiceMatch(_Model):
    voice_id: str | None = Field(None, description="Enrolled voice id; None when unknown.")
    name: str | None = None
    contact_id: str | None = None
    score: float = Field(description="Similarity of the best enrolled voice.")
    threshold: float
    accepted: bool = Field(description="True when score passed the threshold.")


class ContactRef(_Model):
    """An address-book contact a speaker is (or is expected to be); filled in by the jobs
    layer after the pipeline, never by the pipeline itself."""

    id: str = Field(description="Contact id (`GET /contacts/{id}`).")
    name: str
    organization: str | None = None
    phone: str | None = Field(None, description="The matching or first phone number, E.164.")


class ExpectedContact(ContactRef):
    """Who the call's phone number says a speaker is, and what voice recognition says."""

    role: Literal["caller", "callee"] = Field(description="Which number matched.")
    match: Literal["confirmed", "contradicted", "unverified"] = Field(
        description="confirmed: the speaker's recognised voice is linked to this contact; "
        "contradicted: the voice was recognised as someone else; unverified: no voice "
        "recognised."
    )


class CallParty(_Model):
    """One of the call's numbers (``caller``/``callee`` of the job) and its contacts."""

    role: Literal["caller", "callee"]
    number: str = Field(description="E.164.")
    contacts: list[ContactRef] = Field(
        default_factory=list, description="Contacts with this number (none: unknown)."
    )
    speaker: str | None = Field(None, description="Label of the speaker expected to be them.")


class Speaker(_Model):
    label: str
    channel: int | None = Field(None, description="Channel index for per-channel diarization.")
    speech_duration: float = 0.0
    voice: VoiceMatch | None = None
    contact: ContactRef | None = Field(
        None, description="The contact the recognised voice is linked to."
    )
    expected_contact: ExpectedContact | None = Field(
        None, description="The contact the call's phone number points to for this speaker."
    )


class Turn(_Model):
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    speaker: str


class Word(_Model):
    text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    probability: float = Field(ge=0, le=1)
    speaker: str | None = None
    language: str | None = None


class Sentiment(_Model):
    label: Literal["positive", "neutral", "negative"]
    score: float = Field(ge=-1, le=1, description="Polarity from -1 (negative) to 1 (positive).")


class Emotion(_Model):
    label: str = Field(description="Dominant basic emotion, or 'neutral'.")
    scores: dict[str, float] = Field(default_factory=dict)
    valence: float | None = Field(None, ge=-1, le=1)
    arousal: float | None = Field(None, ge=0, le=1, description="Acoustic arousal estimate.")


class Utterance(_Model):
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    speaker: str | None
    text: str
    language: str | None = None
    word_start: int = Field(0, ge=0, description="Index of the first word in `words`.")
    word_end: int = Field(0, ge=0, description="Index past the last word in `words`.")
    sentiment: Sentiment | None = None
    emotion: Emotion | None = None


class SpeakerStats(_Model):
    speaker: str
    talk_time: float
    talk_share: float
    turns: int
    words: int
    words_per_minute: float | None
    interruptions: int
    longest_monologue: float
    sentiment: Sentiment | None = None
    interrupted: int = Field(0, description="Times another speaker took the floor from them.")
    overlap_time: float = Field(0.0, description="Seconds spoken while someone else spoke.")
    emotion: Emotion | None = None


class ConversationStats(_Model):
    duration: float
    speech_time: float
    silence_time: float
    overlap_time: float
    longest_silence: float
    turns: int
    interruptions: int
    speakers: list[SpeakerStats] = Field(default_factory=list)
    overlaps: int = Field(0, description="Stretches where two or more speakers talk at once.")
    silences: int = Field(0, description="Pauses with nobody speaking, at least 1 s long.")
    words: int = 0
    words_per_minute: float | None = Field(None, description="Words per minute of speech.")
    longest_monologue: float = 0.0
    sentiment: Sentiment | None = None


# Names earlier versions wrote in step reports and progress.
LEGACY_STEP_NAMES: dict[str, Step] = {
    "transcription": Step.TRANSCRIBE,
    "recognition": Step.IDENTIFY,
}


class StepReport(_Model):
    name: Step
    status: Literal["done", "skipped", "failed"]
    seconds: float = Field(0.0, description="Time of this step alone (model loading excluded).")
    model: str | None = None
    detail: str | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _legacy_name(cls, value: object) -> object:
        # results stored before the step vocabulary was one enum still load
        return LEGACY_STEP_NAMES.get(value, value) if isinstance(value, str) else value


class Annotation(_Model):
    """The result of one pipeline run; published as JSON Schema (see ``reports``)."""

    schema_version: str = SCHEMA_VERSION
    generator: str = f"callannotate {__version__}"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    recording: RecordingInfo
    speakers: list[Speaker] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list, description="Speaker turns, may overlap.")
    exclusive_turns: list[Turn] = Field(
        default_factory=list, description="Non-overlapping turns, used to align words."
    )
    words: list[Word] = Field(default_factory=list)
    utterances: list[Utterance] = Field(default_factory=list)
    statistics: ConversationStats | None = None
    call: list[CallParty] = Field(
        default_factory=list, description="The call's phone numbers and their contacts."
    )
    steps: list[StepReport] = Field(default_factory=list)
