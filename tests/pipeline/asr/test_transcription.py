"""Transcription helpers without models: joining + checksums, chunking, speakers, numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from callannotate.errors import BadRequest, ConfigError, ModelUnavailable
from callannotate.pipeline.asr import whisper_models
from callannotate.pipeline.asr.spoken_numbers import spell_numbers, spell_numbers_in_words
from callannotate.pipeline.asr.transcription import (
    SpeakerRegion,
    Transcriber,
    TranscriptionInput,
    assign_region_speakers,
    check_language,
    speech_clips,
)
from callannotate.pipeline.asr.whisper_models import (
    KNOWN_MODELS,
    PackagedFile,
    PackagedWhisper,
    join_parts,
    whisper_model_dir,
)
from callannotate.pipeline.types import Word


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _word(text: str, start: float, end: float, p: float = 0.9) -> Word:
    return Word(text=text, start=start, end=end, probability=p)


# ------------------------------------------------------------------ joining + checksums


def test_join_parts_concatenates_and_checks_digest(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello ")
    b.write_bytes(b"world")
    target = join_parts([a, b], tmp_path / "out" / "model.bin", _sha(b"hello world"))
    assert target.read_bytes() == b"hello world"


def test_join_parts_rejects_wrong_digest_and_leaves_nothing(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"abc")
    target = tmp_path / "out" / "model.bin"
    with pytest.raises(ModelUnavailable, match="sha256"):
        join_parts([a], target, _sha(b"something else"))
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind


def _fake_split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PackagedWhisper:
    """A split model whose 'packages' live in tmp_path (found through package_dir)."""
    pkg1, pkg2 = tmp_path / "pkg1", tmp_path / "pkg2"
    (pkg1 / "data").mkdir(parents=True)
    (pkg2 / "data").mkdir(parents=True)
    (pkg1 / "data" / "model.bin.part1").write_bytes(b"AAAA")
    (pkg2 / "data" / "model.bin.part2").write_bytes(b"BBBB")
    for name in whisper_models.SIDE_FILES:
        (pkg1 / "data" / name).write_text(name)
    roots = {"pkg1": pkg1, "pkg2": pkg2}

    def fake_package_dir(package: str, pip: str | None = None) -> Path:
        if package not in roots:
            raise ModelUnavailable(f"package {package!r} is not installed; pip install {pip}")
        return roots[package]

    monkeypatch.setattr(whisper_models, "package_dir", fake_package_dir)
    return PackagedWhisper(
        name="fake",
        parts=(
            PackagedFile("pkg1", "data/model.bin.part1", _sha(b"AAAA"), "pkg1==1"),
            PackagedFile("pkg2", "data/model.bin.part2", _sha(b"BBBB"), "pkg2==1"),
        ),
        side_package="pkg1",
        side_dir="data",
        sha256=_sha(b"AAAABBBB"),
        side_pip="pkg1==1",
    )


def test_split_model_is_joined_once_into_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_split_model(tmp_path, monkeypatch)
    monkeypatch.setitem(KNOWN_MODELS, "fake", spec)
    cache = tmp_path / "cache"
    model_dir = whisper_model_dir("fake", cache)
    assert model_dir.parent == cache
    assert (model_dir / "model.bin").read_bytes() == b"AAAABBBB"
    for name in whisper_models.SIDE_FILES:
        assert (model_dir / name).read_text() == name
    mtime = (model_dir / "model.bin").stat().st_mtime_ns
    assert whisper_model_dir("fake", cache) == model_dir
    assert (model_dir / "model.bin").stat().st_mtime_ns == mtime  # not joined again


def test_damaged_part_is_reported_with_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_split_model(tmp_path, monkeypatch)
    monkeypatch.setitem(KNOWN_MODELS, "fake", spec)
    (tmp_path / "pkg2" / "data" / "model.bin.part2").write_bytes(b"XXXX")
    with pytest.raises(ModelUnavailable, match="pkg2==1"):
        whisper_model_dir("fake", tmp_path / "cache")


def test_damaged_joined_file_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_split_model(tmp_path, monkeypatch)
    monkeypatch.setitem(KNOWN_MODELS, "fake", spec)
    model_dir = whisper_model_dir("fake", tmp_path / "cache")
    (model_dir / "model.bin").write_bytes(b"AAAABBBC")
    with pytest.raises(ModelUnavailable, match="joined again"):
        whisper_model_dir("fake", tmp_path / "cache")


def test_missing_package_names_pip_requirement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_split_model(tmp_path, monkeypatch)
    broken = PackagedWhisper(
        name="broken",
        parts=(spec.parts[0], PackagedFile("absent", "x", "0" * 64, "absent-pkg==9")),
        side_package="pkg1",
        side_dir="data",
        sha256=spec.sha256,
        side_pip="pkg1==1",
    )
    monkeypatch.setitem(KNOWN_MODELS, "broken", broken)
    with pytest.raises(ModelUnavailable, match="absent-pkg==9"):
        whisper_model_dir("broken", tmp_path / "cache")


def test_user_model_directory(tmp_path: Path) -> None:
    root = tmp_path / "large-v3"
    root.mkdir()
    (root / "model.bin").write_bytes(b"weights")
    (root / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"tokenizer\.json"):
        whisper_model_dir("base", tmp_path, path=root)
    (root / "tokenizer.json").write_text("{}")
    assert whisper_model_dir("base", tmp_path, path=root, sha256=_sha(b"weights")) == root
    with pytest.raises(ModelUnavailable, match="sha256"):
        whisper_model_dir("base", tmp_path, path=root, sha256="0" * 64)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        whisper_model_dir("base", tmp_path, path=tmp_path / "nope")


def test_unknown_model_name() -> None:
    with pytest.raises(ModelUnavailable, match="packaged models"):
        whisper_model_dir("large-v9", Path("/nonexistent"))


# ------------------------------------------------------------------ options and helpers


def test_transcriber_reads_typed_settings() -> None:
    proc = Transcriber(
        {"beam_size": 2, "temperatures": [0.0, 0.5], "strategy": "regions"}, Path("/nowhere")
    )
    opts = proc.options
    assert opts.beam_size == 2
    assert opts.temperatures == (0.0, 0.5)
    assert opts.strategy == "regions"
    with pytest.raises(ConfigError, match="transcription: strategy"):
        Transcriber({"strategy": "sideways"}, Path("/nowhere"))
    with pytest.raises(ConfigError, match="unknown key 'beam'"):
        Transcriber({"beam": 2}, Path("/nowhere"))
    with pytest.raises(ConfigError, match="does-not-exist"):
        Transcriber({"model": "does-not-exist"}, Path("/nowhere"))


def test_check_language() -> None:
    assert check_language(None) == "auto"
    assert check_language("RU") == "ru"
    with pytest.raises(BadRequest):
        check_language("russian!")
    assert check_language("haw") == "haw"
    with pytest.raises(BadRequest, match="'xx'"):  # code-shaped, but no Whisper language
        check_language("xx")


def test_speech_clips_merge_short_gaps() -> None:
    sr = 16000
    spans = [(0, sr), (int(1.5 * sr), 3 * sr), (10 * sr, 12 * sr)]
    assert speech_clips(spans, 2.0) == [(0.0, 3.0), (10.0, 12.0)]
    assert speech_clips(spans, 0.1) == [(0.0, 1.0), (1.5, 3.0), (10.0, 12.0)]
    assert speech_clips([], 2.0) == []


def test_assign_region_speakers_by_overlap() -> None:
    words = [_word("hello", 0.1, 0.5), _word("hi", 1.1, 1.4), _word("there", 1.45, 2.2)]
    regions = [
        SpeakerRegion(0.0, 1.0, "A"),
        SpeakerRegion(1.0, 1.5, "B"),
        SpeakerRegion(1.5, 3, "A"),
    ]
    out = assign_region_speakers(words, regions)
    assert [w.speaker for w in out] == ["A", "B", "A"]


def test_engine_free_paths_without_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence returns an empty result without decoding."""

    class NoEngine:
        multilingual = True

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"engine.{name} must not be used for silence")

    proc = Transcriber({"model": "base"}, Path("/nonexistent"))
    monkeypatch.setattr(proc, "_engine", NoEngine())
    proc._loaded = True
    out = proc.process(TranscriptionInput(audio=np.zeros(16000, dtype=np.float32), language="en"))
    assert out.words == [] and out.language == "en"


