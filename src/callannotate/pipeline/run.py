"""The pipeline entry point used by workers and the CLI: ``annotate(audio, options)``.

decode ▶ preprocess ▶ VAD ▶ diarize ▶ transcribe ▶ identify ▶ merge + analytics + sentiment.
Each model-backed step comes from :mod:`callannotate.pipeline.registry` (loaded once per
process) and reports progress through ``hook``; transcribed words are also handed to
``on_words`` as soon as they are decoded (partial results).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from callannotate.config import Settings
from callannotate.pipeline import registry
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.types import (
    AnnotateOptions,
    Annotation,
    AudioBuffer,
    AudioQuality,
    ChannelMode,
    PartialHook,
    ProgressHook,
    RecordingInfo,
    Speaker,
    Step,
    StepReport,
    Turn,
    VoiceMatch,
    Word,
    null_hook,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Step (as a job asks for it) -> section of config/models.yaml.
STEP_MODELS: dict[Step, str] = {
    Step.PREPROCESS: "preprocess",
    Step.VAD: "vad",
    Step.DIARIZE: "diarize",
    Step.TRANSCRIBE: "transcription",
    Step.IDENTIFY: "recognition",
    Step.SENTIMENT: "sentiment",
}


@dataclass
class _Run:
    """Mutable state of one annotation run."""

    settings: Settings
    options: AnnotateOptions
    hook: ProgressHook
    reports: list[StepReport] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, model: str | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.reports.append(
                StepReport(
                    name=name,
                    status="failed",
                    seconds=round(time.perf_counter() - t0, 3),
                    model=model,
                    detail=str(exc)[:500],
                )
            )
            raise
        self.reports.append(
            StepReport(
                name=name, status="done", seconds=round(time.perf_counter() - t0, 3), model=model
            )
        )

    def skip(self, name: str, detail: str) -> None:
        self.reports.append(StepReport(name=name, status="skipped", detail=detail))

    def processor(self, step: Step) -> Any:
        return registry.loaded_processor(self.settings, STEP_MODELS[step])

    def run(self, step: Step, fn: Callable[[Any], T]) -> T:
        proc = self.processor(step)
        with self.step(step.value, proc.describe()):
            return fn(proc)


def annotate(
    audio: Path,
    options: AnnotateOptions | None = None,
    *,
    settings: Settings | None = None,
    hook: ProgressHook = null_hook,
    filename: str | None = None,
    on_words: PartialHook | None = None,
) -> Annotation:
    """Annotate one recording (any format ffmpeg decodes) with the steps ``options`` asks for.

    ``on_words`` (optional) receives the words of each transcribed segment as soon as it is
    decoded, with its speaker when diarization ran (see :class:`PartialHook`).
    """
    options = options or AnnotateOptions()
    settings = settings or Settings()
    run = _Run(settings, options, hook)

    with run.step("decode", "ffmpeg (PyAV)"):
        hook("decode", completed=0, total=1)
        info = audio_io.probe(audio)
        buffer: AudioBuffer = audio_io.decode(audio, sample_rate=audio_io.MODEL_SAMPLE_RATE)
        quality: AudioQuality = audio_io.measure_quality(buffer)
        hook("decode", completed=1, total=1)

    per_channel = buffer.channels > 1 and (
        options.channel_mode == ChannelMode.PER_CHANNEL
        or (options.channel_mode == ChannelMode.AUTO and buffer.channels == 2)
    )
    if not per_channel and buffer.channels > 1:
        buffer = AudioBuffer(samples=buffer.mono()[np.newaxis, :], sample_rate=buffer.sample_rate)

    if options.wants(Step.PREPROCESS):
        pre = run.run(Step.PREPROCESS, lambda p: p.process(buffer, hook))
        buffer, quality = pre.audio, pre.quality
    else:
        run.skip(Step.PREPROCESS.value, "not requested")

    has_speech = True
    if options.wants(Step.VAD):
        vad = run.run(Step.VAD, lambda p: p.process(buffer, hook))
        has_speech = bool(vad.union())
    else:
        run.skip(Step.VAD.value, "not requested")

    speakers: list[Speaker] = []
    turns: list[Turn] = []
    exclusive: list[Turn] = []
    if options.wants(Step.DIARIZE) and has_speech:
        diarization = run.run(Step.DIARIZE, lambda p: _diarize(p, run, buffer, per_channel))
        speakers, turns, exclusive = (
            diarization.speakers,
            diarization.turns,
            diarization.exclusive_turns,
        )
    else:
        run.skip(Step.DIARIZE.value, "no speech found" if not has_speech else "not requested")

    words: list[Word] = []
    languages: list[str] = []
    language: str | None = None
    if options.wants(Step.TRANSCRIBE) and has_speech:
        words, languages, language = run.run(
            Step.TRANSCRIBE,
            lambda p: _transcribe(
                p, options, buffer, speakers, exclusive, per_channel, hook, on_words
            ),
        )
    else:
        run.skip(Step.TRANSCRIBE.value, "no speech found" if not has_speech else "not requested")

    if options.wants(Step.IDENTIFY) and speakers:
        matches = run.run(Step.IDENTIFY, lambda p: _identify(p, run, buffer, exclusive, speakers))
        speakers = [_with_voice(s, matches.get(s.label)) for s in speakers]
    else:
        run.skip(Step.IDENTIFY.value, "no speakers" if not speakers else "not requested")

    analyzer = None
    if options.wants(Step.SENTIMENT) and words:
        analyzer = run.processor(Step.SENTIMENT).analyzer
    elif options.wants(Step.SENTIMENT):
        run.skip(Step.SENTIMENT.value, "no words to score")
    else:
        run.skip(Step.SENTIMENT.value, "not requested")

    from callannotate.pipeline.analysis.alignment import build_annotation_parts

    t0 = time.perf_counter()
    parts = build_annotation_parts(
        words,
        exclusive,
        turns,
        buffer,
        duration=info.duration,
        language=language,
        sentiment=analyzer,
        keep_word_speakers=per_channel,
    )
    if analyzer is not None:
        run.reports.append(
            StepReport(
                name=Step.SENTIMENT.value,
                status="done",
                seconds=round(time.perf_counter() - t0, 3),
                model=run.processor(Step.SENTIMENT).describe(),
            )
        )
    speakers = _with_speech_time(speakers, parts.exclusive_turns)

    recording = RecordingInfo(
        filename=filename or audio.name,
        format=info.format,
        codec=info.codec,
        duration=round(info.duration, 3),
        sample_rate=info.sample_rate,
        channels=info.channels,
        channel_mode="per-channel" if per_channel else "mix",
        languages=languages,
        quality=quality,
    )
    return Annotation(
        recording=recording,
        speakers=speakers,
        turns=parts.turns,
        exclusive_turns=parts.exclusive_turns,
        words=parts.words,
        utterances=parts.utterances,
        statistics=parts.statistics,
        steps=run.reports,
    )


def _diarize(proc: Any, run: _Run, buffer: AudioBuffer, per_channel: bool) -> Any:
    from callannotate.pipeline.diarization import DiarizationInput

    # Share the process-wide CAM++ instance with voice recognition.
    proc.use_embedder(registry.loaded_processor(run.settings, "embedding"))
    opts = run.options
    return proc.process(
        DiarizationInput(
            audio=buffer,
            num_speakers=opts.num_speakers,
            min_speakers=opts.min_speakers,
            max_speakers=opts.max_speakers,
            per_channel=per_channel,
        ),
        run.hook,
    )


def _transcribe(
    proc: Any,
    options: AnnotateOptions,
    buffer: AudioBuffer,
    speakers: list[Speaker],
    exclusive: list[Turn],
    per_channel: bool,
    hook: ProgressHook,
    on_words: PartialHook | None = None,
) -> tuple[list[Word], list[str], str | None]:
    from callannotate.pipeline.asr.transcription import SpeakerRegion, TranscriptionInput

    if per_channel:
        words: list[Word] = []
        languages: set[str] = set()
        first_language: str | None = None
        for ch in range(buffer.channels):
            label = next((s.label for s in speakers if s.channel == ch), f"CH{ch}")
            result = proc.process(
                TranscriptionInput(
                    audio=buffer.channel(ch),
                    language=options.language,
                    initial_prompt=options.initial_prompt,
                    channel_speaker=label,
                ),
                hook,
                on_words=on_words,
            )
            words.extend(result.words)
            languages.update(result.languages)
            first_language = first_language or result.language or None
        words.sort(key=lambda w: (w.start, w.end))
        return words, sorted(languages), first_language
    regions = [SpeakerRegion(t.start, t.end, t.speaker) for t in exclusive] or None
    result = proc.process(
        TranscriptionInput(
            audio=buffer.mono(),
            language=options.language,
            initial_prompt=options.initial_prompt,
            regions=regions,
        ),
        hook,
        on_words=on_words,
    )
    return list(result.words), list(result.languages), result.language or None


def _identify(
    proc: Any, run: _Run, buffer: AudioBuffer, exclusive: list[Turn], speakers: list[Speaker]
) -> dict[str, VoiceMatch]:
    # Same CAM++ instance as diarization, and the voices of this settings tree.
    proc.use_embedder(registry.loaded_processor(run.settings, "embedding"))
    proc.use_voices_dir(run.settings.voices_dir)
    matches: dict[str, VoiceMatch] = proc.identify_speakers(buffer, exclusive, speakers, run.hook)
    return matches


def _with_voice(speaker: Speaker, match: VoiceMatch | None) -> Speaker:
    return speaker if match is None else speaker.model_copy(update={"voice": match})


def _with_speech_time(speakers: list[Speaker], exclusive: list[Turn]) -> list[Speaker]:
    totals: dict[str, float] = {}
    for t in exclusive:
        totals[t.speaker] = totals.get(t.speaker, 0.0) + (t.end - t.start)
    return [
        s.model_copy(update={"speech_duration": round(totals.get(s.label, 0.0), 3)})
        for s in speakers
    ]
