"""scripts/demo.sh: the first command of the quick start works on a bare clone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_TOOLS = 3  # scripts/make_demo_call.sh: no speech synthesizer installed


@pytest.mark.models
def test_demo_makes_its_own_call_and_finds_both_voices(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CALLANNOTATE_SKIP_SETUP": "1",  # the test runs inside the set-up checkout
        "CALLANNOTATE_DEMO_OUT": str(tmp_path / "out"),
        "CALLANNOTATE_DATA_DIR": str(tmp_path / "data"),
        "CALLANNOTATE_SHARED_DATA": str(tmp_path / "no-shared-data"),  # as on a bare clone
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    if done.returncode == NO_TOOLS and os.environ.get("CI") != "true":
        pytest.skip(f"no speech synthesizer: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr

    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    expected = ["demo_call.html", "demo_call.json", "demo_call.rttm", "demo_call.srt"]
    assert names == sorted([*expected, "demo_call.utterances.csv", "demo_call.wav"])
    annotation = json.loads((out / "demo_call.json").read_text())
    assert [s["label"] for s in annotation["speakers"]] == ["SPEAKER_00", "SPEAKER_01"]
    text = " ".join(u["text"] for u in annotation["utterances"]).lower()
    assert "northwind support" in text and "account number" in text
    agent = next(u for u in annotation["utterances"] if "northwind" in u["text"].lower())
    caller = next(u for u in annotation["utterances"] if "internet" in u["text"].lower())
    assert agent["speaker"] != caller["speaker"]

    # The one-screen summary: both speakers, the opening line and where the reports are.
    summary = done.stdout
    assert "SPEAKER_00:" in summary and "SPEAKER_01:" in summary
    assert "Northwind support" in summary
    assert f"reports: {out / 'demo_call.html'}" in summary