class _FakeEngine:
    """Stands in for WhisperEngine: yields two segments through ``on_segment``."""

    multilingual = False

    def __init__(self) -> None:
        self.decoded: list[str] = []

    def decode(self, audio: Any, language: str | None, **kwargs: Any) -> Any:
        segs = [
            SimpleNamespace(
                start=0.0,
                end=1.0,
                text=" hello there",
                avg_logprob=-0.1,
                no_speech_prob=0.0,
                compression_ratio=1.0,
                words=[
                    SimpleNamespace(word=" hello", start=0.1, end=0.5, probability=0.9),
                    SimpleNamespace(word=" there", start=0.6, end=0.9, probability=0.8),
                ],
            ),
            SimpleNamespace(
                start=1.2,
                end=2.0,
                text=" hi",
                avg_logprob=-0.1,
                no_speech_prob=0.0,
                compression_ratio=1.0,
                words=[SimpleNamespace(word=" hi", start=1.3, end=1.8, probability=0.95)],
            ),
        ]
        on_segment = kwargs.get("on_segment")
        for seg in segs:
            self.decoded.append(seg.text)
            if on_segment is not None:
                on_segment(seg)
        return segs, language or "en", 1.0, False


def _fake_transcriber(monkeypatch: pytest.MonkeyPatch) -> tuple[Transcriber, _FakeEngine]:
    engine = _FakeEngine()
    proc = Transcriber({"model": "base"}, Path("/nonexistent"))
    monkeypatch.setattr(proc, "_engine", engine)
    proc._loaded = True
    return proc, engine


