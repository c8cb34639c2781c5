"""Runners failing with a transient or a permanent error, for the retry tests (pickled into
spawned worker processes, like fake_runners)."""

from __future__ import annotations

import errno
from pathlib import Path

from fake_runners import SleepRunner, result_json

from callannotate.errors import InvalidAudio
from callannotate.jobs.runner import JobContext, JobRequest


class FlakyIORunner(SleepRunner):
    """Fails with a temporary I/O error (EIO) ``failures`` times in all, then succeeds; the
    count lives in a file because every attempt may run in another process."""

    def __init__(self, counter: Path, failures: int) -> None:
        super().__init__()
        self.counter = counter
        self.failures = failures

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=0, total=1)
        done = int(self.counter.read_text()) if self.counter.exists() else 0
        if done < self.failures:
            self.counter.write_text(str(done + 1))
            raise OSError(errno.EIO, "Input/output error", "/mnt/shared/recording.wav")
        return result_json(request)


class UndecodableRunner(SleepRunner):
    """Fails every job as the decoder does with bytes that are no audio."""

    def run(self, request: JobRequest, ctx: JobContext) -> str:
        ctx.hook("decode", completed=0, total=1)
        raise InvalidAudio("the file is not decodable audio")
