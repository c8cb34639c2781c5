"""Streaming multipart upload: file parts go straight to the queue's staging folder.

The body is parsed as it arrives (``python-multipart``'s push parser), each file part is
written in chunks (never held in memory), the size limit is enforced while streaming (and
early from ``Content-Length``, but a chunked body has none), a body that stalls for
``api.body_idle_timeout_s`` is refused with 408, and on any failure the staged files are
removed. ``POST /jobs`` takes one file part, ``/voices`` several.

Each staged ``<uuid>.part`` file (mode 0600) is held with an exclusive ``flock`` by the
process writing it until the file is queued or discarded, so :func:`clean_stale_parts` can
remove, at start-up and from time to time, exactly the partial uploads no live process owns
(an API killed mid-upload), whatever their age.

Given a :class:`~callannotate.security.atrest.Vault` with encryption on, each file part is
encrypted as it streams in (chunked AES-256-GCM): the recording is never on disk in the clear,
not even in staging. ``StagedFile.size`` counts the plaintext bytes.

No file-system call runs on the event loop (issue 21): the parser's callbacks only count and
collect the parts' bytes; every :data:`SLICE_BYTES` of them, and at the end of the body, one
worker thread hop creates and locks the ``.part`` files, sets up the encrypting writers, writes
the slice and completes the finished parts (a 96 kB upload is one hop). At most one slice plus
one received chunk is held in memory. Discarding staged files on failure also runs in a
thread (shielded from cancellation).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from callannotate.errors import (
    BadRequest,
    CallAnnotateError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from callannotate.jobs.fsutil import PRIVATE_FILE, private_dir, try_lock, unlock

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

    from callannotate.security.atrest import Vault

FILE_FIELD = "file"
PART_SUFFIX = ".part"
CLEAN_INTERVAL_S = 600.0
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
# Bytes of multipart framing and form fields allowed on top of the file in Content-Length.
FORM_OVERHEAD = MAX_FIELDS * 512 + 4 * MAX_FIELD_BYTES
MAX_FILENAME_CHARS = 120
# Parsed file bytes collected on the event loop before one thread hop writes them.
SLICE_BYTES = 512 * 1024


class RequestTimeout(CallAnnotateError):
    """The client stopped sending the request body."""

    status_code = 408
    code = "request_timeout"


class InvalidFilename(Unprocessable):
    """The upload's filename tries to walk out of a folder (``..`` path segments)."""

    code = "invalid_filename"


def check_filename(name: str) -> None:
    """Refuse names with ``..`` path segments (``../../etc/passwd``): clearly not a file
    name a client meant. Plain folder prefixes (``C:\\calls\\a.wav``) are stripped by
    :func:`safe_filename` instead."""
    if any(part == ".." for part in name.replace("\\", "/").split("/")):
        raise InvalidFilename(f"the filename {name[:64]!r} contains '..' path segments")
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


def open_part(staging: Path) -> tuple[Path, int]:
    """Create a new ``<uuid>.part`` in ``staging`` (0600) and lock it; ``(path, fd)``.

    The lock is taken before anyone could see the file as abandoned: when a cleaner got the
    lock first (between our create and our lock), that name is left to it and a new one is
    made.
    """
    while True:
        path = staging / f"{uuid.uuid4().hex}{PART_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        os.fchmod(fd, PRIVATE_FILE)
        return path, fd


@dataclass
class StagedFile:
    """One received file part: staged at ``path``, locked through ``fd`` until released."""

    path: Path
    fd: int
    filename: str = "upload"
    content_type: str | None = None
    size: int = 0
    sink: BinaryIO | None = None  # encrypting stream over ``fd`` (encryption at rest)

    def write(self, data: bytes | bytearray) -> None:
        if self.sink is not None:
            self.sink.write(data)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def finish(self) -> None:
        """Complete the file (an encrypted one gets its final chunk); the lock stays held."""
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.close()

    def release(self) -> None:
        """Drop the lock (the file was moved into a job, or is being discarded)."""
        if self.fd >= 0:
            unlock(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Delete the staged file (no-op when already moved away) and drop the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError, ValueError):
            self.finish()
        self.release()


