"""Speakers become people: the merge of voices, contacts and the call's numbers (unit), the
numbers read from uploads and file names, and the lookups degrading without failing a job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callannotate.config import CallSettings, DatabaseSettings, Settings
from callannotate.errors import Unprocessable
from callannotate.jobs.models import AudioMeta, Job
from callannotate.jobs.speaker_contacts import (
    KnownContact,
    PartyLookup,
    attach_contacts,
    call_numbers,
    numbers_from_filename,
    resolve_result,
)
from callannotate.pipeline.types import Annotation, RecordingInfo, Speaker, VoiceMatch

IVAN = KnownContact("a" * 32, "Ivan Petrov", "Acme", ("+79161234567",))
MARIA = KnownContact("b" * 32, "Maria Sidorova", None, ("+74951234567",))
PATTERN = r"^\d{8}-\d{6}_(?P<caller>\+?\d+)_(?P<callee>\+?\d+)"


def voice(name: str | None, contact_id: str | None = None, accepted: bool = True) -> VoiceMatch:
    return VoiceMatch(
        voice_id="v" + (name or "x"),
        name=name,
        contact_id=contact_id,
        score=0.8 if accepted else 0.1,
        threshold=0.5,
        accepted=accepted,
    )


def annotation(*speakers: Speaker) -> Annotation:
    return Annotation(
        recording=RecordingInfo(duration=10.0, sample_rate=8000, channels=2),
        speakers=list(speakers),
    )


def by_label(ann: Annotation) -> dict[str, Speaker]:
    return {s.label: s for s in ann.speakers}


def test_voice_linked_to_contact_gets_the_contact() -> None:
    ann = annotation(
        Speaker(label="SPEAKER_00", voice=voice("Ivan", IVAN.id)),
        Speaker(label="SPEAKER_01", voice=voice("Ivan", IVAN.id, accepted=False)),
    )
    out = by_label(attach_contacts(ann, {IVAN.id: IVAN}, []))
    contact = out["SPEAKER_00"].contact
    assert contact is not None
    assert (contact.id, contact.name, contact.organization, contact.phone) == (
        IVAN.id,
        "Ivan Petrov",
        "Acme",
        "+79161234567",
    )
    assert out["SPEAKER_01"].contact is None  # a rejected match names nobody
    assert out["SPEAKER_00"].expected_contact is None


def test_number_confirmed_by_voice() -> None:
    ann = annotation(
        Speaker(label="SPEAKER_00", voice=voice("Maria")),
        Speaker(label="SPEAKER_01", voice=voice("Ivan", IVAN.id)),
    )
    merged = attach_contacts(
        ann, {IVAN.id: IVAN}, [PartyLookup("caller", "+79161234567", [MARIA, IVAN])]
    )
    out = by_label(merged)
    expected = out["SPEAKER_01"].expected_contact
    assert expected is not None
    assert (expected.id, expected.role, expected.match) == (IVAN.id, "caller", "confirmed")
    assert out["SPEAKER_00"].expected_contact is None
    assert merged.call[0].speaker == "SPEAKER_01"
    assert [c.id for c in merged.call[0].contacts] == [MARIA.id, IVAN.id]


def test_number_confirmed_by_voice_name_without_link() -> None:
    # a voice enrolled as "Петров Иван" but never linked: the name matches the contact's
    ann = annotation(Speaker(label="SPEAKER_00", voice=voice("Петров Иван")))
    merged = attach_contacts(ann, {}, [PartyLookup("callee", "+79161234567", [IVAN])])
    expected = merged.speakers[0].expected_contact
    assert expected is not None and expected.match == "confirmed"


def test_unknown_speaker_left_by_elimination_is_unverified() -> None:
    ann = annotation(
        Speaker(label="SPEAKER_00", voice=voice("Maria", MARIA.id)),
        Speaker(label="SPEAKER_01", voice=voice(None, accepted=False)),
    )
    merged = attach_contacts(
        ann, {MARIA.id: MARIA}, [PartyLookup("caller", "+79161234567", [IVAN])]
    )
    out = by_label(merged)
    expected = out["SPEAKER_01"].expected_contact
    assert expected is not None
    assert (expected.name, expected.match, expected.phone) == (
        "Ivan Petrov",
        "unverified",
        "+79161234567",
    )
    assert out["SPEAKER_00"].expected_contact is None


def test_voice_of_someone_else_contradicts() -> None:
    # callee is Maria's number and her voice confirms it; the caller number says Ivan, but
    # the only other speaker was recognised as Petr
    petr = KnownContact("c" * 32, "Petr Ivanov")
    ann = annotation(
        Speaker(label="SPEAKER_00", voice=voice("Maria", MARIA.id)),
        Speaker(label="SPEAKER_01", voice=voice("Petr", petr.id)),
    )
    merged = attach_contacts(
        ann,
        {MARIA.id: MARIA, petr.id: petr},
        [
            PartyLookup("caller", "+79161234567", [IVAN]),
            PartyLookup("callee", "+74951234567", [MARIA]),
        ],
    )
    out = by_label(merged)
    caller = out["SPEAKER_01"].expected_contact
    callee = out["SPEAKER_00"].expected_contact
    assert caller is not None and (caller.id, caller.match) == (IVAN.id, "contradicted")
    assert callee is not None and (callee.id, callee.match) == (MARIA.id, "confirmed")
    contact = out["SPEAKER_01"].contact
    assert contact is not None and contact.name == "Petr Ivanov"


def test_two_unknown_voices_are_ambiguous() -> None:
    ann = annotation(Speaker(label="SPEAKER_00"), Speaker(label="SPEAKER_01"))
    merged = attach_contacts(ann, {}, [PartyLookup("caller", "+79161234567", [IVAN])])
    assert all(s.expected_contact is None for s in merged.speakers)
    assert merged.call[0].speaker is None and merged.call[0].contacts[0].id == IVAN.id


def test_caller_channel_decides_on_per_channel_recordings() -> None:
    ann = annotation(
        Speaker(label="CH0_SPEAKER_00", channel=0),
        Speaker(label="CH1_SPEAKER_00", channel=1),
    )
    parties = [
        PartyLookup("caller", "+79161234567", [IVAN]),
        PartyLookup("callee", "+74951234567", [MARIA]),
    ]
    out = by_label(attach_contacts(ann, {}, parties, caller_channel=1))
    caller = out["CH1_SPEAKER_00"].expected_contact
    callee = out["CH0_SPEAKER_00"].expected_contact
    assert caller is not None and (caller.id, caller.match) == (IVAN.id, "unverified")
    assert callee is not None and callee.id == MARIA.id


def test_number_without_contact_is_listed_only() -> None:
    ann = annotation(Speaker(label="SPEAKER_00"))
    merged = attach_contacts(ann, {}, [PartyLookup("callee", "+74950000000")])
    assert merged.speakers[0].expected_contact is None
    assert merged.call[0].model_dump() == {
        "role": "callee",
        "number": "+74950000000",
        "contacts": [],
        "speaker": None,
    }


def test_numbers_from_filename() -> None:
    name = "20261203-101500_+79161234567_84951234567.mp3"
    assert numbers_from_filename(name, PATTERN, "RU") == {
        "caller": "+79161234567",
        "callee": "+74951234567",
    }
    assert numbers_from_filename("call.wav", PATTERN, "RU") == {}
    assert numbers_from_filename(name, None, "RU") == {}
    # a group that is no phone number is left out, not an error
    assert numbers_from_filename("20261203-101500_12_84951234567.mp3", PATTERN, "RU") == {
        "callee": "+74951234567"
    }


def test_call_numbers_form_fields_win_and_are_validated(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, call=CallSettings(filename_pattern=PATTERN))
    name = "20261203-101500_+79161234567_84951234567.mp3"
    assert call_numbers({"caller": "8 (903) 111-22-33"}, name, settings) == (
        "+79031112233",
        "+74951234567",
    )
    assert call_numbers({}, "call.wav", settings) == (None, None)
    with pytest.raises(Unprocessable, match="caller is not a phone number"):
        call_numbers({"caller": "not a number"}, "call.wav", settings)


def test_filename_pattern_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="named group"):
        CallSettings(filename_pattern=r"^(\d+)_(\d+)")
    with pytest.raises(ValueError, match="not a regular expression"):
        CallSettings(filename_pattern=r"(?P<caller>")


def _job(**numbers: str) -> Job:
    meta = AudioMeta(
        filename="call.wav",
        stored_as="audio.wav",
        size_bytes=1,
        format="wav",
        codec="pcm_s16le",
        sample_rate=8000,
        channels=1,
        duration=1.0,
    )
    return Job(id="j1", owner="alice", audio=meta, **numbers)


def test_resolve_leaves_other_results_alone(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    fake = json.dumps({"job_id": "j1", "steps": []}).encode()
    assert resolve_result(settings, _job(caller="+79161234567"), fake) == fake
    plain = annotation(Speaker(label="SPEAKER_00")).model_dump_json().encode()
    assert resolve_result(settings, _job(), plain) == plain  # nothing to look up


def test_resolve_survives_a_broken_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the database path is a directory: no contacts can be read, the job still completes
    bad = tmp_path / "not-a-db"
    bad.mkdir()
    settings = Settings(data_dir=tmp_path, database=DatabaseSettings(url=f"sqlite:///{bad}"))
    result = annotation(Speaker(label="SPEAKER_00", voice=voice("Ivan", IVAN.id))).model_dump_json()
    out = Annotation.model_validate_json(
        resolve_result(settings, _job(caller="+79161234567"), result.encode())
    )
    assert out.call[0].number == "+79161234567" and out.call[0].contacts == []
    assert out.speakers[0].contact is None
    assert "contacts lookup failed" in caplog.text
