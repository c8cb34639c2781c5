"""``build_job_service``: what the settings decide about the executor it builds."""

from __future__ import annotations

from pathlib import Path

from fake_runners import SleepRunner

from callannotate.config import Settings, WorkerSettings
from callannotate.jobs.executors.local import LocalExecutor
from callannotate.jobs.service import build_job_service


def test_the_stop_grace_of_the_embedded_pool_comes_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, workers=WorkerSettings(stop_grace_s=2.5))
    service = build_job_service(settings, embedded=True, runner=SleepRunner())
    assert isinstance(service.executor, LocalExecutor)
    assert service.executor.manager.grace_s == 2.5
    default = build_job_service(Settings(data_dir=tmp_path), embedded=True, runner=SleepRunner())
    assert isinstance(default.executor, LocalExecutor)
    assert default.executor.manager.grace_s == 30.0
