"""Enrollment and identification of voices (shared by the REST routes, the CLI and jobs).

Sample checks (before anything is embedded): the audio is measured in 20 ms frames; a
sample whose loudest frame is below ``silence_dbfs`` (-55 dBFS) is *silent*, and one with
less than ``min_speech_s`` (0.2 s) of speech-like frames (above ``silence_dbfs`` and within
30 dB of the loudest frame; a steady noise or tone of 1 s or more counts as none) is *too
short*; both raise ``Unprocessable`` (HTTP 422). 0.2 s is about one short word: the FSDD
digits (0.2-0.7 s clips, the shortest material the benchmark enrolls from) mostly pass,
anything shorter gives unreliable embeddings. The speech-to-noise ratio is the mean level
of the speech frames over the mean level of the rest (``None`` when there is no rest).

Embeddings: CAM++ (:mod:`callannotate.pipeline.speakers.embedding`) and, unless disabled with
``ge2e: {enabled: false}``, Resemblyzer's GE2E encoder (:mod:`.ge2e`); each sample stores
both. CAM++ clips shorter than ``pad_to_s`` (1.6 s) are extended by reflection (forward,
reversed, forward, ...), which raised FSDD top-1 from 87.9 % to 90.2 % (tiling or no padding
scored lower); long audio is embedded in chunks of at most ``chunk_s`` seconds whose
embeddings are averaged. GE2E takes the audio level-normalised and unpadded.

Views: each enrollment sample also stores the embeddings (both models) of sub-windows of
itself: windows of 30 %, 40 %, ..., 80 % of its length (at most ``view_max_s`` seconds, at
least ``view_min_s``), each at 4 evenly spaced positions (:func:`view_windows`). They only
feed the within-class covariance of the normalisation (:mod:`.scoring`), where 5 samples per
voice are too few. Enrollment does more embedding work, once per sample and bounded by 24
windows of at most ``view_max_s`` (a 10 s sample: 5.3 s instead of 0.8 s on 2 busy cores);
identification costs nothing more. ``view_max_s: 0`` disables them.

Scoring (open set, :mod:`.scoring`): per model, the cosine to each voice's centroid after a
normalisation fitted on the enrolled voices (``score_norm: center``: centring and WCCN, used
from ``min_voices`` voices on); the two models' scores are averaged. The best voice is
accepted when its score reaches the threshold of the scoring mode in use (plain or centred,
CAM++ alone or fused), each calibrated on FSDD with ``benchmarks/speaker_id.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from callannotate.errors import BadRequest, ModelUnavailable, NotFound, Unprocessable
from callannotate.pipeline.base import MLProcessor
from callannotate.pipeline.settings import Ge2eSettings, RecognitionSettings
from callannotate.pipeline.speakers.embedding import (
    EMBEDDING_DIM,
    SpeakerEmbedder,
    l2_normalize,
)
from callannotate.pipeline.types import (
    SAMPLE_RATE,
    Annotation,
    AudioBuffer,
    Float32Array,
    ProgressHook,
    Speaker,
    Step,
    Turn,
    VoiceMatch,
    null_hook,
)
from callannotate.voices.ge2e import GE2EEmbedder
from callannotate.voices.schemas import (
    LEGACY_OWNER,
    MAX_VOICE_NAME,
    Candidate,
    IdentifyResult,
    Voice,
    VoiceSample,
)
from callannotate.voices.scoring import Embeddings, Gallery, build_gallery, score
from callannotate.voices.store import VoiceStore, new_id

if TYPE_CHECKING:
    from callannotate.security.atrest import Vault

logger = logging.getLogger(__name__)

EMBEDDING_MODEL = "campplus_cn_en_common"
STATIONARY_SPREAD_DB = 6.0


#: The ``recognition:`` section of ``config/models.yaml`` (defaults and checks live there).
RecognitionParams = RecognitionSettings


# ----------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class SampleQuality:
    duration: float
    speech_duration: float
    snr_db: float | None
    peak_dbfs: float


def measure_sample(
    wave: npt.NDArray[np.floating[Any]],
    sample_rate: int = SAMPLE_RATE,
    silence_dbfs: float = -55.0,
) -> SampleQuality:
    """Duration, speech duration and SNR of a mono sample (energy-based, no model).

    Speech frames are the 20 ms frames louder than ``silence_dbfs`` and within 30 dB of the
    loudest one; a recording of a second or more whose frame levels vary by less than
    6 dB (5th to 95th percentile) is a steady noise or tone and holds no speech.
    """
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    duration = x.size / sample_rate
    hop = max(1, int(0.010 * sample_rate))
    win = 2 * hop
    if x.size < win:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        return SampleQuality(duration, 0.0, None, 20 * np.log10(peak + 1e-10))
    n = 1 + (x.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx]
    frames = frames - frames.mean(axis=1, keepdims=True)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loudest = float(level.max())
    active = level > max(silence_dbfs, loudest - 30.0)
    spread = float(np.percentile(level, 95) - np.percentile(level, 5))
    if duration >= 1.0 and spread < STATIONARY_SPREAD_DB:
        active[:] = False  # a steady noise or tone, not speech
    speech_s = float(active.sum()) * hop / sample_rate
    snr = (
        float(level[active].mean() - level[~active].mean())
        if active.any() and (~active).any()
        else None
    )
    return SampleQuality(duration, speech_s, snr, loudest)


def check_sample(quality: SampleQuality, params: RecognitionParams, what: str) -> None:
    """Raise ``Unprocessable`` (422) for silent or too-short samples."""
    if quality.peak_dbfs < params.silence_dbfs:
        raise Unprocessable(
            f"{what} is silent (loudest 20 ms frame {quality.peak_dbfs:.0f} dBFS, "
            f"below {params.silence_dbfs:.0f} dBFS)"
        )
    if quality.speech_duration < params.min_speech_s:
        raise Unprocessable(
            f"{what} has too little speech: {quality.speech_duration:.2f} s found, "
            f"at least {params.min_speech_s:.2f} s needed"
        )


# ----------------------------------------------------------------------------- embeddings


def reflect_pad(wave: Float32Array, min_samples: int) -> Float32Array:
    """Extend ``wave`` to ``min_samples`` with alternately reversed and forward copies."""
    if wave.size == 0 or wave.size >= min_samples:
        return wave
    parts = [wave]
    total = wave.size
    forward = False
    while total < min_samples:
        parts.append(wave if forward else wave[::-1])
        total += wave.size
        forward = not forward
    return np.ascontiguousarray(np.concatenate(parts)[:min_samples], dtype=np.float32)


def _campp_pieces(
    wave: npt.NDArray[np.floating[Any]], params: RecognitionParams
) -> list[Float32Array]:
    x = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
    chunk = max(1, int(params.chunk_s * SAMPLE_RATE))
    pad = int(params.pad_to_s * SAMPLE_RATE)
    if x.size <= chunk:
        return [reflect_pad(x, pad)]
    count = int(np.ceil(x.size / chunk))
    size = int(np.ceil(x.size / count))
    return [reflect_pad(x[i : i + size], pad) for i in range(0, x.size, size)]


def campp_embeddings(
    embedder: SpeakerEmbedder,
    waves: Sequence[npt.NDArray[np.floating[Any]]],
    params: RecognitionParams,
) -> Float32Array:
    """CAM++ embeddings ``(n, 192)`` of several waves, all pieces run in shared batches."""
    pieces: list[Float32Array] = []
    owner: list[int] = []
    for i, wave in enumerate(waves):
        for piece in _campp_pieces(wave, params):
            pieces.append(piece)
            owner.append(i)
    out = np.zeros((len(waves), EMBEDDING_DIM), dtype=np.float32)
    if not pieces:
        return out
    embs = embedder.embed_batch(pieces)
    for i, piece, emb in zip(owner, pieces, embs, strict=True):
        out[i] += emb * piece.size  # chunks weighted by length
    return l2_normalize(out)


VIEW_FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
VIEW_POSITIONS = 4


def view_windows(num_samples: int, params: RecognitionParams) -> list[tuple[int, int]]:
    """The ``(start, end)`` sub-windows of a sample whose embeddings are its views.

    Each fraction in :data:`VIEW_FRACTIONS` of the sample's length, capped at
    ``view_max_s``, gives :data:`VIEW_POSITIONS` windows at evenly spaced starts; fractions
    that reach the same length (the cap, on long samples) share one set of
    ``VIEW_POSITIONS`` times as many starts, so their windows do not coincide. Windows
    shorter than ``view_min_s`` are left out. At most 24 windows, ``24 * view_max_s``
    seconds of audio.
    """
    if params.view_max_s <= 0 or num_samples <= 0:
        return []
    cap = int(params.view_max_s * SAMPLE_RATE)
    shortest = max(1, int(params.view_min_s * SAMPLE_RATE))
    counts: dict[int, int] = {}
    for fraction in VIEW_FRACTIONS:
        length = min(cap, int(fraction * num_samples))
        if length >= shortest:
            counts[length] = counts.get(length, 0) + VIEW_POSITIONS
    out: list[tuple[int, int]] = []
    for length, count in counts.items():
        starts = np.linspace(0, num_samples - length, count).astype(int)
        out.extend((int(start), int(start) + length) for start in dict.fromkeys(starts))
    return out


def sample_embeddings(
    embedder: SpeakerEmbedder,
    ge2e: GE2EEmbedder | None,
    wave: npt.NDArray[np.floating[Any]],
    params: RecognitionParams,
) -> tuple[Embeddings, list[Embeddings]]:
    """An enrollment sample's embeddings and those of its views (see :func:`view_windows`)."""
    x = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
    windows = view_windows(x.size, params)
    embs = embed_waves(embedder, ge2e, [x, *(x[a:b] for a, b in windows)], params)
    return embs[0], embs[1:]


