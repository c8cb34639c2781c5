"""A ``serve``-like process that dies right after a job ended, before its callback delivery
is stored (tests/jobs/test_callback_sweep.py).

``python tests/jobs/callback_kill_main.py TMP CALLBACK_URL``: builds the real job service
(embedded queue manager, a fake runner) on ``callback_settings(TMP)``, submits one job with
``CALLBACK_URL`` and prints its id. When the job has ended (its final state written) the
process SIGKILLs itself at the moment the callback dispatcher would store the delivery: the
state a process killed in that window leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from fake_runners import SleepRunner
from queue_testing import new_job
from test_callbacks import callback_settings

from callannotate.jobs.callbacks import CallbackDispatcher
from callannotate.jobs.events import JobEvent
from callannotate.jobs.light import LightTask
from callannotate.jobs.service import build_job_service


def _die(self: CallbackDispatcher, event: JobEvent) -> LightTask | None:
    os.kill(os.getpid(), signal.SIGKILL)
    return None  # pragma: no cover - never reached


async def main(tmp: Path, url: str) -> None:
    CallbackDispatcher.queue_delivery = _die  # type: ignore[method-assign]
    service = build_job_service(callback_settings(tmp), embedded=True, runner=SleepRunner())
    await service.start()
    job = new_job(service.queue, callback_url=url)
    service.executor.submit(job.id)
    print(job.id, flush=True)
    await asyncio.sleep(120)  # killed long before
    await service.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
