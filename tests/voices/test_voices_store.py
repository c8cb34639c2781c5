"""The voiceprint store: CRUD, atomic writes, locking, robustness to bad files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from callannotate.errors import Conflict, NotFound
from callannotate.voices.schemas import Voice, VoiceSample
from callannotate.voices.store import VoiceStore, new_id


def sample(value: float = 0.1) -> VoiceSample:
    return VoiceSample(
        id=new_id(),
        source="a.wav",
        duration=2.0,
        speech_duration=1.5,
        snr_db=20.0,
        embedding=[value] * 192,
    )


def voice(name: str = "Ivan", samples: int = 1) -> Voice:
    return Voice(
        id=new_id(),
        name=name,
        embedding_model="campplus_cn_en_common",
        samples=[sample() for _ in range(samples)],
    )


def test_crud(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path / "voices")
    assert store.list() == []
    a = store.create(voice("Ivan"))
    b = store.create(voice("anna", samples=2))
    assert [v.name for v in store.list()] == ["anna", "Ivan"]  # by name, case-insensitive
    assert store.get(a.id) == a
    extra = sample(0.2)
    updated = store.update(a.id, lambda v: v.model_copy(update={"samples": [*v.samples, extra]}))
    assert len(updated.samples) == 2 and updated.updated_at >= a.updated_at
    assert store.get(a.id).samples[-1] == extra
    after = store.delete_sample(b.id, b.samples[0].id)
    assert [s.id for s in after.samples] == [b.samples[1].id]
    with pytest.raises(NotFound):
        store.delete_sample(b.id, b.samples[0].id)
    store.delete(a.id)
    with pytest.raises(NotFound):
        store.get(a.id)
    with pytest.raises(NotFound):
        store.delete(a.id)
    assert [v.id for v in store.list()] == [b.id]


def test_ids_are_checked(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    for bad in ("../etc/passwd", "x", "A" * 32, ""):
        with pytest.raises(NotFound):
            store.get(bad)


def test_one_file_per_voice_and_no_temp_files(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    v = store.create(voice())
    store.update(v.id, lambda x: x.model_copy(update={"name": "Ivan P."}))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".lock", f"{v.id}.json"])


def test_failed_write_keeps_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = VoiceStore(tmp_path)
    v = store.create(voice())
    before = (tmp_path / f"{v.id}.json").read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.update(v.id, lambda x: x.model_copy(update={"name": "changed"}))
    monkeypatch.undo()
    assert (tmp_path / f"{v.id}.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert store.get(v.id).name == "Ivan"


def test_corrupt_files_are_skipped(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    v = store.create(voice())
    (tmp_path / f"{new_id()}.json").write_text("{not json")
    (tmp_path / "notes.json").write_text("{}")  # not a voice id: ignored
    assert [x.id for x in store.list()] == [v.id]


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    v = store.create(voice(samples=0))

    def add() -> None:
        for _ in range(5):
            s = sample()
            store.update(v.id, lambda x, s=s: x.model_copy(update={"samples": [*x.samples, s]}))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get(v.id).samples) == 20


def test_an_owner_has_one_voice_per_name(tmp_path: Path) -> None:
    """Two voices called "Ivan" both matched the person (score 1.0 each) and a report could
    not tell them apart: a second one under a name the owner uses (any case) is a 409."""
    store = VoiceStore(tmp_path)
    ivan = store.create(voice("Ivan").model_copy(update={"owner": "u1"}))
    with pytest.raises(Conflict) as refused:
        store.create(voice(" ivan ").model_copy(update={"owner": "u1"}))
    assert refused.value.detail == (
        f"a voice named 'Ivan' already exists ({ivan.id}): add samples to it, or choose "
        "another name"
    )
    store.create(voice("Ivan").model_copy(update={"owner": "u2"}))  # another user's Ivan
    anna = store.create(voice("Anna").model_copy(update={"owner": "u1"}))
    with pytest.raises(Conflict):
        store.update(anna.id, lambda v: v.model_copy(update={"name": "IVAN"}))
    assert store.get(anna.id).name == "Anna"
    renamed = store.update(ivan.id, lambda v: v.model_copy(update={"name": "IVAN"}))
    assert renamed.name == "IVAN"  # its own name in another case
    assert sorted((v.owner, v.name) for v in store.list()) == [
        ("u1", "Anna"),
        ("u1", "IVAN"),
        ("u2", "Ivan"),
    ]
