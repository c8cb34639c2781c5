"""The one place a job record is built: probe the staged audio, describe it, queue it.

Both ways in (``POST /jobs`` and ``WS /stream`` with ``create_job``) call :func:`new_job`,
so a job's stored name and served type always come from what the audio decodes as, never
from the client's filename (an HTML page renamed ``.wav`` is not audio; an MP3 named
``.wav`` is stored as ``audio.mp3`` and served as ``audio/mpeg``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.fsutil import PRIVATE_FILE
from callannotate.jobs.models import DEFAULT_PRIORITY, AudioMeta, Job
from callannotate.jobs.speaker_contacts import numbers_from_filename
from callannotate.observability.logging import request_id_var
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.types import AnnotateOptions
from callannotate.security.atrest import vault_for

# ffmpeg container name (first of PyAV's ``format.name`` list) -> (extension, media type).
AUDIO_TYPES: dict[str, tuple[str, str]] = {
    "wav": ("wav", "audio/wav"),
    "w64": ("w64", "audio/wav"),
    "flac": ("flac", "audio/flac"),
    "mp3": ("mp3", "audio/mpeg"),
    "ogg": ("ogg", "audio/ogg"),
    "mov": ("m4a", "audio/mp4"),
    "matroska": ("webm", "audio/webm"),
    "webm": ("webm", "audio/webm"),
    "aac": ("aac", "audio/aac"),
    "amr": ("amr", "audio/amr"),
    "aiff": ("aiff", "audio/aiff"),
    "au": ("au", "audio/basic"),
    "caf": ("caf", "audio/x-caf"),
    "wv": ("wv", "audio/x-wavpack"),
    "asf": ("wma", "audio/x-ms-wma"),  # WMA: Windows call recorders
}
UNKNOWN_TYPE = ("bin", "application/octet-stream")


def audio_type(container: str) -> tuple[str, str]:
    """``(extension, media type)`` of a probed container; ``("bin", octet-stream)`` if unknown."""
    return AUDIO_TYPES.get(container.split(",")[0].strip().lower(), UNKNOWN_TYPE)


def stored_name(container: str) -> str:
    """The name the audio is stored under, from its decoded container: ``audio.<ext>``."""
    return f"audio.{audio_type(container)[0]}"


def new_job(
    queue: FileQueue,
    settings: Settings,
    *,
    staged_path: Path,
    filename: str,
    options: AnnotateOptions,
    owner: str,
    callback_url: str | None = None,
    caller: str | None = None,
    callee: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    before_visible: Callable[[Job], None] | None = None,
) -> Job:
    """Probe ``staged_path`` (``InvalidAudio`` when it is not audio), build the job record and
    queue it durably (the staged file is moved into the job folder, mode 0600).

    ``filename`` is the display name (already made safe by the caller). ``caller`` and
    ``callee`` are E.164 numbers; when neither is given they are read from ``filename`` with
    ``call.filename_pattern`` (when set). ``priority`` (0-9, 9 most urgent) orders the
    queue. ``before_visible(job)`` runs once the job is stored and before a worker can
    claim it: the API announces ``job.queued`` there. Blocking: call it from a worker thread.
    """
    if caller is None and callee is None:  # a call recorder's file name may carry them
        numbers = numbers_from_filename(
            filename, settings.call.filename_pattern, settings.contacts.default_region
        )
        caller, callee = numbers.get("caller"), numbers.get("callee")
    vault = vault_for(settings)
    probe = audio_io.probe(staged_path, vault=vault)
    os.chmod(staged_path, PRIVATE_FILE)
    job = Job(
        id=queue.new_job_id(),
        owner=owner,
        options=options,
        callback_url=callback_url,
        caller=caller,
        callee=callee,
        priority=priority,
        request_id=request_id_var.get(),  # correlates the worker's log lines with the request
        audio=AudioMeta(
            filename=filename,
            stored_as=stored_name(probe.format),
            size_bytes=vault.plaintext_size(staged_path),
            format=probe.format,
            codec=probe.codec,
            sample_rate=probe.sample_rate,
            channels=probe.channels,
            duration=round(probe.duration, 3),
        ),
        max_attempts=settings.queue.max_attempts,
    )
    return queue.submit(job, staged_path, before_visible=before_visible)
