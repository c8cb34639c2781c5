"""Live transcription of an audio stream with a local-agreement policy (no HTTP here).

:class:`StreamingTranscriber` takes 16 kHz mono float32 audio in pieces (``push``) and
returns events: ``partial`` words (the unstable tail of the newest hypothesis), ``committed``
words (final, never revised) and, from ``finish``, a ``final`` event with the whole text.

The policy follows whisper_streaming's LocalAgreement-2:

* Audio goes into a buffer that holds the current utterance. Every ``min_chunk_s`` of new
  speech the buffer is decoded again; only words after the last committed one count (the
  committed ones are dropped by time and by repeated n-grams). Earlier utterances are
  not decoded again: their text is the prompt. When an utterance grows past
  ``max_buffer_s``, its committed audio is cut off, so only the uncommitted tail is decoded
  (cutting at every commit was tried: it clips words, Whisper's word ends are imprecise).
* Words that two successive hypotheses agree on (same normalised text, in order from the
  start of the buffer) are committed; the rest is sent as a partial.
* Silero VAD segments utterances: after ``end_silence_s`` of silence the buffer is decoded a
  last time and all its words are committed; silence before speech is not decoded: a new
  utterance's buffer starts ``preroll_s`` before its first speech frame (Whisper stretches
  the first word over leading silence and garbles it).
* Words decoded where the VAD heard (almost) no speech are dropped (Whisper's hallucinations
  such as "Thank you." or "СПОКОЙНАЯ МУЗЫКА" over silence); a word holding >= 0.1 s of
  speech is kept even when stretched back over a pause.
* Greedy decoding can fall into repetition loops: a hypothesis is cut at the first loop.
* ``short_context``: the encoder sees the buffer plus >= 1 s of padding (>= 10 s in all)
  instead of 30 s: ~4x cheaper decodes with tiny.en (committed-word latency on jfk 1.4 s
  vs 1.6 s), but more errors (tiny.en LibriVox stream WER 34 % vs 19 %; base ru x3 30 % vs
  18 %), so it is off by default.
* A buffer that grows past 1.5 x ``max_buffer_s`` without agreement is committed as is
  (bounded latency and work).

The whole stream can be written to a 16-bit WAV file (``record_to``) so it can become a normal
batch job afterwards.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

import numpy as np

from callannotate.config import Settings
from callannotate.errors import ConfigError
from callannotate.pipeline.asr.spoken_numbers import spell_numbers_in_words
from callannotate.pipeline.asr.transcription import WhisperEngine, check_language
from callannotate.pipeline.asr.whisper_models import whisper_model_dir
from callannotate.pipeline.settings import (
    DecodeOptions,
    StreamingSettings,
    StreamTuning,
    TranscriptionSettings,
)
from callannotate.pipeline.types import SAMPLE_RATE, Float32Array, Word

if TYPE_CHECKING:
    from callannotate.security.atrest import Vault

logger = logging.getLogger(__name__)

VAD_FRAME = 512
_MIN_SPEECH_FRAMES = 3  # 0.1 s of speech inside a word makes it real
_NORM = re.compile(r"[^\w']+")

EventType = Literal["partial", "committed", "final"]


class VadStreamLike(Protocol):
    """Incremental VAD: speech probability of every completed 512-sample frame."""

    def push(self, samples: Float32Array) -> Float32Array: ...


@dataclass(frozen=True)
class StreamEvent:
    """One message of the stream: words with times in seconds from the stream start."""

    type: EventType
    words: list[Word]
    audio_time: float
    """Stream time (seconds of audio received) when the event was produced."""
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "text": self.text or " ".join(w.text for w in self.words),
            "audio_time": round(self.audio_time, 3),
            "words": [
                {
                    "text": w.text,
                    "start": w.start,
                    "end": w.end,
                    "probability": round(w.probability, 4),
                }
                for w in self.words
            ],
        }


class StreamingOptions(StreamTuning):
    """One stream's policy: the configured tuning (``transcription.streaming``) plus the
    stream's own language hint and prompt."""

    language: str | None = None
    initial_prompt: str | None = None


def _norm(text: str) -> str:
    return _NORM.sub("", text.lower())


