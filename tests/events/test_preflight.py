"""The event bus's Redis is checked before ``serve`` starts its server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callannotate import cli
from callannotate.config import EventSettings, Settings
from callannotate.events.preflight import redis_refusal
from local_servers import free_port


def _settings(tmp_path: Path, backend: str, url: str) -> Settings:
    events = EventSettings.model_validate({"backend": backend, "redis_url": url})
    return Settings(data_dir=tmp_path / "data", events=events)


REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def test_a_redis_that_answers_passes(tmp_path: Path) -> None:
    refusal = redis_refusal(_settings(tmp_path, "redis", REDIS_URL))
    if refusal is not None and os.environ.get("CI") != "true":
        pytest.skip(f"no Redis here: {refusal}")
    assert refusal is None


def test_no_redis_is_needed_with_the_memory_bus(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert redis_refusal(_settings(tmp_path, "memory", url)) is None


def test_a_redis_that_does_not_answer_is_named_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    refusal = redis_refusal(_settings(tmp_path, "redis", f"redis://:pw-secret@127.0.0.1:{port}/2"))
    assert refusal is not None
    assert refusal.startswith(f"cannot reach Redis at redis://127.0.0.1:{port}/2 (events.redis_url")
    assert "pw-secret" not in refusal


def test_serve_with_its_redis_down_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was uvicorn's "Application startup failed" with redis-py's traceback, exit 3."""
    port = free_port()
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_EVENTS__BACKEND", "redis")
    monkeypatch.setenv("CALLANNOTATE_EVENTS__REDIS_URL", f"redis://:pw-secret@127.0.0.1:{port}/0")
    assert cli.main(["serve", "--no-workers", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"callannotate: error: cannot reach Redis at redis://127.0.0.1:{port}/0")
    assert err.count("\n") == 1 and "Traceback" not in err and "pw-secret" not in err
