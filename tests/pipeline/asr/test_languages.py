"""The language codes a job may ask for: Whisper's own list, checked when a caller asks."""

from __future__ import annotations

import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES
from pydantic import ValidationError

from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.asr.languages import WHISPER_LANGUAGES
from callannotate.pipeline.types import REQUEST_CONTEXT, AnnotateOptions


def test_the_codes_are_faster_whispers() -> None:
    assert set(_LANGUAGE_CODES) == WHISPER_LANGUAGES


@pytest.mark.parametrize("language", ["auto", "en", "RU", "haw", "yue"])
def test_a_request_may_name_any_whisper_language(language: str) -> None:
    options = AnnotateOptions.model_validate({"language": language}, context=REQUEST_CONTEXT)
    assert options.language == language


@pytest.mark.parametrize("language", ["xx", "rus", "ua"])
def test_a_request_naming_another_code_is_refused(language: str) -> None:
    with pytest.raises(ValidationError, match=f"language '{language}' is not one Whisper"):
        AnnotateOptions.model_validate({"language": language}, context=REQUEST_CONTEXT)


def test_a_stored_job_asking_for_an_unknown_code_still_loads() -> None:
    # Queued before the check: the record must stay readable (its run fails instead).
    audio = AudioMeta(
        filename="c.wav",
        stored_as="c.wav",
        size_bytes=1,
        format="wav",
        codec="pcm_s16le",
        sample_rate=8000,
        channels=1,
        duration=1.0,
    )
    job = Job(id="a" * 32, owner="u", audio=audio)
    raw = job.model_dump_json().replace('"language":"auto"', '"language":"rus"')
    assert Job.model_validate_json(raw).options.language == "rus"