def agreed_prefix(previous: Sequence[Word], current: Sequence[Word]) -> int:
    """Number of leading words on which two hypotheses agree (normalised text)."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if _norm(a.text) != _norm(b.text) or not _norm(b.text):
            break
        n += 1
    return n


def drop_repeated_head(committed: Sequence[Word], words: list[Word], max_n: int = 5) -> list[Word]:
    """Drop the first words of ``words`` when they repeat the last committed words.

    Cutting the buffer at a word end sometimes leaves a piece of the last committed word,
    which Whisper transcribes again.
    """
    tail = [_norm(w.text) for w in committed[-max_n:]]
    for n in range(min(max_n, len(tail), len(words)), 0, -1):
        if tail[-n:] == [_norm(w.text) for w in words[:n]]:
            return words[n:]
    return words


def cut_repetition_loop(words: list[Word]) -> list[Word]:
    """Cut a hypothesis where Whisper falls into a repetition loop (greedy decoding).

    A phrase of 2-8 words repeated 3 times in a row, or a single word 4 times, is a loop
    when the repetitions are squeezed (< 0.15 s a word: generated, not heard): only its
    first occurrence is kept and everything after it is dropped.
    """
    norm = [_norm(w.text) for w in words]
    for i in range(len(norm)):
        for n in range(1, 9):
            copies = 4 if n == 1 else 3
            if i + copies * n > len(norm):
                break
            phrase = norm[i : i + n]
            if all(norm[i + k * n : i + (k + 1) * n] == phrase for k in range(1, copies)):
                rep = words[i + n : i + copies * n]
                if sum(w.end - w.start for w in rep) >= 0.15 * len(rep):
                    continue  # spoken repetitions ("no no no no")
                logger.debug("repetition loop cut after %d words", i + n)
                return words[: i + n]
    return words


class WavRecorder:
    """Appends float32 audio to a 16-bit mono WAV file.

    With a ``vault`` whose encryption is on, the capture is encrypted as it is written: the
    PCM goes to an encrypted ``<name>.pcm`` file and :meth:`close` writes the final encrypted
    WAV (header with the real sizes, then the PCM) and removes it. Nothing is in the clear on
    disk at any time.
    """

    def __init__(
        self, path: Path, sample_rate: int = SAMPLE_RATE, vault: Vault | None = None
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.sample_rate = sample_rate
        self.frames = 0
        self._vault = vault if vault is not None and vault.enabled else None
        self._wav: wave.Wave_write | None = None
        self._pcm: BinaryIO | None = None
        if self._vault is not None:
            self._pcm_path = path.with_name(path.name + ".pcm")
            self._pcm = self._vault.open_write(self._pcm_path)
        else:
            self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(sample_rate)

    def write(self, samples: Float32Array) -> None:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        if self._pcm is not None:
            self._pcm.write(pcm.tobytes())
        elif self._wav is not None:
            self._wav.writeframes(pcm.tobytes())
        self.frames += int(samples.shape[0])

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._pcm is None or self._vault is None:
            return
        self._pcm.close()
        self._pcm = None
        try:
            with (
                self._vault.open_read(self._pcm_path) as src,
                self._vault.open_write(self.path) as dst,
            ):
                dst.write(wav_header(self.frames * 2, self.sample_rate))
                shutil.copyfileobj(src, dst, 1024 * 1024)
        finally:
            self._pcm_path.unlink(missing_ok=True)


def wav_header(data_bytes: int, sample_rate: int, channels: int = 1, width: int = 2) -> bytes:
    """The 44-byte header of a PCM WAV file holding ``data_bytes`` of samples."""
    block = channels * width
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 8 * width
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


@dataclass
class _State:
    buffer: Float32Array = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    buffer_start: float = 0.0
    utterance_start: float = 0.0  # where the current utterance may start (its split point)
    received: int = 0  # samples pushed so far
    decoded_at: int = 0  # value of `received` at the last decode
    previous: list[Word] = field(default_factory=list)
    committed: list[Word] = field(default_factory=list)
    utterance_committed: list[Word] = field(default_factory=list)
    in_speech: bool = False
    speech_seen: bool = False
    silence_frames: int = 0
    vad_frames: int = 0
    speech_frames: bytearray = field(default_factory=bytearray)  # 1 per VAD frame with speech
    vad_pending: Float32Array = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


class StreamingTranscriber:
    """One live stream. Not thread-safe: call ``push``/``finish`` from one thread at a time."""

    def __init__(
        self,
        engine: WhisperEngine,
        options: StreamingOptions,
        vad: VadStreamLike | None = None,
        record_to: Path | None = None,
        vault: Vault | None = None,
    ) -> None:
        self.engine = engine
        self.options = options
        self.vad = vad
        self.recorder = WavRecorder(record_to, vault=vault) if record_to is not None else None
        self.language = options.language if options.language not in (None, "", "auto") else None
        if not engine.multilingual:
            self.language = "en"
        self.state = _State()
        self.decode_seconds = 0.0
        self.decodes = 0
        self.closed = False

    # ---------------------------------------------------------------- public API
    @property
    def committed(self) -> list[Word]:
        return list(self.state.committed)

    @property
    def audio_time(self) -> float:
        return self.state.received / SAMPLE_RATE

    def push(self, samples: Float32Array) -> list[StreamEvent]:
        """Add audio; returns the events it produced (often none)."""
        if self.closed:
            raise RuntimeError("stream already finished")
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        if chunk.size == 0:
            return []
        st = self.state
        if self.recorder is not None:
            self.recorder.write(chunk)
        st.received += chunk.shape[0]
        st.buffer = np.concatenate([st.buffer, chunk])
        had_speech = st.speech_seen
        split = self._update_vad(chunk)
        events: list[StreamEvent] = []
        if self.vad is not None and not had_speech:
            # silence before this utterance: keep only a short pre-roll before its speech
            self._trim_leading_silence()
        if self.vad is not None and not st.speech_seen:
            st.decoded_at = st.received
            return events
        if split is not None:
            events.extend(self._end_utterance(split))
        elif (st.received - st.decoded_at) >= self.options.min_chunk_s * SAMPLE_RATE:
            events.extend(self._step())
        return events

    def finish(self) -> list[StreamEvent]:
        """Decode what is left, commit it and return the ``final`` event last."""
        if self.closed:
            return []
        st = self.state
        has_speech = self.vad is None or st.speech_seen
        events = self._end_utterance() if st.buffer.size and has_speech else []
        self.closed = True
        if self.recorder is not None:
            self.recorder.close()
        words = self.state.committed
        events.append(
            StreamEvent(
                type="final",
                words=list(words),
                audio_time=self.audio_time,
                text=" ".join(w.text for w in words).strip(),
            )
        )
        return events

    def close(self) -> None:
        """Stop without decoding (client gone); the recording is closed."""
        if not self.closed and self.recorder is not None:
            self.recorder.close()
        self.closed = True

    # ---------------------------------------------------------------- internals
    def _update_vad(self, chunk: Float32Array) -> float | None:
        """Feed the VAD; the stream time to split at when an utterance just ended.

        The split point is the middle of the silence that ended the utterance, so audio
        after it (the next utterance may already start in this chunk) is kept.
        """
        if self.vad is None:
            return None
        st = self.state
        probs = self.vad.push(chunk)
        split: float | None = None
        end_frames = max(1, int(self.options.end_silence_s * SAMPLE_RATE / VAD_FRAME))
        off = max(0.05, self.options.vad_threshold - 0.15)
        for p in probs:
            st.vad_frames += 1
            st.speech_frames.append(1 if p >= off else 0)
            if p >= self.options.vad_threshold:
                st.in_speech = True
                st.speech_seen = True
                st.silence_frames = 0
            elif st.in_speech and p < off:
                st.silence_frames += 1
                if st.silence_frames >= end_frames:
                    st.in_speech = False
                    if split is None:
                        silence_start = st.vad_frames - st.silence_frames
                        split = (silence_start + st.silence_frames / 2) * VAD_FRAME / SAMPLE_RATE
        return split

    def _trim_leading_silence(self) -> None:
        """Cut the buffer to start ``preroll_s`` before its first speech.

        Whisper stretches the first word of a buffer over any leading silence, which
        garbles it ("Ask" -> "is") or gets it dropped as a word decoded over silence. With
        no speech in the buffer yet, only its last ``preroll_s`` are kept.
        """
        st = self.state
        if self.vad is None:
            return
        flags = st.speech_frames
        end = st.buffer_start + st.buffer.shape[0] / SAMPLE_RATE
        onset = end
        first = max(st.buffer_start, st.utterance_start)
        for i in range(max(0, int(first * SAMPLE_RATE / VAD_FRAME)), len(flags)):
            if flags[i]:
                onset = min(end, i * VAD_FRAME / SAMPLE_RATE)
                break
        cut = round((onset - self.options.preroll_s - st.buffer_start) * SAMPLE_RATE)
        if cut > 0:
            st.buffer = st.buffer[cut:]
            st.buffer_start += cut / SAMPLE_RATE

    def _decode(self) -> list[Word]:
        """Decode the buffer; returns only words after the last committed one."""
        st = self.state
        opts = self.options
        before = [w for w in st.committed if w.end <= st.buffer_start + 0.05]
        prompt = " ".join(w.text for w in before)[-opts.prompt_chars :]
        if opts.initial_prompt:
            prompt = f"{opts.initial_prompt} {prompt}".strip()
        t0 = time.perf_counter()
        segments, language, _, _ = self.engine.decode(
            st.buffer,
            self.language,
            initial_prompt=prompt or None,
            offset=st.buffer_start,
            vad=False,
            beam_size=opts.beam_size,
            temperatures=opts.temperatures,
            short_context=opts.short_context,
        )
        self.decode_seconds += time.perf_counter() - t0
        self.decodes += 1
        st.decoded_at = st.received
        if self.language is None and language:
            self.language = language  # detected once, on the first decode with speech
        words: list[Word] = []
        for seg in segments:
            for w in seg.words or []:
                text = str(w.word).strip()
                if not text:
                    continue
                start = max(st.buffer_start, float(w.start))
                words.append(
                    Word(
                        text=text,
                        start=round(start, 3),
                        end=round(max(start, float(w.end)), 3),
                        probability=min(1.0, max(0.0, float(w.probability))),
                        language=self.language,
                    )
                )
        end = st.buffer_start + st.buffer.shape[0] / SAMPLE_RATE
        # words squeezed at the very end of the audio were not heard, only generated
        words = [w for w in words if w.start < end - 0.05 or w.end > w.start]
        return cut_repetition_loop(self._uncommitted(self._drop_non_speech(words)))

    def _drop_non_speech(self, words: list[Word]) -> list[Word]:
        """Words lying entirely where the VAD heard no speech are hallucinations; drop them."""
        flags = self.state.speech_frames
        if self.vad is None or not flags:
            return words
        per_s = SAMPLE_RATE / VAD_FRAME
        kept: list[Word] = []
        for w in words:
            a = int(w.start * per_s)
            if a >= len(flags):
                kept.append(w)  # not scored by the VAD yet
                continue
            b = min(len(flags), max(a + 1, int(w.end * per_s) + 1))
            speech = sum(flags[a:b])
            near = any(flags[max(0, a - 3) : b + 3])
            # a word mostly over silence (Whisper stretches hallucinations to the next
            # speech) is dropped; short words may sit just beside the VAD's edges. The
            # first word after a pause is often stretched back over it ("What" decoded at
            # 4.6-5.5 s, spoken at 5.3-5.5 s): a word holding >= 0.1 s of speech is kept.
            if (
                speech >= _MIN_SPEECH_FRAMES
                or speech / (b - a) >= 0.25
                or (near and w.end - w.start < 0.3)
            ):
                kept.append(w)
        if len(kept) < len(words):
            logger.debug("dropped %d words decoded over silence", len(words) - len(kept))
        return kept

    def _uncommitted(self, words: list[Word]) -> list[Word]:
        """The part of a new hypothesis after what is already committed."""
        st = self.state
        if not st.committed:
            return words
        in_buffer = [w for w in st.utterance_committed if w.start >= st.buffer_start - 0.05]
        if in_buffer and agreed_prefix(in_buffer, words) == len(in_buffer):
            return words[len(in_buffer) :]  # the buffer's committed words came back unchanged
        last_end = st.committed[-1].end
        if in_buffer:
            words = [w for w in words if w.start >= last_end - 0.1]
        else:
            # new utterance: Whisper often stretches the last committed word over the pause,
            # so only words that end inside it are dropped
            words = [w for w in words if w.end > last_end]
        if words and words[0].start < last_end + 1.0:
            words = drop_repeated_head(st.committed, words)
        return words

    def _commit(self, words: list[Word]) -> StreamEvent | None:
        if not words:
            return None
        st = self.state
        if self.options.spell_numbers and self.language:
            words = spell_numbers_in_words(words, self.language)
        st.committed.extend(words)
        st.utterance_committed.extend(words)
        if st.buffer.shape[0] > self.options.max_buffer_s * SAMPLE_RATE:
            # long utterance: cut the committed audio off so only the tail is decoded again
            cut_time = min(words[-1].end, st.buffer_start + st.buffer.shape[0] / SAMPLE_RATE)
            cut = round((cut_time - st.buffer_start) * SAMPLE_RATE)
            if cut > 0:
                st.buffer = st.buffer[cut:]
                st.buffer_start += cut / SAMPLE_RATE
        return StreamEvent(type="committed", words=words, audio_time=self.audio_time)

    def _step(self) -> list[StreamEvent]:
        st = self.state
        current = self._decode()
        n = agreed_prefix(st.previous, current)
        events: list[StreamEvent] = []
        to_commit = current[:n]
        rest = current[n:]
        if not to_commit and st.buffer.shape[0] > 1.5 * self.options.max_buffer_s * SAMPLE_RATE:
            # no agreement for far too long: commit all but the last word to bound the work
            to_commit, rest = current[:-1], current[-1:]
        committed = self._commit(to_commit)
        if committed is not None:
            events.append(committed)
        st.previous = rest
        self._bound_buffer()
        if st.previous:
            events.append(
                StreamEvent(type="partial", words=st.previous, audio_time=self.audio_time)
            )
        return events

    def _bound_buffer(self) -> None:
        """Keep at most ``1.5 x max_buffer_s`` of audio, even when nothing can be committed.

        Continuous sound the VAD takes for speech but Whisper finds no words in (noise, music)
        never ends an utterance nor commits a word, so the buffer (and each decode of it)
        grew without limit: its oldest audio is dropped, keeping the last ``max_buffer_s``.
        """
        st = self.state
        keep = int(self.options.max_buffer_s * SAMPLE_RATE)
        if st.buffer.shape[0] <= 1.5 * keep:
            return
        cut = st.buffer.shape[0] - keep
        st.buffer = st.buffer[cut:].copy()  # a copy, so the dropped audio is freed
        st.buffer_start += cut / SAMPLE_RATE
        st.previous = [w for w in st.previous if w.start >= st.buffer_start]
        logger.debug("stream buffer cut to the last %.0f s (nothing to commit)", keep / SAMPLE_RATE)

    def _end_utterance(self, split: float | None = None) -> list[StreamEvent]:
        """Decode the buffer up to ``split`` (stream time; default: all), commit it all."""
        st = self.state
        events: list[StreamEvent] = []
        total = st.buffer.shape[0]
        cut = total
        if split is not None:
            cut = min(total, max(0, round((split - st.buffer_start) * SAMPLE_RATE)))
        rest = st.buffer[cut:]
        if cut >= SAMPLE_RATE // 10:
            st.buffer = st.buffer[:cut]
            committed = self._commit(self._decode())
            if committed is not None:
                events.append(committed)
        # the next utterance starts with a short pre-roll before the split point
        head = st.buffer_start + cut / SAMPLE_RATE
        keep = min(st.buffer.shape[0], int(self.options.preroll_s * SAMPLE_RATE))
        pre = st.buffer[st.buffer.shape[0] - keep :] if keep else st.buffer[:0]
        st.buffer = np.concatenate([pre, rest])
        st.buffer_start = head - keep / SAMPLE_RATE
        st.utterance_start = head
        self._trim_leading_silence()
        st.previous = []
        st.utterance_committed = []
        st.speech_seen = st.in_speech
        st.decoded_at = st.received
        return events


def replay(
    transcriber: StreamingTranscriber,
    audio: Float32Array,
    chunk_s: float = 0.5,
    realtime: bool = False,
) -> tuple[list[StreamEvent], list[tuple[Word, float]]]:
    """Feed ``audio`` in chunks; returns the events and each committed word's latency.

    Latency of a word = (wall time when committed) - (wall time its end was "spoken"), with
    the stream clock starting when the first chunk is sent. With ``realtime`` the chunks
    are paced at real time (sleeping when ahead; when processing falls behind, all audio
    that has arrived meanwhile is pushed at once, as the WebSocket server does); otherwise
    the latency counts only processing and the chunk size.
    """
    step = max(1, int(chunk_s * SAMPLE_RATE))
    events: list[StreamEvent] = []
    latencies: list[tuple[Word, float]] = []
    t0 = time.perf_counter()
    processing = 0.0
    sent = 0
    n = audio.shape[0]
    while sent < n:
        until = min(n, sent + step)
        if realtime:
            wait = t0 + until / SAMPLE_RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:  # behind: everything that has "arrived" by now goes in one push
                arrived = int((time.perf_counter() - t0) * SAMPLE_RATE) // step * step
                until = min(n, max(until, arrived))
        tp = time.perf_counter()
        new = transcriber.push(audio[sent:until])
        processing += time.perf_counter() - tp
        sent = until
        now = time.perf_counter() - t0 if realtime else sent / SAMPLE_RATE + processing
        for ev in new:
            if ev.type == "committed":
                latencies.extend((w, now - w.end) for w in ev.words)
        events.extend(new)
    tp = time.perf_counter()
    final = transcriber.finish()
    processing += time.perf_counter() - tp
    end_time = audio.shape[0] / SAMPLE_RATE
    now = time.perf_counter() - t0 if realtime else end_time + processing
    for ev in final:
        if ev.type == "committed":
            latencies.extend((w, now - w.end) for w in ev.words)
    events.extend(final)
    return events, latencies


# ----------------------------------------------------------------------------- engines per process

_engines: dict[str, WhisperEngine] = {}
_engines_lock = threading.Lock()
#: Decoding settings of the ``transcription`` section that live streams share.
_DECODE_KEYS = (
    "compute_type",
    "compression_ratio_threshold",
    "log_prob_threshold",
    "no_speech_threshold",
    "max_new_tokens",
    "repetition_penalty",
)


def _transcription(settings: Settings) -> TranscriptionSettings:
    from callannotate.pipeline.registry import models_settings

    section = models_settings(settings).transcription
    if section is None:
        raise ConfigError(f"{settings.models_config}: no `transcription` section")
    return section


def streaming_settings(settings: Settings) -> StreamingSettings:
    """The ``transcription.streaming`` settings (``ConfigError`` without a transcription)."""
    return _transcription(settings).streaming


def _streaming_model(settings: Settings, language: str | None) -> tuple[str, Path | None]:
    """The packaged model name and the user's own model path for streams in ``language``."""
    cfg = _transcription(settings)
    stream = cfg.streaming
    english = language == "en"
    name = (stream.model if english else stream.multilingual_model) or cfg.model
    return name, stream.path if english else stream.multilingual_path


