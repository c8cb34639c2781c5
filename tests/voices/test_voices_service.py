"""Enrollment checks, scoring and identification with a fake embedder (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from voices_testing import FakeEmbedder

from callannotate.errors import ConfigError, NotFound, Unprocessable
from callannotate.pipeline.types import (
    Annotation,
    AudioBuffer,
    RecordingInfo,
    Speaker,
    Turn,
)
from callannotate.voices.service import (
    Identifier,
    RecognitionParams,
    VoiceService,
    check_sample,
    gallery_of,
    match_of,
    measure_sample,
    reflect_pad,
    speaker_audio,
    view_windows,
)
from callannotate.voices.store import VoiceStore

SR = 16_000


def speechlike(seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with syllable-like level changes (4 Hz), peak exactly ``amplitude``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    x = rng.standard_normal(t.size) * envelope
    return (x / np.max(np.abs(x)) * amplitude).astype(np.float32)


@pytest.fixture
def service(tmp_path: Path, fake_embedder: FakeEmbedder) -> VoiceService:
    return VoiceService(VoiceStore(tmp_path / "voices"), fake_embedder, RecognitionParams())


def test_measure_sample() -> None:
    q = measure_sample(speechlike(2.0, 0.5))
    assert q.duration == pytest.approx(2.0)
    assert 0.8 < q.speech_duration < 2.0
    assert q.snr_db is not None and q.snr_db > 10
    silent = measure_sample(np.zeros(SR, np.float32))
    assert silent.speech_duration == 0 and silent.peak_dbfs < -100
    noise = np.random.default_rng(1).standard_normal(2 * SR).astype(np.float32) * 0.05
    assert measure_sample(noise).speech_duration == 0  # steady noise is not speech


def test_check_sample_refuses_silent_and_short() -> None:
    params = RecognitionParams()
    with pytest.raises(Unprocessable, match="silent"):
        check_sample(measure_sample(np.zeros(SR, np.float32)), params, "x")
    with pytest.raises(Unprocessable, match="too little speech"):
        check_sample(measure_sample(speechlike(0.1, 0.5)), params, "x")
    check_sample(measure_sample(speechlike(1.0, 0.5)), params, "x")


def test_reflect_pad() -> None:
    x = np.arange(4, dtype=np.float32)
    assert reflect_pad(x, 3) is x
    assert reflect_pad(x, 10).tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]


def test_enroll_identify_and_unknown(service: VoiceService) -> None:
    ivan = service.enroll("Ivan", [service.make_sample(speechlike(1.0, 0.3), "i.wav")], "c-1")
    anna = service.enroll("Anna", [service.make_sample(speechlike(1.0, 0.7), "a.wav")])
    assert ivan.contact_id == "c-1" and len(ivan.samples[0].embedding) == 192
    assert ivan.samples[0].speech_duration > 0.5
    e = FakeEmbedder.direction
    matches = service.identify({"S0": e(3), "S1": e(7), "S2": e(5)})
    assert matches["S0"].voice_id == ivan.id and matches["S0"].accepted
    assert matches["S0"].contact_id == "c-1" and matches["S0"].score == pytest.approx(1.0)
    assert matches["S1"].name == "Anna"
    assert not matches["S2"].accepted and matches["S2"].voice_id is None  # unknown
    assert matches["S2"].threshold == service.params.threshold
    added = service.add_samples(anna.id, [service.make_sample(speechlike(1.0, 0.7, 2), "b.wav")])
    assert len(added.samples) == 2


def test_enroll_refuses_bad_input(service: VoiceService) -> None:
    with pytest.raises(Unprocessable):
        service.make_sample(np.zeros(SR, np.float32), "silence.wav")
    with pytest.raises(Unprocessable):
        service.enroll("  ", [service.make_sample(speechlike(1.0, 0.3), "x.wav")])
    with pytest.raises(Unprocessable):
        service.enroll("Ivan", [])
    with pytest.raises(NotFound):
        service.add_samples("0" * 32, [service.make_sample(speechlike(1.0, 0.3), "x.wav")])


def test_centring_falls_back_to_cosine_with_few_voices(service: VoiceService) -> None:
    service.enroll("Ivan", [service.make_sample(speechlike(1.0, 0.3), "i.wav")])
    params = RecognitionParams(score_norm="center", min_voices=3)
    gallery = gallery_of(service.store.list(), params)
    assert not gallery.centred
    match = match_of(FakeEmbedder.direction(3), gallery, params)
    assert match.threshold == params.threshold and match.accepted
    assert match.score == pytest.approx(1.0, abs=1e-4)


def test_centred_scoring_with_enough_voices(service: VoiceService) -> None:
    for i in range(1, 8):
        samples = [service.make_sample(speechlike(1.0, i / 10, s), f"{i}.wav") for s in range(2)]
        service.enroll(f"voice {i}", samples)
    params = RecognitionParams(score_norm="center", min_voices=3)
    gallery = gallery_of(service.store.list(), params)
    assert gallery.centred and gallery.models == ("campp",)
    match = match_of(FakeEmbedder.direction(4), gallery, params)
    assert match.threshold == params.center_threshold
    assert match.accepted and match.name == "voice 4" and match.score > 0.9
    plain = RecognitionParams(score_norm="none")
    assert match_of(FakeEmbedder.direction(4), gallery_of(service.store.list(), plain), plain)


def test_params_from_config(tmp_path: Path) -> None:
    ident = Identifier(
        {"score_norm": "center", "min_voices": 4, "ge2e": {"enabled": False}, "threshold": 0.4},
        tmp_path,
    )
    params = ident.rparams
    assert params.min_voices == 4 and isinstance(params.min_voices, int)
    assert not params.use_ge2e and params.threshold == 0.4
    assert params.threshold_for(True, True) == params.fused_center_threshold
    assert params.threshold_for(False, False) == params.threshold
    # A bad setting is the server's configuration error (503), never a client's 400.
    with pytest.raises(ConfigError, match="recognition: score_norm"):
        Identifier({"score_norm": "tnorm"}, tmp_path)
    with pytest.raises(ConfigError, match=r"recognition\.ge2e: unknown key 'enable'"):
        Identifier({"ge2e": {"enable": False}}, tmp_path)


def test_speaker_audio_takes_the_speakers_turns() -> None:
    left = np.full(4 * SR, 0.1, np.float32)
    right = np.full(4 * SR, 0.2, np.float32)
    stereo = AudioBuffer(np.stack([left, right]), SR)
    turns = [Turn(start=0, end=1, speaker="A"), Turn(start=1, end=3, speaker="B")]
    params = RecognitionParams()
    a = speaker_audio(stereo, turns, "A", None, params)
    assert a.size == SR and np.allclose(a, 0.15)  # mixed
    b = speaker_audio(stereo, turns, "B", 1, params)
    assert b.size == 2 * SR and np.allclose(b, 0.2)  # its own channel
    capped = speaker_audio(stereo, turns, "B", 1, RecognitionParams(max_speaker_speech_s=0.5))
    assert capped.size == SR // 2
    assert speaker_audio(stereo, turns, "C", None, params).size == 0


def test_identifier_identify_speakers(tmp_path: Path, fake_embedder: FakeEmbedder) -> None:
    ident = Identifier({"threshold": 0.5}, tmp_path / "models")
    voices = tmp_path / "voices"
    buffer = AudioBuffer(
        np.concatenate([speechlike(2.0, 0.3), speechlike(2.0, 0.9, 1)])[None, :], SR
    )
    turns = [Turn(start=0, end=2, speaker="S0"), Turn(start=2, end=4, speaker="S1")]
    speakers = [Speaker(label="S0"), Speaker(label="S1"), Speaker(label="S2")]
    # Nothing enrolled:
    assert ident.identify_speakers(buffer, turns, speakers, voices_dir=voices) == {}
    service = ident.voice_service(voices, fake_embedder)
    ivan = service.enroll("Ivan", [service.make_sample(speechlike(1.0, 0.3, 5), "i.wav")])
    matches = ident.identify_speakers(
        buffer, turns, speakers, voices_dir=voices, embedder=fake_embedder
    )
    assert matches["S0"].voice_id == ivan.id and matches["S0"].accepted
    assert not matches["S1"].accepted
    assert "S2" not in matches  # no speech: left out


def test_enroll_from_job_errors(service: VoiceService, tmp_path: Path) -> None:
    ann = Annotation(
        recording=RecordingInfo(duration=4.0, sample_rate=SR, channels=1),
        speakers=[Speaker(label="S0"), Speaker(label="S1")],
        exclusive_turns=[Turn(start=0, end=2, speaker="S0")],
    )
    audio = tmp_path / "missing.wav"
    with pytest.raises(Unprocessable, match="either a name"):
        service.enroll_from_job(ann, audio, "j", "S0")
    with pytest.raises(NotFound):
        service.enroll_from_job(ann, audio, "j", "S9", name="X")
    with pytest.raises(Unprocessable, match="no speech turns"):
        service.enroll_from_job(ann, audio, "j", "S1", name="X")


def test_view_windows() -> None:
    params = RecognitionParams()
    short = view_windows(int(0.4 * SR), params)  # 0.3 of it is below view_min_s
    assert len(short) == 5 * 4
    assert sorted({b - a for a, b in short}) == [
        int(f * int(0.4 * SR)) for f in (0.4, 0.5, 0.6, 0.7, 0.8)
    ]
    assert all(0 <= a < b <= int(0.4 * SR) for a, b in short)
    long = view_windows(60 * SR, params)  # every fraction reaches the cap: 24 spread windows
    assert len(long) == 24 and {b - a for a, b in long} == {3 * SR}
    assert long[0][0] == 0 and long[-1][1] == 60 * SR
    assert len({a for a, _ in long}) == 24
    assert view_windows(int(0.1 * SR), params) == []
    assert view_windows(10 * SR, RecognitionParams(view_max_s=0)) == []


def test_samples_store_their_views(service: VoiceService, fake_embedder: FakeEmbedder) -> None:
    wave = speechlike(1.0, 0.3)
    sample = service.make_sample(wave, "i.wav")
    windows = view_windows(wave.size, service.params)
    assert len(sample.views) == len(windows) > 0
    assert all(len(v) == len(sample.embedding) for v in sample.views)
    assert sample.ge2e_views == []  # no GE2E embedder in this service
    voice = service.enroll("Ivan", [sample])
    assert "views" not in voice.info().samples[0].model_dump()
    stored = service.store.get(voice.id)
    assert len(stored.samples[0].views) == len(windows)
    no_views = VoiceService(
        service.store, fake_embedder, RecognitionParams(view_max_s=0)
    ).make_sample(wave, "j.wav")
    assert no_views.views == []
