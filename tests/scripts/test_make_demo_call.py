"""scripts/make_demo_call.sh: the demo's own two-voice call, made offline on a bare clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_demo_call.sh"
NO_TOOLS = 3  # the script's exit code when neither flite nor a libflite ffmpeg is installed


@pytest.fixture(scope="module")
def demo_call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "call.wav"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True)
    if done.returncode == NO_TOOLS and os.environ.get("CI") != "true":
        pytest.skip(f"no speech synthesizer: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return out


def test_demo_call_is_a_short_16khz_mono_call_with_speech(demo_call: Path) -> None:
    info = sf.info(str(demo_call))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 20.0 <= info.duration <= 30.0
    audio, _ = sf.read(str(demo_call), dtype="float32")
    frames = audio[: len(audio) // 480 * 480].reshape(-1, 480)  # 30 ms frames
    level_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    voiced = float(np.mean(level_db > -45.0))
    assert 0.5 < voiced < 0.97, f"{voiced:.0%} of the frames carry sound"
    assert float(np.max(np.abs(audio))) < 0.99  # no clipping


def test_demo_call_sounds_like_a_phone_line(demo_call: Path) -> None:
    audio, rate = sf.read(str(demo_call), dtype="float32")
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    total = power.sum()
    assert power[freqs > 3800].sum() / total < 0.002  # gone at 8 kHz sampling
    assert power[freqs < 150].sum() / total < 0.01  # high-passed at 300 Hz
    assert power[(freqs > 300) & (freqs < 3400)].sum() / total > 0.85


def test_demo_call_is_the_same_every_time(demo_call: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.wav"
    subprocess.run(["bash", str(SCRIPT), str(again)], check=True, capture_output=True)
    assert again.read_bytes() == demo_call.read_bytes()


def test_demo_call_refuses_no_output_argument() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "usage" in done.stderr
