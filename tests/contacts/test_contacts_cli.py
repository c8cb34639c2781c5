"""``callannotate contacts ...`` against a real Radicale."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from carddav_servers import LOCAL_SERVERS, Radicale

from callannotate.cli import main
from callannotate.contacts.davclient import CardDAVClient

VCF = """BEGIN:VCARD
VERSION:3.0
UID:imp-1
FN:Мария Жукова
N:Жукова;Мария;;;
TEL;TYPE=work:+7 495 123-45-67
X-IMPORTED:yes
END:VCARD
BEGIN:VCARD
VERSION:3.0
FN:No Uid
END:VCARD
BEGIN:VCARD
VERSION:4.0
UID:imp-2
FN:John Smith
EMAIL;TYPE=work:john@example.com
END:VCARD
BEGIN:VCARD
VERSION:9.9
UID:imp-3
FN:Far Future
END:VCARD
"""


def test_cli_connect_import_list_export(
    tmp_path: Path,
    radicale: Radicale,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_CONTACTS__ALLOWED_HOSTS", json.dumps(LOCAL_SERVERS))
    monkeypatch.setattr("sys.stdin", io.StringIO(radicale.password + "\n"))
    args = ["connect", radicale.url, "--username", radicale.username, "--password-stdin"]
    assert main(["contacts", *args]) == 0
    assert "1 address book(s)" in capsys.readouterr().out

    vcf = tmp_path / "people.vcf"
    vcf.write_text(VCF, encoding="utf-8")
    assert main(["contacts", "import", str(vcf)]) == 0
    captured = capsys.readouterr()
    # a card without UID (what phones export) gets one; a malformed card is skipped
    assert "imported 3 contact(s), skipped 1" in captured.out
    assert "skipped card 4: unsupported VERSION 9.9" in captured.err
    assert "no UID" not in captured.err

    assert main(["contacts", "list", "--phone", "84951234567"]) == 0
    out = capsys.readouterr().out
    assert "Мария Жукова" in out and "1 of 1" in out

    assert main(["contacts", "sync"]) == 0
    assert '"ok": true' in capsys.readouterr().out

    target = tmp_path / "out.vcf"
    assert main(["contacts", "export", str(target)]) == 0
    exported = target.read_text(encoding="utf-8")
    assert exported.count("BEGIN:VCARD") == 3 and "X-IMPORTED:yes" in exported
    assert "FN:No Uid" in exported

    with CardDAVClient(radicale.url, radicale.username, radicale.password) as client:
        book = client.discover()[0]
        assert len(client.list_etags(book.url)) == 3  # imported contacts reached the server


def test_cli_import_of_a_file_without_cards_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was "imported 0 contact(s), skipped 0" and exit code 0 for any file at all."""
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    photo = tmp_path / "photo.vcf"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not a vCard")
    assert main(["contacts", "import", str(photo)]) == 2
    assert "no vCard (BEGIN:VCARD ... END:VCARD) in" in capsys.readouterr().err


def test_cli_connect_without_a_terminal_or_password_is_an_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """No terminal (a new session has none), no --password-stdin, no environment variable:
    one line and exit code 2 (was an EOFError traceback from getpass)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("CALLANNOTATE_CARDDAV_PASSWORD", None)
    done = subprocess.run(
        [sys.executable, "-m", "callannotate.cli", "contacts", "connect",
         "http://127.0.0.1:9/", "--username", "u"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "callannotate: error: no password was typed" in done.stderr


@pytest.mark.parametrize("limit", ["0", "-1", str(10**20)])
def test_cli_list_refuses_a_limit_out_of_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    """``--limit 0`` listed nothing, ``-1`` everything (SQLite's LIMIT -1), ``10**20`` was an
    OverflowError traceback."""
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exit_info:
        main(["contacts", "list", "--limit", limit])
    assert exit_info.value.code == 2
    assert "argument --limit: must be 1 to 1000000" in capsys.readouterr().err


def test_cli_list_shows_control_characters_from_the_server_as_escapes(
    tmp_path: Path,
    radicale: Radicale,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A contact's name comes from a CardDAV server: an ESC sequence or a CR in it must not
    clear, recolour or rewrite the operator's terminal, nor a bidi override reorder it."""
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_CONTACTS__ALLOWED_HOSTS", json.dumps(LOCAL_SERVERS))
    monkeypatch.setattr("sys.stdin", io.StringIO(radicale.password + "\n"))
    args = ["connect", radicale.url, "--username", radicale.username, "--password-stdin"]
    assert main(["contacts", *args]) == 0
    vcf = tmp_path / "evil.vcf"
    vcf.write_text(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:evil-1\r\n"
        "FN:Ann\x1b[2J\x1b[31mRoot\x07\r\nORG:Acme\u202egnp.exe\r\n"
        "TEL:+7 495 123-45-67\r\nEND:VCARD\r\n",
        encoding="utf-8",
    )
    assert main(["contacts", "import", str(vcf)]) == 0
    capsys.readouterr()
    assert main(["contacts", "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "Ann\\x1b[2J\\x1b[31mRoot\\x07  [Acme\\u202egnp.exe]" in out
