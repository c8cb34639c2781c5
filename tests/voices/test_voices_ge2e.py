"""GE2E front end (no model) and the real encoder from the resemblyzer wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from voices_testing import FSDD, needs_fsdd

from callannotate.voices.ge2e import (
    GE2E_DIM,
    N_MELS,
    PARTIAL_FRAMES,
    GE2EEmbedder,
    mel_filters,
    mel_power,
    normalize_level,
    partials,
)

SR = 16_000


def test_mel_filters_cover_the_band() -> None:
    w = mel_filters()
    assert w.shape == (N_MELS, 201)
    assert (w >= 0).all() and (w.sum(axis=0)[1:-1] > 0).all()
    peaks = w.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # ordered low to high


def test_mel_power_of_a_tone_peaks_at_its_band() -> None:
    t = np.arange(SR) / SR
    low = mel_power(np.sin(2 * np.pi * 300 * t).astype(np.float32))
    high = mel_power(np.sin(2 * np.pi * 3000 * t).astype(np.float32))
    assert low.shape == (101, N_MELS)
    assert low.mean(axis=0).argmax() < high.mean(axis=0).argmax()


def test_normalize_level_is_level_invariant() -> None:
    x = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.01
    a, b = normalize_level(x, -30.0), normalize_level(x * 20, -30.0)
    assert np.allclose(a, b, atol=1e-6)
    assert 20 * np.log10(np.sqrt(np.mean(a**2))) == pytest.approx(-30.0, abs=0.01)
    assert not normalize_level(np.zeros(100, np.float32), -30.0).any()


def test_partials() -> None:
    short = np.zeros((40, N_MELS), np.float32)
    assert len(partials(short)) == 1 and partials(short)[0].shape[0] == 40
    long = np.zeros((400, N_MELS), np.float32)
    parts = partials(long)
    assert len(parts) == 4 and all(p.shape[0] == PARTIAL_FRAMES for p in parts)


needs_resemblyzer = pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None,
    reason="resemblyzer==0.1.4 not installed (pip install --no-deps resemblyzer==0.1.4)",
)


@pytest.mark.models
@needs_resemblyzer
@needs_fsdd
def test_real_encoder_tells_fsdd_speakers_apart(model_cache: Path) -> None:
    from callannotate.pipeline.audio.decode import decode

    enc = GE2EEmbedder({}, model_cache, threads=1)
    waves = [decode(FSDD / f"{d}_{s}_1.wav").mono() for s in ("jackson", "theo") for d in range(4)]
    emb = enc.embed_batch(waves)
    assert emb.shape == (8, GE2E_DIM)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    same = np.mean([sims[i, j] for i in range(4) for j in range(4) if i != j])
    other = np.mean(sims[:4, 4:])
    assert same > other
    # A quieter copy embeds the same (level-invariant front end).
    assert float(enc.embed_batch([waves[0] * 0.1])[0] @ emb[0]) > 0.999