@dataclass
class StagedUpload:
    """What :func:`receive_upload` read: the staged files and the form fields."""

    files: list[StagedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def file(self) -> StagedFile | None:
        """The first (for ``/jobs``, the only) file part."""
        return self.files[0] if self.files else None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def release(self) -> None:
        """Drop the locks of files that were moved into the queue (call after submitting)."""
        for staged in self.files:
            staged.release()

    def discard(self) -> None:
        """Delete every staged file still in staging and drop the locks."""
        for staged in self.files:
            staged.discard()


@dataclass
class _Part:
    """A file part as parsed on the loop; staged (created, locked, written) in a thread."""

    filename: str
    content_type: str | None
    size: int = 0
    pending: bytearray = field(default_factory=bytearray)  # parsed, not yet written
    ended: bool = False
    staged: StagedFile | None = None


class _Receiver:
    """Callbacks for the push parser (no file-system calls: those are in :meth:`stage`)."""

    def __init__(
        self,
        staging: Path,
        max_bytes: int,
        max_files: int,
        vault: Vault | Callable[[], Vault] | None = None,
    ) -> None:
        self.staging = staging
        self._vault = vault
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.upload = StagedUpload()
        self._parts: list[_Part] = []
        self._current: _Part | None = None
        self._size = 0  # file bytes parsed, all parts
        self.pending = 0  # file bytes parsed and not yet written, all parts
        self._prepared = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._field_data = bytearray()
        self._field_count = 0
        self.finished = False

    # parser callbacks (on the event loop) -------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._current = None
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
                raise Unprocessable(
                    f"unexpected file field {name[:64]!r}; send the audio as '{FILE_FIELD}'"
                )
            if len(self._parts) >= self.max_files:
                raise Unprocessable(
                    "send exactly one file per upload"
                    if self.max_files == 1
                    else f"send at most {self.max_files} files"
                )
            raw = options.get(b"filename", b"").decode("utf-8", "replace")
            check_filename(raw)
            ctype = self._headers.get(b"content-type")
            self._current = _Part(
                filename=safe_filename(raw),
                content_type=ctype.decode("latin-1") if ctype else None,
            )
            self._parts.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.size += end - start
            self._size += end - start
            if self._size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the upload is larger than the limit of {self.max_bytes} bytes"
                )
            self._current.pending += memoryview(data)[start:end]
            self.pending += end - start
        else:
            self._field_data += data[start:end]
            if len(self._field_data) > MAX_FIELD_BYTES:
                raise Unprocessable(
                    f"form field {self._part_name!r:.66} is longer than {MAX_FIELD_BYTES} bytes"
                )

    def on_part_end(self) -> None:
        if self._current is not None:
            self._current.ended = True
            self._current = None
        elif self._part_name is not None:
            if self._part_name in self.upload.fields:
                raise Unprocessable(f"form field {self._part_name!r:.66} given more than once")
            try:
                self.upload.fields[self._part_name] = self._field_data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Unprocessable(f"form field {self._part_name!r:.66} is not UTF-8") from exc

    def on_end(self) -> None:
        self.finished = True

    # file handling (in a worker thread; the request task waits) ----------------------
    def has_work(self) -> bool:
        """Bytes to write, or a part not yet created or not yet completed."""
        return any(
            part.staged is None or part.pending or (part.ended and part.staged.sink is not None)
            for part in self._parts
        )

    def stage(self) -> None:
        """Create and lock the new parts' files, write the collected bytes, complete the
        parts that ended. Runs in a worker thread while the request task waits for it, so
        the parser never touches the parts meanwhile."""
        if not self._prepared:
            private_dir(self.staging)
            _clean_now_and_then(self.staging)
            if callable(self._vault):
                self._vault = self._vault()
            self._prepared = True
        vault = self._vault
        assert not callable(vault)
        for part in self._parts:
            staged = part.staged
            if staged is None:
                path, fd = open_part(self.staging)
                staged = part.staged = StagedFile(
                    path=path, fd=fd, filename=part.filename, content_type=part.content_type
                )
                self.upload.files.append(staged)  # discarded from here on any failure
                if vault is not None and vault.enabled:
                    sink = os.fdopen(fd, "wb", closefd=False)  # the fd stays open: the lock
                    staged.sink = vault.wrap_writer(sink)
            if part.pending:
                staged.write(part.pending)
                staged.size += len(part.pending)
                self.pending -= len(part.pending)
                part.pending = bytearray()
            if part.ended:
                staged.finish()

    def discard(self) -> None:
        """Delete what was staged and drop the locks (in a worker thread)."""
        self._parts.clear()
        self.pending = 0
        self.upload.discard()


