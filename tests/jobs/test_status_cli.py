"""``callannotate status`` tables (the integration test runs it against a real server)."""

from __future__ import annotations

from typing import Any

import pytest

from callannotate.cli import main
from callannotate.jobs.status_cli import format_queues, format_workers

WORKERS: dict[str, Any] = {
    "executor": "celery",
    "alive": 1,
    "lost": 1,
    "lost_after_s": 30.0,
    "workers": [
        {
            "host": "box-1",
            "pid": 4242,
            "executor": "celery",
            "name": "callannotate-1@box-1",
            "concurrency": 2,
            "jobs_running": ["a" * 32],
            "jobs_done": 7,
            "rss_bytes": 512 << 20,
            "models_loaded": ["asr", "vad"],
            "started_at": "2026-12-03T09:00:00+00:00",
            "heartbeat_age_s": 1.25,
            "lost": False,
        },
        {
            "host": "box-2",
            "pid": 77,
            "executor": "celery",
            "name": "n2",
            "concurrency": 2,
            "jobs_running": [],
            "jobs_done": 0,
            "rss_bytes": 0,
            "models_loaded": [],
            "started_at": "2026-12-03T08:00:00+00:00",
            "heartbeat_age_s": 400.0,
            "lost": True,
        },
    ],
}
QUEUES: dict[str, Any] = {
    "executor": "celery",
    "queue": {
        "depth": 3,
        "oldest_waiting_s": 12.5,
        "waiting_by_priority": {"9": 1, "5": 2},
        "states": {"queued": 3, "running": 1, "completed": 10, "failed": 2, "archived": 0},
        "finished": [
            {"window_s": 300, "completed": 4, "failed": 1, "cancelled": 0},
            {"window_s": 3600, "completed": 10, "failed": 2, "cancelled": 1},
        ],
    },
    "broker": {
        "unacked": 2,
        "queues": [
            {
                "name": "callannotate.heavy",
                "kind": "heavy",
                "depth": 3,
                "by_priority": {"9": 1, "5": 2},
                "oldest_waiting_s": 12.5,
            },
            {
                "name": "callannotate.light",
                "kind": "light",
                "depth": 0,
                "by_priority": {},
                "oldest_waiting_s": None,
            },
        ],
    },
    "broker_error": None,
}


def test_workers_table() -> None:
    lines = format_workers(WORKERS)
    assert lines[0].startswith("Workers (executor celery): 1 alive, 1 lost")
    header, first, second = lines[1:]
    assert header.split() == [
        "HOST",
        "PID",
        "EXECUTOR",
        "NAME",
        "CONC",
        "RUNNING",
        "DONE",
        "RSS",
        "MODELS",
        "STARTED",
        "HEARTBEAT",
    ]
    assert "4242" in first and "512 MiB" in first and "asr,vad" in first and "a" * 32 in first
    assert first.endswith("1.2 s ago") and second.endswith("6.7 min ago  LOST")
    assert header.index("PID") == first.index("4242")  # columns line up


def test_queues_table() -> None:
    text = "\n".join(format_queues(QUEUES))
    assert "Queue folder: 3 waiting (oldest 12.5 s; by priority p9: 1, p5: 2)" in text
    assert "states: queued 3, running 1, completed 10, failed 2, archived 0" in text
    assert "last 5.0 min" in text and "last 60.0 min" in text
    assert "Celery queues (2 delivered, not acknowledged):" in text
    assert "callannotate.light  light  0" in text
    assert "Light tasks:" not in text  # none reported: no table
    light = [
        {"kind": "enroll", "waiting": 2, "delayed": 0, "running": 1, "orphaned": 0,
         "oldest_waiting_s": 3.5},
        {"kind": "callback", "waiting": 0, "delayed": 4, "running": 0, "orphaned": 1,
         "oldest_waiting_s": 95.0},
    ]  # fmt: skip
    rows = format_queues({**QUEUES, "light": light})
    header = next(line for line in rows if "BACKOFF" in line)
    enroll = next(line for line in rows if line.strip().startswith("enroll"))
    assert "enroll    2        0        1        0         3.5 s" in enroll
    assert header.index("OLDEST") == enroll.index("3.5 s")
    broken = {**QUEUES, "broker": None, "broker_error": "ConnectionError: refused"}
    assert "cannot read the broker: ConnectionError: refused" in "\n".join(format_queues(broken))


def test_status_names_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:1", "--timeout", "2"]) == 2
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err
