"""``benchmarks/load.py``: the locust load test against a real server, with small numbers.

The run asserts no failures and that every request type was exercised; the times it measures
are printed by the benchmark, never asserted (the machine may be shared)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
LOAD = REPO / "benchmarks" / "load.py"


def _load_module() -> ModuleType:
    """``benchmarks/load.py`` as a module (it does not import locust: no gevent patching)."""
    spec = importlib.util.spec_from_file_location("load", LOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load"] = module
    spec.loader.exec_module(module)
    return module


def test_durations_are_parsed_and_bad_ones_refused() -> None:
    load = _load_module()
    assert load.parse_seconds("15s") == 15
    assert load.parse_seconds("2m") == 120
    assert load.parse_seconds("1h30m") == 5400
    assert load.parse_seconds("45") == 45
    with pytest.raises(Exception, match="bad duration"):
        load.parse_seconds("ten seconds")


def test_websocket_share_becomes_whole_user_weights() -> None:
    load = _load_module()
    assert load.plan_weights(0.2) == (4, 1)
    assert load.plan_weights(0.25) == (3, 1)
    assert load.plan_weights(0.0) == (1, 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wait", "1"], "--wait takes min,max"),
        (["--wait", "2,1"], "min <= max"),
        (["--ws-share", "1.5"], "--ws-share"),
        (["--users", "0"], "--users must be at least 1"),
        (["--run-time", "soon"], "bad duration"),
        (["--mix", "polls=3"], "is not NAME=WEIGHT"),
        (["--mix", "status=0,result=0,list=0,upload=0,isolation=0"], "at least one weight"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(LOAD), *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.integration
@pytest.mark.models
def test_small_load_run_has_no_failures_and_exercises_every_request_type(
    tmp_path: Path,
) -> None:
    load = _load_module()
    summary = tmp_path / "summary.json"
    # A short run (every client starts within 1 s) in which the rare request types are not
    # rare (the default mix gives uploads and isolation probes 1 in 27 REST requests each): each
    # type is expected ~15 times, so none goes unexercised by chance. One completed job per
    # account is enough for the result downloads and the other-account probes.
    argv = [sys.executable, str(LOAD), "--users", "10", "--spawn-rate", "10", "--run-time", "6s"]
    argv += ["--mix", "status=6,result=2,list=2,upload=2,isolation=2", "--completed", "1"]
    argv += ["--json-out", str(summary)]
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # load.py stops its server on SIGTERM
        output, _ = process.communicate(timeout=90)
        pytest.fail(f"load.py did not finish within 400 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    figures = json.loads(summary.read_text())
    rows = {row["name"]: row for row in figures["rows"]}
    assert figures["failures"] == [], figures["failures"]
    assert rows["Aggregated"]["failures"] == 0
    for name in load.ALL_NAMES:
        assert rows.get(name, {}).get("requests", 0) > 0, f"{name} was not exercised:\n{output}"
    assert figures["not_exercised"] == []
    assert figures["rate_limits"] == "raised"
    assert "rate limits: on, role `user` budgets raised" in output
    assert "GET /jobs/{id} p99" in output and "target < 50 ms" in output
    assert "stopped pid" in output  # the server was stopped by its pid