def _rounded(vec: Float32Array) -> list[float]:
    return [round(float(v), 6) for v in vec]


def embed_waves(
    embedder: SpeakerEmbedder,
    ge2e: GE2EEmbedder | None,
    waves: Sequence[npt.NDArray[np.floating[Any]]],
    params: RecognitionParams,
) -> list[Embeddings]:
    """The embeddings voice recognition uses (CAM++, plus GE2E when given) of each wave."""
    campp = campp_embeddings(embedder, waves, params)
    if ge2e is None or not waves:
        return [Embeddings(c) for c in campp]
    other = ge2e.embed_batch(waves)
    return [Embeddings(c, g) for c, g in zip(campp, other, strict=True)]


_GE2E: dict[tuple[Ge2eSettings, str, int], GE2EEmbedder] = {}
_GE2E_LOCK = threading.Lock()


def shared_ge2e(params: RecognitionParams, cache_dir: Path, threads: int) -> GE2EEmbedder | None:
    """The process-wide GE2E embedder for these settings (None when GE2E is disabled)."""
    if not params.use_ge2e:
        return None
    key = (params.ge2e.model_copy(update={"enabled": True}), str(cache_dir), threads)
    with _GE2E_LOCK:
        if key not in _GE2E:
            _GE2E[key] = GE2EEmbedder(params.ge2e, cache_dir, threads)
        return _GE2E[key]