async def discard_upload(upload: StagedUpload) -> None:
    """:meth:`StagedUpload.discard` in a worker thread, shielded: it runs to the end even
    when the request is being cancelled (client gone, server shutting down)."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(upload.discard)


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


async def _chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; ``RequestTimeout`` when none arrives for ``idle_timeout_s``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no request body bytes received for {idle_timeout_s:g} s; upload again"
            ) from exc
        yield chunk


async def receive_upload(
    request: Request,
    staging: Path,
    max_bytes: int,
    *,
    idle_timeout_s: float = 30.0,
    max_files: int = 1,
    vault: Vault | Callable[[], Vault] | None = None,
) -> StagedUpload:
    """Stream the multipart body: file parts into ``staging``, the fields into a dict.

    ``max_bytes`` bounds all file parts together. Raises a domain error (and leaves nothing
    in ``staging``) on any problem. The caller owns the returned staged files: it must
    :meth:`StagedUpload.release` them once moved into a job, or
    :meth:`StagedUpload.discard` them (from a worker thread, or :func:`discard_upload`).
    With ``vault`` (encryption on) the files are staged encrypted; a callable is called in
    the worker thread on first use (``vault_for`` resolves a path: no file system on the
    loop).
    """
    boundary = check_content_type(request)
    check_content_length(request, max_bytes)
    receiver = _Receiver(staging, max_bytes, max_files, vault)
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
        async for chunk in _chunks(request, idle_timeout_s):
            if chunk:
                parser.write(chunk)
                if receiver.pending >= SLICE_BYTES:
                    await anyio.to_thread.run_sync(receiver.stage)
        parser.finalize()
        if not receiver.finished:
            raise BadRequest("the multipart body is incomplete (no closing boundary)")
        if receiver.has_work():
            await anyio.to_thread.run_sync(receiver.stage)
    except MultipartParseError as exc:
        await _abort(receiver)
        raise BadRequest(f"malformed multipart body: {str(exc)[:200]}") from exc
    except BaseException:  # includes ClientDisconnect and cancellation
        await _abort(receiver)
        raise
    return receiver.upload


async def _abort(receiver: _Receiver) -> None:
    if receiver.upload.files:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(receiver.discard)


def clean_stale_parts(staging: Path) -> int:
    """Delete partial uploads in ``staging`` that no live process is writing.

    The writer holds each ``.part`` file's ``flock`` until the file is queued or discarded;
    the kernel drops it when that process dies (kill -9 included). A file whose lock can be
    taken is abandoned, whatever its age; other API processes sharing the queue folder keep
    their uploads.
    """
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in staging.glob(f"*{PART_SUFFIX}"):
            try:
                fd = try_lock(path)
            except OSError:
                continue
            if fd is None:
                continue  # a live process is writing it
            try:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
            finally:
                unlock(fd)
    if removed:
        logger.info("removed %d abandoned partial upload(s) from staging", removed)
    return removed


_last_clean: dict[Path, float] = {}
_clean_lock = threading.Lock()


def _clean_now_and_then(staging: Path) -> None:
    """Run :func:`clean_stale_parts` at most every :data:`CLEAN_INTERVAL_S` per folder (the
    start-up run covers the rest), so a long-running API does not accumulate leftovers."""
    now = time.monotonic()
    with _clean_lock:
        last = _last_clean.get(staging)
        if last is not None and now - last < CLEAN_INTERVAL_S:
            return
        _last_clean[staging] = now
    clean_stale_parts(staging)
