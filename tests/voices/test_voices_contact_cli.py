"""``callannotate voices enroll --contact-id`` checks the id against the local user's contacts
before any model is loaded (as the API does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callannotate import cli


def test_enroll_refuses_an_unknown_contact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "ivan.wav"
    sample.write_bytes(b"RIFF not decoded: the contact is checked first")
    code = cli.main(
        [
            "voices",
            "--data-dir",
            str(tmp_path / "data"),
            "enroll",
            "Ivan",
            str(sample),
            "--contact-id",
            "f" * 32,
        ]
    )
    assert code == 2
    assert "is not one of your contacts" in capsys.readouterr().err
    assert not (tmp_path / "data" / "voices").exists() or not any(
        (tmp_path / "data" / "voices").iterdir()
    )