def speaker_audio(
    buffer: AudioBuffer,
    turns: Sequence[Turn],
    label: str,
    channel: int | None,
    params: RecognitionParams,
) -> Float32Array:
    """The speaker's exclusive speech concatenated (longest turns first, capped)."""
    if buffer.sample_rate != SAMPLE_RATE:
        raise BadRequest(f"speaker audio must be {SAMPLE_RATE} Hz, got {buffer.sample_rate}")
    signal = (
        buffer.channel(channel)
        if channel is not None and 0 <= channel < buffer.channels and buffer.channels > 1
        else buffer.mono()
    )
    mine = [t for t in turns if t.speaker == label and t.end - t.start >= params.min_turn_s]
    if not mine:  # only short turns: use them all rather than nothing
        mine = [t for t in turns if t.speaker == label]
    mine.sort(key=lambda t: t.end - t.start, reverse=True)
    budget = int(params.max_speaker_speech_s * SAMPLE_RATE)
    pieces: list[Float32Array] = []
    used = 0
    for t in mine:
        a = max(0, int(t.start * SAMPLE_RATE))
        b = min(signal.size, int(t.end * SAMPLE_RATE))
        if b <= a:
            continue
        piece = signal[a : min(b, a + budget - used)]
        pieces.append(piece)
        used += piece.size
        if used >= budget:
            break
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def sample_record(
    emb: Embeddings,
    views: Sequence[Embeddings],
    *,
    id: str,
    source: str,
    duration: float,
    speech_duration: float,
    snr_db: float | None = None,
) -> VoiceSample:
    """The stored form of a sample's embeddings (6 decimals) and quality figures."""
    return VoiceSample(
        id=id,
        source=source,
        duration=duration,
        speech_duration=speech_duration,
        snr_db=snr_db,
        embedding=_rounded(emb.campp),
        ge2e_embedding=None if emb.ge2e is None else _rounded(emb.ge2e),
        views=[_rounded(v.campp) for v in views],
        ge2e_views=[_rounded(v.ge2e) for v in views if v.ge2e is not None],
    )


