"""The step runner (`pipeline.steps.run_steps`) with fake steps: order, skips, timing, errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from callannotate.config import Settings
from callannotate.pipeline.steps import (
    STEP_MODELS,
    PipelineStep,
    RunState,
    default_steps,
    run_steps,
)
from callannotate.pipeline.types import ALL_STEPS, ALWAYS_RUN, AnnotateOptions, Step, StepReport


def state(steps: list[Step] | None = None) -> RunState:
    options = AnnotateOptions(steps=steps) if steps is not None else AnnotateOptions()
    return RunState(audio_path=Path("x.wav"), options=options, settings=Settings())


class Fake(PipelineStep):
    """Records that it ran; optionally sleeps in setup or run, or fails."""

    def __init__(
        self,
        name: Step,
        log: list[Step],
        *,
        skip: str | None = None,
        setup_s: float = 0.0,
        run_s: float = 0.0,
        fail: bool = False,
    ) -> None:
        self.name = name  # type: ignore[misc]  # a ClassVar on real steps
        self.log, self.skip, self.setup_s, self.run_s, self.fail = log, skip, setup_s, run_s, fail

    def able_to_run(self, state: RunState) -> str | None:
        return self.skip

    def setup(self, state: RunState) -> str | None:
        time.sleep(self.setup_s)
        return f"fake {self.name}"

    def run(self, state: RunState) -> None:
        time.sleep(self.run_s)
        if self.fail:
            raise ValueError("broken model")
        self.log.append(self.name)


def test_runs_requested_and_always_run_steps_in_order() -> None:
    log: list[Step] = []
    steps: list[PipelineStep] = [Fake(s, log) for s in Step]
    reports = run_steps(steps, state([Step.VAD, Step.TRANSCRIBE]))
    assert log == [Step.DECODE, Step.VAD, Step.TRANSCRIBE, Step.ALIGN]
    assert [r.name for r in reports] == list(Step)
    status = {r.name: (r.status, r.detail) for r in reports}
    assert status[Step.DIARIZE] == ("skipped", "not requested")
    assert status[Step.DECODE][0] == status[Step.ALIGN][0] == "done"
    assert reports[0].model == "fake decode"


def test_a_step_not_able_to_run_is_skipped_with_its_reason() -> None:
    log: list[Step] = []
    steps: list[PipelineStep] = [
        Fake(Step.DECODE, log),
        Fake(Step.DIARIZE, log, skip="no speech found"),
        Fake(Step.TRANSCRIBE, log),
    ]
    reports = run_steps(steps, state())
    assert log == [Step.DECODE, Step.TRANSCRIBE]
    assert reports[1] == StepReport(name=Step.DIARIZE, status="skipped", detail="no speech found")


def test_a_steps_time_covers_its_run_only() -> None:
    log: list[Step] = []
    steps: list[PipelineStep] = [
        Fake(Step.DECODE, log, setup_s=0.3, run_s=0.05),
        Fake(Step.VAD, log, run_s=0.2),
    ]
    decode, vad = run_steps(steps, state([Step.VAD]))
    assert 0.05 <= decode.seconds < 0.3  # model loading (setup) is not counted
    assert vad.seconds >= 0.2


def test_a_failing_step_is_reported_and_stops_the_run() -> None:
    log: list[Step] = []
    steps: list[PipelineStep] = [
        Fake(Step.DECODE, log),
        Fake(Step.VAD, log, fail=True),
        Fake(Step.TRANSCRIBE, log),
    ]
    run = state()
    with pytest.raises(ValueError, match="broken model"):
        run_steps(steps, run)
    assert log == [Step.DECODE]
    failed = run.reports[-1]
    assert (failed.name, failed.status, failed.detail) == (Step.VAD, "failed", "broken model")
    assert failed.model == "fake vad"


def test_missing_inputs_are_a_wrong_step_order() -> None:
    class NeedsAudio(Fake):
        needs = ("buffer",)

    with pytest.raises(RuntimeError, match="needs buffer"):
        run_steps([NeedsAudio(Step.VAD, [])], state())


def test_the_default_pipeline_has_one_step_per_step_name() -> None:
    steps = default_steps()
    assert [s.name for s in steps] == list(Step)
    assert default_steps()[1] is not steps[1]  # fresh objects for every run
    # Every step a job may ask for and that loads a model has a models.yaml section.
    assert set(STEP_MODELS) == set(ALL_STEPS)
    assert {Step.DECODE, Step.ALIGN} == ALWAYS_RUN


def test_results_stored_with_the_old_step_names_still_load() -> None:
    old = {"name": "transcription", "status": "done", "seconds": 1.5}
    assert StepReport.model_validate(old).name == Step.TRANSCRIBE
    assert StepReport.model_validate({"name": "recognition", "status": "skipped"}).name == (
        Step.IDENTIFY
    )
    with pytest.raises(ValueError):
        StepReport.model_validate({"name": "transcribing", "status": "done"})
