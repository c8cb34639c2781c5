"""Annotations for the report tests.

``callsample_annotation()`` builds a real annotation of the shared 30 s telephone call with
the project's own merge/analytics/sentiment code: speaker turns from the reference RTTM and
words from the reference STM (each segment's words spread over the segment by length), and
the real audio for acoustic arousal. ``russian_annotation()`` is a small hand-made Russian
call (no shared data needed) for exporter and PDF (Cyrillic) tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.analysis.alignment import build_annotation_parts, exclusive_from_turns
from callannotate.pipeline.analysis.sentiment import SentimentAnalyzer
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.types import (
    Annotation,
    RecordingInfo,
    Speaker,
    Turn,
    VoiceMatch,
    Word,
)

SHARED_DATA = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA",
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
    )
)
CALLSAMPLE = SHARED_DATA / "diarization" / "callsample"
CALL_WAV = CALLSAMPLE / "sample.wav"


def read_rttm(path: Path) -> list[Turn]:
    turns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0] == "SPEAKER":
            start, dur = float(parts[3]), float(parts[4])
            turns.append(Turn(start=start, end=start + dur, speaker=parts[7]))
    return turns


def words_from_stm(path: Path) -> list[Word]:
    """Reference words with times spread over each STM segment in proportion to length."""
    words: list[Word] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or line.startswith(";;"):
            continue
        start, end, text = float(parts[3]), float(parts[4]), parts[5]
        tokens = text.split()
        total = sum(len(t) + 1 for t in tokens)
        t = start
        for token in tokens:
            span = (end - start) * (len(token) + 1) / total
            words.append(
                Word(
                    text=token,
                    start=round(t, 3),
                    end=round(t + span * 0.9, 3),
                    probability=0.9,
                    language="en",
                )
            )
            t += span
    return words


def callsample_annotation() -> Annotation:
    """A real annotation of the shared call sample (needs ``CALL_WAV``)."""
    turns = read_rttm(CALLSAMPLE / "sample.rttm")
    words = words_from_stm(CALLSAMPLE / "sample.stm")
    info = audio_io.probe(CALL_WAV)
    buffer = audio_io.decode(CALL_WAV, sample_rate=audio_io.MODEL_SAMPLE_RATE)
    parts = build_annotation_parts(
        words,
        exclusive_from_turns(turns),
        turns,
        buffer,
        language="en",
        sentiment=SentimentAnalyzer(),
    )
    labels = sorted({t.speaker for t in turns})
    speakers = [
        Speaker(
            label=label,
            speech_duration=next(
                s.talk_time for s in parts.statistics.speakers if s.speaker == label
            ),
        )
        for label in labels
    ]
    return Annotation(
        recording=RecordingInfo(
            filename=CALL_WAV.name,
            format=info.format,
            codec=info.codec,
            duration=round(info.duration, 3),
            sample_rate=info.sample_rate,
            channels=info.channels,
            languages=["en"],
        ),
        speakers=speakers,
        turns=parts.turns,
        exclusive_turns=parts.exclusive_turns,
        words=parts.words,
        utterances=parts.utterances,
        statistics=parts.statistics,
    )


RU_SCRIPT: list[tuple[str, float, str]] = [
    ("SPEAKER_00", 0.5, "Здравствуйте, служба поддержки, меня зовут Анна."),
    ("SPEAKER_01", 3.6, "Добрый день. У меня ужасная проблема, интернет не работает третий день!"),
    ("SPEAKER_00", 8.9, "Очень жаль, давайте разберёмся."),
    ("SPEAKER_01", 11.4, "Я очень недоволен, это возмутительно."),
    ("SPEAKER_00", 14.2, "Понимаю. Я перезапустила линию, проверьте, пожалуйста."),
    ("SPEAKER_01", 18.6, "Да, всё работает. Спасибо большое, вы очень помогли!"),
]


def russian_annotation() -> Annotation:
    """A hand-made Russian two-speaker call, merged by the project's own functions."""
    words: list[Word] = []
    turns: list[Turn] = []
    t = 0.0
    for speaker, start, text in RU_SCRIPT:
        start = max(start, round(t + 0.4, 3))
        t = start
        for token in text.split():
            span = 0.08 * len(token) + 0.1
            words.append(
                Word(
                    text=token,
                    start=round(t, 3),
                    end=round(t + span, 3),
                    probability=0.95,
                    language="ru",
                )
            )
            t += span + 0.05
        turns.append(Turn(start=start, end=round(t, 3), speaker=speaker))
    parts = build_annotation_parts(
        words, turns, turns, None, duration=30.0, language="ru", sentiment=SentimentAnalyzer()
    )
    return Annotation(
        recording=RecordingInfo(
            filename="звонок поддержка.wav",
            format="wav",
            codec="pcm_s16le",
            duration=30.0,
            sample_rate=8000,
            channels=1,
            languages=["ru"],
        ),
        speakers=[
            Speaker(
                label="SPEAKER_00",
                voice=VoiceMatch(
                    voice_id="v1", name="Анна Петрова", score=0.81, threshold=0.6, accepted=True
                ),
            ),
            Speaker(label="SPEAKER_01"),
        ],
        turns=parts.turns,
        exclusive_turns=parts.exclusive_turns,
        words=parts.words,
        utterances=parts.utterances,
        statistics=parts.statistics,
    )


def completed_job(
    queue: FileQueue,
    annotation: Annotation,
    audio: Path,
    *,
    owner: str = "local",
    stored_as: str = "call.wav",
) -> str:
    """Submit ``audio`` as a job, run it to completion with ``annotation`` as its result."""
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    shutil.copyfile(audio, staged)
    meta = AudioMeta(
        filename=annotation.recording.filename or "call.wav",
        stored_as=stored_as,
        size_bytes=staged.stat().st_size,
        format="wav",
        codec="pcm_s16le",
        sample_rate=annotation.recording.sample_rate,
        channels=annotation.recording.channels,
        duration=annotation.recording.duration,
    )
    queue.submit(Job(id=job_id, owner=owner, audio=meta), staged)
    claimed = queue.claim("test-worker")
    assert claimed is not None and claimed.id == job_id
    queue.complete(job_id, annotation.model_dump_json().encode())
    return job_id