# ----------------------------------------------------------------------------- scoring


def voices_of(store: VoiceStore, owner: str | None) -> list[Voice]:
    """The voices ``owner`` enrolled (every voice for ``None``): a job is only ever matched
    against its owner's voices, so one user's enrollments never name people in another's
    calls."""
    return [v for v in store.list() if owner is None or v.owner == owner]


def gallery_of(voices: Sequence[Voice], params: RecognitionParams) -> Gallery:
    """The enrolled voices prepared for scoring with ``params``."""
    return build_gallery(
        voices,
        embedding_model=EMBEDDING_MODEL,
        use_ge2e=params.use_ge2e,
        center=params.score_norm == "center",
        min_voices=params.min_voices,
        wccn_shrink=params.wccn_shrink,
    )


def as_embeddings(probe: Embeddings | Float32Array) -> Embeddings:
    return probe if isinstance(probe, Embeddings) else Embeddings(np.asarray(probe))


def score_voices(
    probe: Embeddings | Float32Array, gallery: Gallery, params: RecognitionParams
) -> tuple[npt.NDArray[np.float64], float]:
    """Scores of ``probe`` against every voice of the gallery, and the threshold to use."""
    emb = as_embeddings(probe)
    fused = len(gallery.mode(emb)) > 1
    return score(emb, gallery), params.threshold_for(fused, gallery.centred)


def match_of(
    probe: Embeddings | Float32Array, gallery: Gallery, params: RecognitionParams
) -> VoiceMatch:
    scores, threshold = score_voices(probe, gallery, params)
    if scores.size == 0:
        return VoiceMatch(score=0.0, threshold=threshold, accepted=False)
    best = int(np.argmax(scores))
    value = float(scores[best])
    if value < threshold:
        return VoiceMatch(score=round(value, 4), threshold=threshold, accepted=False)
    voice = gallery.voices[best]
    return VoiceMatch(
        voice_id=voice.id,
        name=voice.name,
        contact_id=voice.contact_id,
        score=round(value, 4),
        threshold=threshold,
        accepted=True,
    )


# ----------------------------------------------------------------------------- service


def voice_name(name: str) -> str:
    """``name`` without surrounding blanks; 422 when that is empty or too long."""
    name = name.strip()
    if not name:
        raise Unprocessable("the voice needs a name")
    if len(name) > MAX_VOICE_NAME:
        raise Unprocessable(f"the voice name is longer than {MAX_VOICE_NAME} characters")
    return name


