"""The pipeline entry point used by workers and the CLI: ``annotate(audio, options)``.

decode ▶ preprocess ▶ VAD ▶ diarize ▶ transcribe ▶ identify ▶ align ▶ sentiment: the steps of
:mod:`callannotate.pipeline.steps`, run in order by :func:`~.steps.run_steps`. Each step
reports progress through ``hook`` under its :class:`~.types.Step` name; transcribed words
are also handed to ``on_words`` as soon as they are decoded (partial results).
"""

from __future__ import annotations

from pathlib import Path

from callannotate.config import Settings
from callannotate.pipeline.steps import (
    DecodeStep,
    PipelineStep,
    RunState,
    default_steps,
    run_steps,
)
from callannotate.pipeline.types import (
    AnnotateOptions,
    Annotation,
    PartialHook,
    ProgressHook,
    RecordingInfo,
    null_hook,
)


def annotate(
    audio: Path,
    options: AnnotateOptions | None = None,
    *,
    settings: Settings | None = None,
    hook: ProgressHook = null_hook,
    filename: str | None = None,
    on_words: PartialHook | None = None,
    steps: list[PipelineStep] | None = None,
    voice_owner: str | None = None,
) -> Annotation:
    """Annotate one recording (any format ffmpeg decodes) with the steps ``options`` asks for.

    ``on_words`` (optional) receives the words of each transcribed segment as soon as it is
    decoded, with its speaker when diarization ran (see :class:`PartialHook`). ``steps``
    replaces the pipeline's own list (:func:`~.steps.default_steps`); it must begin with
    a decode step. ``voice_owner``: speakers are identified among that user's enrolled
    voices only (a job's owner); ``None`` (the local CLI): every voice in the data folder.
    """
    state = RunState(
        audio_path=audio,
        options=options or AnnotateOptions(),
        settings=settings or Settings(),
        hook=hook,
        on_words=on_words,
        voice_owner=voice_owner,
    )
    reports = run_steps(steps if steps is not None else default_steps(), state)
    info = state.probe
    if info is None:
        raise RuntimeError("the pipeline ran no decode step")
    recording = RecordingInfo(
        filename=filename or audio.name,
        format=info.format,
        codec=info.codec,
        duration=round(info.duration, 3),
        sample_rate=info.sample_rate,
        channels=info.channels,
        channel_mode=DecodeStep.channel_mode(state),
        languages=state.languages,
        quality=state.quality,
    )
    return Annotation(
        recording=recording,
        speakers=state.speakers,
        turns=state.turns,
        exclusive_turns=state.exclusive,
        words=state.words,
        utterances=state.utterances,
        statistics=state.statistics,
        steps=reports,
    )
