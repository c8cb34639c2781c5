"""Voices have owners: old files without one belong to the local user, and a job's speakers
are matched only against its owner's voices."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from callannotate.voices.schemas import LEGACY_OWNER, Voice, VoiceSample
from callannotate.voices.service import EMBEDDING_MODEL, VoiceService, voices_of
from callannotate.voices.store import VoiceStore


def _unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(192)
    return [float(x) for x in v / np.linalg.norm(v)]


def _voice(store: VoiceStore, owner: str, name: str, seed: int) -> Voice:
    sample = VoiceSample(
        id=uuid.uuid4().hex,
        source=f"{name}.wav",
        duration=10.0,
        speech_duration=8.0,
        embedding=_unit(seed),
    )
    voice = Voice(
        id=uuid.uuid4().hex,
        name=name,
        owner=owner,
        embedding_model=EMBEDDING_MODEL,
        samples=[sample],
    )
    return store.create(voice)


def test_a_voice_file_without_owner_belongs_to_the_local_user(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    voice = _voice(store, "alice", "Ivan", 1)
    path = tmp_path / f"{voice.id}.json"
    data = json.loads(path.read_text())
    del data["owner"]  # as written before voices had owners
    path.write_text(json.dumps(data))
    loaded = store.get(voice.id)
    assert loaded.owner == LEGACY_OWNER == "local"
    assert loaded.info().owner == "local"


def test_identification_uses_only_the_owners_voices(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    ivan = _voice(store, "alice", "Ivan", 1)
    olga = _voice(store, "bob", "Olga", 2)
    assert [v.name for v in voices_of(store, "alice")] == ["Ivan"]
    assert {v.name for v in voices_of(store, None)} == {"Ivan", "Olga"}

    service = VoiceService(store)
    olga_probe = np.asarray(olga.samples[0].embedding, dtype=np.float32)
    everyone = service.identify({"S0": olga_probe})["S0"]
    assert everyone.voice_id == olga.id and everyone.accepted  # the local CLI: every voice
    alices = service.identify({"S0": olga_probe}, owner="alice")["S0"]
    assert alices.voice_id != olga.id and not alices.accepted  # bob's voice is never named
    ivan_probe = np.asarray(ivan.samples[0].embedding, dtype=np.float32)
    assert service.identify({"S0": ivan_probe}, owner="alice")["S0"].voice_id == ivan.id
