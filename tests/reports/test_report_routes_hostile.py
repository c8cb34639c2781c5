"""Report routes against hostile input: download names in headers, and the same bytes from the
API as from ``callannotate annotate``."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from reports_sample import completed_job
from test_report_routes import client, queue_of, tone_wav  # noqa: F401  (fixture)

from callannotate import cli
from callannotate.pipeline.types import Annotation
from callannotate.reports import FORMATS
from callannotate.reports.routes import _disposition

# RFC 6266 / 5987: a quoted ASCII fallback of safe characters, then the exact name encoded
DISPOSITION = re.compile(
    r"(attachment|inline); filename=\"[A-Za-z0-9 ._()+-]*\"; "
    r"filename\*=UTF-8''[A-Za-z0-9!#$&+.^_`|~%-]*"
)


@pytest.mark.parametrize(
    "name",
    [
        'a"b.wav',
        "evil\r\nSet-Cookie: x=1.wav",
        "back\\slash\\.wav",
        "dir/../name.wav",
        "semi;colon=1,comma.wav",
        "звонок поддержка «Анна».wav",
        "\u202egpj.exe",
        "nul\x00tab\t.wav",
    ],
)
def test_content_disposition_holds_any_file_name(name: str) -> None:
    """Whatever a stored name holds, the header stays one well-formed header: no CR/LF, no
    quote or backslash inside the quoted fallback, ``filename*`` fully percent-encoded."""
    for kind in ("attachment", "inline"):
        header = _disposition(kind, name)
        assert DISPOSITION.fullmatch(header), header
        assert header.isascii() and "\r" not in header and "\n" not in header
        encoded = header.rsplit("''", 1)[1]
        decoded = unquote(encoded, errors="strict")
        assert decoded == "".join(ch if ch.isprintable() else "_" for ch in name)


async def test_cli_and_api_write_the_same_files(
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``callannotate annotate --format <every format>`` and ``GET /jobs/{id}/export`` of the
    same annotation give byte-identical files (JSON's final newline, the PDF's dates)."""
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "cli-data"))
    call = tone_wav(tmp_path / "call.wav", seconds=1.5)
    out = tmp_path / "out"
    formats = ",".join(FORMATS)
    argv = ["annotate", str(call), "--out", str(out), "--steps", "preprocess", "--format", formats]
    assert cli.main([*argv, "--quiet"]) == 0
    annotation = Annotation.model_validate_json((out / "call.json").read_bytes())
    job_id = completed_job(queue_of(client), annotation, call)
    for fmt in FORMATS:
        r = await client.get(f"/jobs/{job_id}/export", params={"format": fmt})
        assert r.status_code == 200, (fmt, r.text)
        written = out / cli.output_name("call", fmt)
        assert r.content == written.read_bytes(), fmt
