"""Scoring against enrolled voices: normalisation fitted on the store, fusion, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from callannotate.pipeline.embedding import l2_normalize
from callannotate.voices.schemas import Voice, VoiceSample
from callannotate.voices.scoring import (
    CAMPP,
    GE2E,
    Embeddings,
    build_gallery,
    fit_normaliser,
    score,
)

MODEL = "campplus_cn_en_common"


def voice(name: str, campp: list[np.ndarray], ge2e: list[np.ndarray] | None = None) -> Voice:
    samples = [
        VoiceSample(
            id=f"{name}{i}",
            source="",
            duration=1,
            speech_duration=1,
            embedding=c.tolist(),
            ge2e_embedding=None if ge2e is None else ge2e[i].tolist(),
        )
        for i, c in enumerate(campp)
    ]
    return Voice(id=name, name=name, embedding_model=MODEL, samples=samples)


def speakers(
    n: int, per: int, dim: int, seed: int = 0, shared: float = 2.0
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Speaker directions sharing a strong common component (a 'channel'), plus takes."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim) * shared
    centres = [common + rng.standard_normal(dim) for _ in range(n)]
    takes = [
        [l2_normalize(c + 0.6 * rng.standard_normal(dim)) for _ in range(per)] for c in centres
    ]
    return centres, takes


def test_normaliser_removes_the_common_part() -> None:
    _, takes = speakers(6, 5, 32)
    emb = np.asarray([t for ts in takes for t in ts], dtype=np.float32)
    owner = np.repeat(np.arange(6), 5)
    norm = fit_normaliser(emb, owner, shrink=0.5)
    assert norm.mean is not None and norm.transform is not None
    z = norm(emb)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    raw_between = float(np.mean(emb[owner == 0] @ emb[owner == 1].T))
    z_between = float(np.mean(z[owner == 0] @ z[owner == 1].T))
    assert z_between < raw_between - 0.3  # other voices no longer look alike


def test_normaliser_without_repeated_samples_only_centres() -> None:
    _, takes = speakers(4, 1, 16)
    emb = np.asarray([ts[0] for ts in takes], dtype=np.float32)
    norm = fit_normaliser(emb, np.arange(4), shrink=0.5)
    assert norm.transform is None and norm.mean is not None


def test_centred_gallery_separates_better_and_single_voice_falls_back() -> None:
    _, takes = speakers(6, 6, 32, seed=1)
    voices = [voice(f"v{i}", ts[:5]) for i, ts in enumerate(takes)]
    probes = [(i, ts[5]) for i, ts in enumerate(takes)]
    plain = build_gallery(voices, embedding_model=MODEL)
    centred = build_gallery(voices, embedding_model=MODEL, center=True, min_voices=3)
    assert centred.centred and not plain.centred

    def margin(g: object) -> float:
        out = []
        for i, p in probes:
            s = score(Embeddings(p), g)  # type: ignore[arg-type]
            out.append(s[i] - np.max(np.delete(s, i)))
        return float(np.mean(out))

    assert margin(centred) > margin(plain)
    single = build_gallery(voices[:1], embedding_model=MODEL, center=True, min_voices=3)
    assert not single.centred
    assert score(Embeddings(takes[0][0]), single)[0] > 0.5


def test_fusion_needs_ge2e_on_both_sides() -> None:
    rng = np.random.default_rng(3)
    c = [l2_normalize(rng.standard_normal(8)) for _ in range(2)]
    g = [l2_normalize(rng.standard_normal(6)) for _ in range(2)]
    fused = build_gallery(
        [voice("a", c[:1], g[:1]), voice("b", c[1:], g[1:])], embedding_model=MODEL, use_ge2e=True
    )
    assert fused.models == (CAMPP, GE2E)
    both = score(Embeddings(c[0], g[0]), fused)
    assert both[0] == pytest.approx(1.0, abs=1e-5)
    assert fused.mode(Embeddings(c[0])) == (CAMPP,)
    assert score(Embeddings(c[0]), fused)[0] == pytest.approx(1.0, abs=1e-5)
    # One voice without GE2E embeddings: the whole gallery is scored with CAM++ alone.
    mixed = build_gallery(
        [voice("a", c[:1], g[:1]), voice("b", c[1:])], embedding_model=MODEL, use_ge2e=True
    )
    assert mixed.models == (CAMPP,)
    other = Voice(id="x", name="x", embedding_model="other", samples=voice("x", c[:1]).samples)
    assert build_gallery([other], embedding_model=MODEL).voices == []
    assert score(Embeddings(c[0]), build_gallery([], embedding_model=MODEL)).size == 0
