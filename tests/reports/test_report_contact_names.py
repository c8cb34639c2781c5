"""Reports and exports name speakers after their contacts (speakers become people)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from callannotate.pipeline.types import Annotation, ContactRef, ExpectedContact
from callannotate.reports import export
from callannotate.reports.timeline import speaker_names


def with_contacts(ann: Annotation) -> Annotation:
    out = ann.model_copy(deep=True)
    first, second = out.speakers
    # the recognised voice ("Анна Петрова") is linked to a contact with a fuller name
    first.contact = ContactRef(
        id="a" * 32, name="Анна Сергеевна Петрова", organization="Acme", phone="+79161234567"
    )
    # the other one is only expected from the caller's number
    second.expected_contact = ExpectedContact(
        id="b" * 32,
        name="Ivan Petrov",
        organization=None,
        phone="+74951234567",
        role="caller",
        match="unverified",
    )
    return out


def test_speaker_names_prefer_contacts(ru_annotation: Annotation) -> None:
    ann = with_contacts(ru_annotation)
    assert speaker_names(ann) == {
        "SPEAKER_00": "Анна Сергеевна Петрова",
        "SPEAKER_01": "Ivan Petrov (by number)",
    }
    expected = ann.speakers[1].expected_contact
    assert expected is not None
    expected.match = "confirmed"
    assert speaker_names(ann)["SPEAKER_01"] == "Ivan Petrov"
    expected.match = "contradicted"  # the voice says it is someone else: keep the label
    assert speaker_names(ann)["SPEAKER_01"] == "SPEAKER_01"


def test_exports_show_contact_names(ru_annotation: Annotation) -> None:
    ann = with_contacts(ru_annotation)
    rows = list(csv.DictReader(io.StringIO(export(ann, "csv").decode("utf-8-sig"))))
    names = {r["speaker"]: r["speaker_name"] for r in rows}
    assert names == {
        "SPEAKER_00": "Анна Сергеевна Петрова",
        "SPEAKER_01": "Ivan Petrov (by number)",
    }
    srt = export(ann, "srt").decode()
    vtt = export(ann, "vtt").decode()
    html = export(ann, "html").decode()
    for text in (srt, vtt, html):
        assert "Анна Сергеевна Петрова" in text and "Ivan Petrov (by number)" in text
    assert "SPEAKER_00:" not in srt and "<v SPEAKER_01>" not in vtt


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) missing")
def test_pdf_shows_contact_names(ru_annotation: Annotation, tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(export(with_contacts(ru_annotation), "pdf"))
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "Анна Сергеевна Петрова" in text
