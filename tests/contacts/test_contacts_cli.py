"""``callannotate contacts ...`` against a real Radicale."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from carddav_servers import Radicale

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
"""


def test_cli_connect_import_list_export(
    tmp_path: Path,
    radicale: Radicale,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("sys.stdin", io.StringIO(radicale.password + "\n"))
    args = ["connect", radicale.url, "--username", radicale.username, "--password-stdin"]
    assert main(["contacts", *args]) == 0
    assert "1 address book(s)" in capsys.readouterr().out

    vcf = tmp_path / "people.vcf"
    vcf.write_text(VCF, encoding="utf-8")
    assert main(["contacts", "import", str(vcf)]) == 0
    captured = capsys.readouterr()
    assert "imported 2 contact(s), skipped 1" in captured.out
    assert "skipped card 2: no UID" in captured.err

    assert main(["contacts", "list", "--phone", "84951234567"]) == 0
    out = capsys.readouterr().out
    assert "Мария Жукова" in out and "1 of 1" in out

    assert main(["contacts", "sync"]) == 0
    assert '"ok": true' in capsys.readouterr().out

    target = tmp_path / "out.vcf"
    assert main(["contacts", "export", str(target)]) == 0
    exported = target.read_text(encoding="utf-8")
    assert exported.count("BEGIN:VCARD") == 2 and "X-IMPORTED:yes" in exported

    with CardDAVClient(radicale.url, radicale.username, radicale.password) as client:
        book = client.discover()[0]
        assert len(client.list_etags(book.url)) == 2  # imported contacts reached the server