def test_partial_words_are_sent_per_segment_with_speakers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc, engine = _fake_transcriber(monkeypatch)
    batches: list[tuple[int, list[Word]]] = []

    def on_words(words: list[Word]) -> None:
        batches.append((len(engine.decoded), words))  # how far decoding was at the call

    regions = [SpeakerRegion(0.0, 1.1, "A"), SpeakerRegion(1.1, 3.0, "B")]
    audio = np.full(3 * 16000, 0.01, dtype=np.float32)
    result = proc.process(
        TranscriptionInput(audio=audio, language="en", regions=regions), on_words=on_words
    )
    assert [n for n, _ in batches] == [1, 2]  # each segment's words as soon as it is decoded
    assert [[(w.text, w.speaker) for w in ws] for _, ws in batches] == [
        [("hello", "A"), ("there", "A")],
        [("hi", "B")],
    ]
    assert [w for _, ws in batches for w in ws] == result.words


def test_partial_words_channel_speaker_and_failing_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    proc, _ = _fake_transcriber(monkeypatch)
    seen: list[Word] = []

    def on_words(words: list[Word]) -> None:
        seen.extend(words)
        raise RuntimeError("consumer gone")  # must not fail the transcription

    audio = np.full(3 * 16000, 0.01, dtype=np.float32)
    data = TranscriptionInput(audio=audio, language="en", channel_speaker="CH1")
    result = proc.process(data, on_words=on_words)
    assert [w.speaker for w in seen] == ["CH1"] * 3
    assert [w.text for w in result.words] == ["hello", "there", "hi"]
    assert proc.process(data).words == result.words  # no hook: same result


# ------------------------------------------------------------------ numbers


def test_spell_numbers_russian_and_english() -> None:
    assert spell_numbers("стоит 60 000 рублей", "ru") == "стоит шестьдесят тысяч рублей"
    assert spell_numbers("25%", "ru") == "двадцать пять процентов"
    assert spell_numbers("ten of 3 clubs", "en") == "ten of three clubs"
    assert spell_numbers("1,000 times", "en") == "one thousand times"
    assert spell_numbers("keep 12", "xx") == "keep 12"  # unknown language: unchanged


def test_spell_numbers_in_words_joins_digit_groups() -> None:
    words = [
        _word("стоит", 0, 0.4),
        _word("60", 0.5, 0.8),
        _word("000", 0.8, 1.2, 0.5),
        _word("рублей.", 1.3, 1.8),
    ]
    out = spell_numbers_in_words(words, "ru")
    assert [w.text for w in out] == ["стоит", "шестьдесят тысяч", "рублей."]
    assert (out[1].start, out[1].end, out[1].probability) == (0.5, 1.2, 0.5)
    assert [w.text for w in spell_numbers_in_words([_word("21st,", 0, 1)], "en")] == [
        "twenty-first,"
    ]