class VoiceService:
    """Enrollment and identification against one :class:`VoiceStore`.

    ``ge2e`` is the second embedder (see :func:`shared_ge2e`); without it samples get only
    a CAM++ embedding and probes are scored with CAM++ alone.
    """

    def __init__(
        self,
        store: VoiceStore,
        embedder: SpeakerEmbedder | None = None,
        params: RecognitionParams | None = None,
        ge2e: GE2EEmbedder | None = None,
    ) -> None:
        self.store = store
        self._embedder = embedder
        self.params = params or RecognitionParams()
        self.ge2e = ge2e if self.params.use_ge2e else None

    def embed(self, waves: Sequence[npt.NDArray[np.floating[Any]]]) -> list[Embeddings]:
        """Recognition embeddings of 16 kHz mono waves (CAM++, and GE2E when available)."""
        return embed_waves(self.embedder, self.ge2e, waves, self.params)

    @property
    def embedder(self) -> SpeakerEmbedder:
        if self._embedder is None:
            raise ModelUnavailable("this voice service was created without an embedder")
        return self._embedder

    def make_sample(self, wave: npt.NDArray[np.floating[Any]], source: str) -> VoiceSample:
        """Check and embed one 16 kHz mono sample (``Unprocessable`` when unusable)."""
        x = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
        quality = measure_sample(x, silence_dbfs=self.params.silence_dbfs)
        check_sample(quality, self.params, f"sample {source!r}")
        return sample_record(
            *sample_embeddings(self.embedder, self.ge2e, x, self.params),
            id=new_id(),
            source=source[:200],
            duration=round(quality.duration, 3),
            speech_duration=round(quality.speech_duration, 3),
            snr_db=None if quality.snr_db is None else round(quality.snr_db, 1),
        )

    def samples_from_files(self, files: Sequence[tuple[Path, str]]) -> list[VoiceSample]:
        """Decode (16 kHz mono) and embed ``(path, display name)`` pairs."""
        from callannotate.pipeline.audio import decode as audio_io

        if not files:
            raise Unprocessable("send at least one audio sample")
        samples = []
        for path, name in files:
            buffer = audio_io.decode(path, sample_rate=SAMPLE_RATE, vault=self.store.vault)
            samples.append(self.make_sample(buffer.mono(), name))
        return samples

    def enroll(
        self,
        name: str,
        samples: Sequence[VoiceSample],
        contact_id: str | None = None,
        owner: str = LEGACY_OWNER,
    ) -> Voice:
        """A new voice of ``owner`` (the API passes the caller's id; the CLI the local user)."""
        name = voice_name(name)
        if not samples:
            raise Unprocessable("send at least one audio sample")
        voice = Voice(
            id=new_id(),
            name=name,
            owner=owner,
            contact_id=(contact_id or "").strip() or None,
            embedding_model=EMBEDDING_MODEL,
            samples=list(samples),
        )
        return self.store.create(voice)

    def add_samples(self, voice_id: str, samples: Sequence[VoiceSample]) -> Voice:
        if not samples:
            raise Unprocessable("send at least one audio sample")
        return self.store.update(
            voice_id, lambda v: v.model_copy(update={"samples": [*v.samples, *samples]})
        )

    def enroll_from_job(
        self,
        annotation: Annotation,
        audio_path: Path,
        job_id: str,
        label: str,
        *,
        name: str | None = None,
        voice_id: str | None = None,
        contact_id: str | None = None,
        owner: str = LEGACY_OWNER,
    ) -> Voice:
        """Enroll ``label``'s exclusive speech in a finished job (new voice of ``owner``, or
        ``voice_id``, whose visibility the caller checked)."""
        from callannotate.pipeline.audio import decode as audio_io

        if (name is None) == (voice_id is None):
            raise Unprocessable("give either a name (new voice) or a voice_id (add to it)")
        speaker = next((s for s in annotation.speakers if s.label == label), None)
        if speaker is None:
            raise NotFound(f"speaker {label} not found in job {job_id}")
        turns = annotation.exclusive_turns or annotation.turns
        if not any(t.speaker == label for t in turns):
            raise Unprocessable(f"speaker {label} has no speech turns in job {job_id}")
        buffer = audio_io.decode(audio_path, sample_rate=SAMPLE_RATE, vault=self.store.vault)
        per_channel = annotation.recording.channel_mode == "per-channel"
        wave = speaker_audio(
            buffer, turns, label, speaker.channel if per_channel else None, self.params
        )
        sample = self.make_sample(wave, f"job:{job_id}/{label}")
        if voice_id is not None:
            return self.add_samples(voice_id, [sample])
        assert name is not None
        return self.enroll(name, [sample], contact_id, owner)

    def identify(
        self, embeddings: Mapping[str, Embeddings | Float32Array], owner: str | None = None
    ) -> dict[str, VoiceMatch]:
        """Best enrolled voice (or unknown) for each speaker's embeddings (a bare array is a
        CAM++ embedding), among ``owner``'s voices (``None``: every voice)."""
        gallery = gallery_of(voices_of(self.store, owner), self.params)
        return {label: match_of(emb, gallery, self.params) for label, emb in embeddings.items()}

    def identify_wave(self, wave: npt.NDArray[np.floating[Any]], top: int = 3) -> IdentifyResult:
        """Ranked candidates for one 16 kHz mono recording (CLI ``voices identify``)."""
        gallery = gallery_of(self.store.list(), self.params)
        emb = self.embed([wave])[0]
        scores, threshold = score_voices(emb, gallery, self.params)
        order = np.argsort(-scores)[:top]
        candidates = [
            Candidate(
                voice_id=gallery.voices[i].id,
                name=gallery.voices[i].name,
                score=round(float(scores[i]), 4),
            )
            for i in order
        ]
        accepted = bool(candidates) and candidates[0].score >= threshold
        return IdentifyResult(accepted=accepted, threshold=threshold, candidates=candidates)


# ----------------------------------------------------------------------------- processor


