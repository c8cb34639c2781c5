"""Fake job runners for the queue manager tests: no models, no recordings.

They run inside real worker processes (spawned), so they are module-level classes whose
instances pickle; this module is importable in the children because pytest put its folder on
``sys.path`` and spawn passes ``sys.path`` on.
"""

from __future__ import annotations

import json
import os
import time

from callannotate.config import Settings
from callannotate.jobs.runner import JobContext, JobRequest


def result_json(request: JobRequest) -> str:
    """A small result naming the job and the process that ran it."""
    return json.dumps(
        {
            "job_id": request.job_id,
            "pid": os.getpid(),
            "steps": [{"name": "decode", "status": "done"}],
        }
    )


class SleepRunner:
    """Reports progress on step ``decode`` every ``step_s`` for ``steps`` steps.

    ``preload_s`` delays the worker's "ready" (a slow model load); ``preload_error`` is what
    preloading reports. Calling the hook is where a soft stop is noticed.
    """

    def __init__(
        self,
        steps: int = 3,
        step_s: float = 0.02,
        *,
        preload_s: float = 0.0,
        preload_error: str | None = None,
    ) -> None:
        self.steps = steps
        self.step_s = step_s
        self.preload_s = preload_s
        self.preload_error = preload_error

    def preload(self, settings: Settings) -> str | None:
        time.sleep(self.preload_s)
        return self.preload_error

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        for i in range(self.steps):
            ctx.hook("decode", completed=i, total=self.steps)
            time.sleep(self.step_s)
        ctx.hook("decode", completed=self.steps, total=self.steps)
        return result_json(request)


class StubbornRunner(SleepRunner):
    """Reports progress once, then computes for ``block_s`` without calling the hook again
    (a step stuck in native code): it cannot notice a soft stop."""

    def __init__(self, block_s: float = 600.0) -> None:
        super().__init__()
        self.block_s = block_s

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=0, total=1)
        time.sleep(self.block_s)
        return result_json(request)


class FailingRunner(SleepRunner):
    """Fails every job with an ordinary exception."""

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=0, total=1)
        raise RuntimeError("the fake step broke")


class AnnotationRunner(SleepRunner):
    """Returns a small real annotation whose first speaker's voice is recognised and linked
    to ``contact_id`` (the speakers/contacts tests), the second unknown."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(steps=1)
        self.contact_id = contact_id

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        from callannotate.pipeline.types import Annotation, RecordingInfo, Speaker, VoiceMatch

        ctx.hook("decode", completed=1, total=1)
        voice = VoiceMatch(
            voice_id="v1",
            name="Maria",
            contact_id=self.contact_id,
            score=0.9,
            threshold=0.5,
            accepted=True,
        )
        return Annotation(
            recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1),
            speakers=[Speaker(label="SPEAKER_00", voice=voice), Speaker(label="SPEAKER_01")],
        ).model_dump_json()
