"""``benchmarks/load.py``'s stall finder (``--loop-debug-ms``) and server-side quantiles."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
LOAD = REPO / "benchmarks" / "load.py"

BLOCKING = """\
import asyncio, time


async def stall():
    time.sleep(0.08)  # synchronous work on the loop: a stall
    await asyncio.sleep(0)


async def fine():
    await asyncio.sleep(0.05)  # waiting, not holding the loop


async def main():
    await asyncio.gather(stall(), fine())


asyncio.run(main())
"""


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_stalls", LOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_stalls"] = module
    spec.loader.exec_module(module)
    return module


def test_the_hook_reports_a_blocking_callback_and_not_a_waiting_one(tmp_path: Path) -> None:
    load = _load_module()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(load.LOOP_DEBUG_HOOK.format(ms=30))
    script = tmp_path / "blocking.py"
    script.write_text(BLOCKING)
    done = subprocess.run(
        [sys.executable, str(script)],
        env={"PYTHONPATH": str(hook), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    log = tmp_path / "serve.log"
    log.write_text(done.stderr)
    lines = [line for line in done.stderr.splitlines() if "LOOPDEBUG" in line]
    assert len(lines) == 1, done.stderr
    assert "stall at " in lines[0] and str(script) in lines[0]
    took = float(lines[0].split(" took ")[1].split()[0])
    assert 0.07 <= took < 1.0


def test_slow_callbacks_groups_and_sums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load = _load_module()
    log = tmp_path / "serve.log"
    log.write_text(
        "LOOPDEBUG Executing Cycle.run_asgi at x.py:420 [POST /jobs] took 0.050 s cpu 0.040 s\n"
        '{"message": "unrelated"}\n'
        "LOOPDEBUG Executing Cycle.run_asgi at x.py:420 [POST /jobs] took 0.030 s cpu 0.001 s\n"
        "LOOPDEBUG Executing _read_ready took 0.021 s cpu 0.000 s\n"
    )
    load.slow_callbacks(log, 20)
    out = capsys.readouterr().out
    assert "loop stalls > 20 ms: 3, 0.10 s in all, of it loop-thread CPU 0.04 s" in out
    first = out.splitlines()[2]
    assert "2x" in first and "max    50 ms" in first and "cpu    41 ms" in first
    assert "[POST /jobs]" in first


def test_server_quantiles_from_two_scrapes() -> None:
    load = _load_module()
    key = ("/jobs/{job_id}", "GET")
    bounds = (0.005, 0.01, 0.05, float("inf"))
    before = {key: dict(zip(bounds, (10.0, 10.0, 10.0, 10.0), strict=True))}
    # this phase: 90 requests <= 5 ms, 9 in (10, 50] ms, 1 above 50 ms
    after = {key: dict(zip(bounds, (100.0, 100.0, 109.0, 110.0), strict=True))}
    count, (p50, p95, p99) = load.server_quantiles(before, after)[key]
    assert count == 100
    assert p50 == pytest.approx(0.005 * 50 / 90)
    assert p95 == pytest.approx(0.01 + 0.04 * 5 / 9)
    assert p99 == pytest.approx(0.05)
    few = {key: dict(zip(bounds, (15.0, 15.0, 15.0, 15.0), strict=True))}
    assert load.server_quantiles(before, few) == {}  # under 20 requests: no quantiles
