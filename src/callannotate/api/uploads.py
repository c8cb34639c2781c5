"""Streaming multipart upload: the file part goes straight to the queue's staging folder.

The body is parsed as it arrives (``python-multipart``'s push parser), the file part is
written in chunks (never held in memory), the size limit is enforced while streaming (and
early from ``Content-Length``), and on any failure the staged file is removed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from callannotate.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
PART_SUFFIX = ".part"
STALE_PART_S = 3600.0
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
# Bytes of multipart framing and form fields allowed on top of the file in Content-Length.
FORM_OVERHEAD = MAX_FIELDS * 512 + 4 * MAX_FIELD_BYTES
MAX_FILENAME_CHARS = 120

_EXT = re.compile(r"^[a-z0-9]{1,8}$")


class InvalidFilename(Unprocessable):
    """The upload's filename tries to walk out of a folder (``..`` path segments)."""

    code = "invalid_filename"


def check_filename(name: str) -> None:
    """Refuse names with ``..`` path segments (``../../etc/passwd``): clearly not a file
    name a client meant. Plain folder prefixes (``C:\\calls\\a.wav``) are stripped by
    :func:`safe_filename` instead."""
    if any(part == ".." for part in name.replace("\\", "/").split("/")):
        raise InvalidFilename(f"the filename {name[:200]!r} contains '..' path segments")
    if "\x00" in name:
        raise InvalidFilename("the filename contains a NUL character")


def safe_filename(name: str | None) -> str:
    """A display name that cannot escape a folder: no separators, no leading dots.

    ``../../etc/passwd`` becomes ``passwd``; ``C:\\x\\call.wav`` becomes ``call.wav``;
    control and reserved characters become ``_``. Letters of any script are kept.
    """
    base = unicodedata.normalize("NFKC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(
        ch if (ch.isalnum() or ch in "._- ()+") and ch.isprintable() else "_" for ch in base
    )
    cleaned = cleaned.strip(" ").lstrip(".").strip(" ")
    if not cleaned or set(cleaned) <= {"_", "."}:
        return "upload"
    if len(cleaned) > MAX_FILENAME_CHARS:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) <= 8:
            cleaned = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_FILENAME_CHARS]
    return cleaned


def stored_name(filename: str, probed_format: str) -> str:
    """The name the audio is stored under: ``audio.<ext>`` (ASCII, never user-controlled)."""
    ext = Path(filename).suffix.lower().lstrip(".")
    if not _EXT.match(ext):
        ext = probed_format.lower() if _EXT.match(probed_format.lower()) else "bin"
    return f"audio.{ext}"


@dataclass
class StagedUpload:
    """What :func:`receive_upload` read: the staged file and the form fields."""

    path: Path | None = None
    filename: str = "upload"
    content_type: str | None = None
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Delete the staged file (no-op when already moved away or absent)."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class _Receiver:
    """Callbacks for the push parser; writes the file part to ``staging``."""

    def __init__(self, staging: Path, max_bytes: int) -> None:
        self.staging = staging
        self.max_bytes = max_bytes
        self.upload = StagedUpload()
        self._fh: IO[bytes] | None = None
        self._pending = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_data = bytearray()
        self._field_count = 0
        self.finished = False

    # parser callbacks -------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._part_is_file = False
        self._field_data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise BadRequest(
                "every multipart part needs 'Content-Disposition: form-data; name=...'"
            )
        name = options[b"name"].decode("utf-8", "replace")
        self._part_name = name
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise Unprocessable(f"too many form fields (at most {MAX_FIELDS})")
        if b"filename" in options or name == FILE_FIELD:
            if name != FILE_FIELD:
                raise Unprocessable(f"unexpected file field {name!r}; send the audio as 'file'")
            if self.upload.path is not None:
                raise Unprocessable("send exactly one file per upload")
            self._part_is_file = True
            raw = options.get(b"filename", b"").decode("utf-8", "replace")
            check_filename(raw)
            self.upload.filename = safe_filename(raw)
            ctype = self._headers.get(b"content-type")
            self.upload.content_type = ctype.decode("latin-1") if ctype else None
            self.upload.path = self.staging / f"{uuid.uuid4().hex}{PART_SUFFIX}"
            self._fh = open(self.upload.path, "xb")  # noqa: SIM115 - closed in flush/close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the file is larger than the limit of {self.max_bytes} bytes"
                )
            self._pending += data[start:end]
        else:
            self._field_data += data[start:end]
            if len(self._field_data) > MAX_FIELD_BYTES:
                raise Unprocessable(
                    f"form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes"
                )

    def on_part_end(self) -> None:
        if self._part_is_file:
            self.flush()
            self.close_file()
        elif self._part_name is not None:
            if self._part_name in self.upload.fields:
                raise Unprocessable(f"form field {self._part_name!r} given more than once")
            try:
                self.upload.fields[self._part_name] = self._field_data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Unprocessable(f"form field {self._part_name!r} is not UTF-8") from exc

    def on_end(self) -> None:
        self.finished = True

    # file handling ----------------------------------------------------------------
    def flush(self) -> None:
        if self._fh is not None and self._pending:
            self._fh.write(self._pending)
            self._pending.clear()

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.upload.discard()


def check_content_type(request: Request) -> bytes:
    """The multipart boundary, or ``UnsupportedMediaType``."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise UnsupportedMediaType(
            f"send the recording as multipart/form-data (field 'file'), not {shown}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart Content-Type has no boundary")
    return boundary


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse early when the declared body is larger than the limit allows."""
    raw = request.headers.get("content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError as exc:
        raise BadRequest("Content-Length is not a number") from exc
    if length > max_bytes + FORM_OVERHEAD:
        raise PayloadTooLarge(
            f"the request body ({length} bytes) is larger than the limit of {max_bytes} bytes"
        )


async def receive_upload(request: Request, staging: Path, max_bytes: int) -> StagedUpload:
    """Stream the multipart body: the file into ``staging``, the fields into a dict.

    Raises a domain error (and leaves nothing in ``staging``) on any problem. The caller
    owns the returned staged file and must :meth:`StagedUpload.discard` it on failure.
    """
    boundary = check_content_type(request)
    check_content_length(request, max_bytes)
    staging.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(staging, max_bytes)
    callbacks: MultipartCallbacks = {
        "on_part_begin": receiver.on_part_begin,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
        "on_end": receiver.on_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
                receiver.flush()
        parser.finalize()
        if not receiver.finished:
            raise BadRequest("the multipart body is incomplete (no closing boundary)")
    except MultipartParseError as exc:
        receiver.abort()
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    except BaseException:  # includes ClientDisconnect and cancellation
        receiver.abort()
        raise
    return receiver.upload


def clean_stale_parts(staging: Path, max_age_s: float = STALE_PART_S) -> int:
    """Delete uploads left in ``staging`` by a crashed process (untouched for ``max_age_s``).

    An upload in progress rewrites its file all the time, so its mtime stays fresh; other API
    processes sharing the queue folder are not disturbed.
    """
    removed = 0
    cutoff = time.time() - max_age_s
    with contextlib.suppress(FileNotFoundError):
        for path in staging.glob(f"*{PART_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
    if removed:
        logger.info("removed %d stale partial upload(s) from %s", removed, staging)
    return removed