class Identifier(MLProcessor[Mapping[str, Embeddings | Float32Array], dict[str, VoiceMatch]]):
    """The pipeline's ``identify`` step (models.yaml section ``recognition``): diarized
    speakers -> enrolled voices.

    The pipeline passes the store folder and the CAM++ embedder with each call of
    :meth:`identify_speakers` (it shares the process-wide embedder); without them the
    ``voices_dir`` parameter (or ``Settings().voices_dir``) and a private embedder are used.
    The GE2E embedder (unless ``ge2e.enabled`` is false) is the process-wide one of
    :func:`shared_ge2e`.
    """

    name: Step = Step.IDENTIFY

    settings_type = RecognitionSettings
    settings: RecognitionSettings

    def __init__(
        self, settings: RecognitionSettings | Mapping[str, Any], cache_dir: Path, threads: int = 2
    ) -> None:
        super().__init__(settings, cache_dir, threads)
        self.rparams = self.settings
        self._embedder: SpeakerEmbedder | None = None
        self._voices_dir: Path | None = self.settings.voices_dir

    def load_model(self) -> None:
        """Nothing to load up front: the embedder is shared (or created on first use)."""

    def _get_embedder(self) -> SpeakerEmbedder:
        if self._embedder is None:
            self._embedder = SpeakerEmbedder(self.settings.embedding, self.cache_dir, self.threads)
        self._embedder.ensure_loaded()
        return self._embedder

    def describe(self) -> str:
        norm = "" if self.rparams.score_norm == "none" else f", {self.rparams.score_norm}"
        models = "CAM++ + GE2E" if self.rparams.use_ge2e else "CAM++"
        return f"{models} voiceprints (cosine{norm})"

    def store(self) -> VoiceStore:
        if self._voices_dir is None:
            from callannotate.config import Settings

            self._voices_dir = Settings().voices_dir
        return VoiceStore(self._voices_dir, self._vault())

    def _vault(self, vault: Vault | None = None) -> Vault:
        """``vault``, or the one of the process's default settings (the CLI's data folder)."""
        if vault is not None:
            return vault
        from callannotate.config import Settings
        from callannotate.security.atrest import vault_for

        return vault_for(Settings())

    @property
    def service(self) -> VoiceService:
        return self.voice_service()

    def voice_service(
        self,
        voices_dir: Path | None = None,
        embedder: SpeakerEmbedder | None = None,
        vault: Vault | None = None,
    ) -> VoiceService:
        """The voice service over ``voices_dir`` (default: this processor's store) embedding
        with ``embedder`` (default: its own); ``vault`` decrypts the voice files."""
        store = (
            VoiceStore(voices_dir, self._vault(vault)) if voices_dir is not None else self.store()
        )
        ge2e = shared_ge2e(self.rparams, self.cache_dir, self.threads)
        return VoiceService(store, embedder or self._get_embedder(), self.rparams, ge2e)

    def process(
        self, data: Mapping[str, Embeddings | Float32Array], hook: ProgressHook = null_hook
    ) -> dict[str, VoiceMatch]:
        return self.identify(data)

    def identify(
        self, embeddings: Mapping[str, Embeddings | Float32Array]
    ) -> dict[str, VoiceMatch]:
        return self.service.identify(embeddings)

    def identify_speakers(
        self,
        buffer: AudioBuffer,
        exclusive: Sequence[Turn],
        speakers: Sequence[Speaker],
        hook: ProgressHook = null_hook,
        *,
        voices_dir: Path | None = None,
        embedder: SpeakerEmbedder | None = None,
        vault: Vault | None = None,
        owner: str | None = None,
    ) -> dict[str, VoiceMatch]:
        """Embed each speaker's exclusive speech and match it against the voices enrolled
        in ``voices_dir`` (default: this processor's) by ``owner`` (``None``: by anyone),
        embedding with ``embedder`` (default: its own).

        Speakers with no usable speech (silent or too short) are left out of the result.
        """
        store = (
            VoiceStore(voices_dir, self._vault(vault)) if voices_dir is not None else self.store()
        )
        if not voices_of(store, owner):
            return {}  # nothing enrolled: no need to load or run any model
        service = self.voice_service(voices_dir, embedder, vault)
        embeddings: dict[str, Embeddings] = {}
        for i, speaker in enumerate(speakers):
            hook(self.name, completed=i, total=len(speakers))
            wave = speaker_audio(buffer, exclusive, speaker.label, speaker.channel, self.rparams)
            quality = measure_sample(wave, silence_dbfs=self.rparams.silence_dbfs)
            try:
                check_sample(quality, self.rparams, f"speaker {speaker.label}")
            except Unprocessable as exc:
                logger.info("not identifying: %s", exc.detail)
                continue
            embeddings[speaker.label] = service.embed([wave])[0]
        hook(self.name, completed=len(speakers), total=len(speakers))
        return service.identify(embeddings, owner)
