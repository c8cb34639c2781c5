"""Scoring against enrolled voices: normalisation fitted on the store, fusion, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from callannotate.pipeline.speakers.embedding import l2_normalize
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


def test_views_feed_the_within_class_estimate_only() -> None:
    _, takes = speakers(4, 6, 16, seed=4)
    emb = np.asarray([ts[0] for ts in takes], dtype=np.float32)
    owner = np.arange(4)
    views = np.asarray([t for ts in takes for t in ts[1:]], dtype=np.float32)
    view_owner = np.repeat(np.arange(4), 5)
    # One sample per voice: no WCCN without views, WCCN from the views with them.
    assert fit_normaliser(emb, owner, shrink=0.5).transform is None
    with_views = fit_normaliser(emb, owner, 0.5, views, view_owner)
    assert with_views.transform is not None
    # The centring mean is that of the samples, whatever the views.
    plain = fit_normaliser(emb, owner, shrink=0.5)
    assert plain.mean is not None and with_views.mean is not None
    assert np.allclose(with_views.mean, plain.mean)
    # Views of a voice that is not in the gallery are ignored.
    stray = fit_normaliser(
        emb, owner, 0.5, np.concatenate([views, views[:2]]), np.r_[view_owner, 9, 9]
    )
    assert stray.transform is not None
    assert np.allclose(stray.transform, with_views.transform)


def test_gallery_uses_stored_views_and_old_samples_without_them() -> None:
    _, takes = speakers(5, 8, 24, seed=5)
    old = [voice(f"v{i}", ts[:3]) for i, ts in enumerate(takes)]
    new = [
        v.model_copy(
            update={
                "samples": [
                    s.model_copy(update={"views": [t.tolist() for t in takes[i][3:7]]})
                    for s in v.samples
                ]
            }
        )
        for i, v in enumerate(old)
    ]
    g_old = build_gallery(old, embedding_model=MODEL, center=True)
    g_new = build_gallery(new, embedding_model=MODEL, center=True)
    assert g_old.centred and g_new.centred
    t_old = g_old.normalisers[CAMPP].transform
    t_new = g_new.normalisers[CAMPP].transform
    assert t_old is not None and t_new is not None and not np.allclose(t_old, t_new)
    probe = Embeddings(takes[2][7])
    assert int(np.argmax(score(probe, g_new))) == 2
    # Views of the wrong size (another model) are skipped, not an error.
    bad = [
        v.model_copy(
            update={"samples": [s.model_copy(update={"views": [[0.1, 0.2]]}) for s in v.samples]}
        )
        for v in old
    ]
    g_bad = build_gallery(bad, embedding_model=MODEL, center=True)
    t_bad = g_bad.normalisers[CAMPP].transform
    assert t_bad is not None and np.allclose(t_bad, t_old)