def streaming_model_name(settings: Settings, language: str | None) -> str:
    """What ``ready`` tells a stream's client: ``tiny.en``, ``base``, or the folder name of a
    user's own model (not the package's or the cache's folder name)."""
    name, path = _streaming_model(settings, language)
    return Path(path).name if path is not None else name


def streaming_engine(settings: Settings, language: str | None) -> WhisperEngine:
    """The process-wide engine for streams in ``language`` (English-only model for 'en')."""
    name, path = _streaming_model(settings, language)
    with _engines_lock:
        model_dir = whisper_model_dir(name, settings.model_cache, path=path)
        cache_key = str(model_dir)
        engine = _engines.get(cache_key)
        if engine is None:
            cfg = _transcription(settings)
            options = DecodeOptions(**cfg.model_dump(include=set(_DECODE_KEYS)))
            engine = WhisperEngine(model_dir, options, settings.workers.threads)
            _engines[cache_key] = engine
            logger.info("streaming whisper engine loaded from %s", model_dir)
    return engine


def open_stream(
    settings: Settings,
    language: str | None,
    initial_prompt: str | None = None,
    record_to: Path | None = None,
) -> StreamingTranscriber:
    """A new stream using the configured models (loaded on first use) and Silero VAD."""
    from callannotate.pipeline.audio.vad import VoiceActivityDetector
    from callannotate.pipeline.registry import loaded_processor

    lang = check_language(language)
    tuning = streaming_settings(settings).tuning()
    engine = streaming_engine(settings, lang)
    vad_proc = loaded_processor(settings, "vad")
    vad = vad_proc.model.stream() if isinstance(vad_proc, VoiceActivityDetector) else None
    options = StreamingOptions(
        **tuning, language=None if lang == "auto" else lang, initial_prompt=initial_prompt
    )
    from callannotate.security.atrest import vault_for

    return StreamingTranscriber(
        engine, options, vad=vad, record_to=record_to, vault=vault_for(settings)
    )


def release_engines() -> None:
    with _engines_lock:
        _engines.clear()
