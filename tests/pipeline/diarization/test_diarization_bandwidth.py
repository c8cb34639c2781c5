"""Narrowband detection and the narrowband diarization settings (issue 15, item 15).

Telephone codecs leave nothing above about 4 kHz; the diarizer measures that on the decoded
signal (:mod:`callannotate.pipeline.diarization.bandwidth`) and then clusters with
``narrowband_threshold`` and counts with ``narrowband_count_bias``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from callannotate.pipeline.diarization import Diarizer
from callannotate.pipeline.diarization.bandwidth import is_narrowband, upper_band_db


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


AMI = _shared_data() / "diarization" / "ami"


def _noise(seconds: float = 3.0) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(int(16000 * seconds)).astype(np.float32)


def _telephone(signal: np.ndarray) -> np.ndarray:
    """``signal`` with nothing above 3.8 kHz (what decoding 8 kHz telephone audio gives)."""
    spectrum = np.fft.rfft(signal)
    spectrum[np.fft.rfftfreq(len(signal), 1 / 16000) > 3800] = 0
    return np.asarray(np.fft.irfft(spectrum, len(signal)), dtype=np.float32)


def test_flat_noise_is_wideband_and_its_8_khz_copy_is_narrowband() -> None:
    wide = _noise()
    assert abs(upper_band_db(wide)) < 3.0
    assert not is_narrowband(wide, -45.0)
    narrow = _telephone(wide)
    assert upper_band_db(narrow) < -45.0
    assert is_narrowband(narrow, -45.0)


def test_the_measure_follows_the_loud_frames_not_the_silence() -> None:
    # Band-limited speech-like noise with long stretches of wideband hiss at -60 dB: the
    # loudest half of the frames decides.
    narrow = _telephone(_noise(2.0))
    hiss = 1e-3 * _noise(2.0)
    signal = np.concatenate([narrow, hiss])
    assert is_narrowband(signal, -45.0)


def test_too_short_silent_or_low_rate_signals_give_no_band_limit() -> None:
    assert upper_band_db(np.zeros(100, dtype=np.float32)) == 0.0
    assert upper_band_db(np.zeros(16000, dtype=np.float32)) == 0.0
    assert upper_band_db(_noise(1.0), sample_rate=8000) == 0.0


def _diarizer(**settings: object) -> Diarizer:
    return Diarizer(settings, Path("/nonexistent-cache"), threads=1)


def test_narrowband_audio_gets_the_narrowband_settings() -> None:
    proc = _diarizer(
        threshold=0.8, count_bias=-0.05, narrowband_threshold=0.7, narrowband_count_bias=0.1
    )
    clustering, reconstruction = proc.settings_for(_telephone(_noise()))
    assert clustering.threshold == 0.7
    assert reconstruction.count_bias == 0.1
    clustering, reconstruction = proc.settings_for(_noise())
    assert clustering.threshold == 0.8
    assert reconstruction.count_bias == -0.05


def test_unset_or_disabled_narrowband_settings_change_nothing() -> None:
    narrow = _telephone(_noise())
    unset = _diarizer(threshold=0.8)
    assert unset.settings_for(narrow)[0].threshold == 0.8
    off = _diarizer(threshold=0.8, narrowband_threshold=0.7, narrowband_db=0.0)
    assert off.settings_for(narrow)[0].threshold == 0.8
    only_bias = _diarizer(threshold=0.8, narrowband_count_bias=0.2)
    clustering, reconstruction = only_bias.settings_for(narrow)
    assert clustering.threshold == 0.8
    assert reconstruction.count_bias == 0.2


@pytest.mark.skipif(not (AMI / "dev00.wav").is_file(), reason=f"shared data not found at {AMI}")
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_real_meeting_audio_is_wideband_and_its_telephone_codings_narrowband(
    tmp_path: Path,
) -> None:
    from callannotate.pipeline.audio.decode import decode

    assert not is_narrowband(decode(AMI / "dev00.wav").mono(), -45.0)
    quiet = ["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    for name, args in (
        ("g711.wav", ["-ar", "8000", "-c:a", "pcm_mulaw"]),
        ("gsm.gsm", ["-ar", "8000", "-c:a", "libgsm"]),
        ("mp3.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    ):
        target = tmp_path / name
        subprocess.run(
            ["ffmpeg", *quiet, "-i", str(AMI / "dev00.wav"), "-ac", "1", *args, str(target)],
            check=True,
        )
        level = upper_band_db(decode(target).mono())
        assert (level < -45.0) == (not name.startswith("mp3")), (name, level)
