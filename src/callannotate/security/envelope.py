"""Envelope-encrypted file format: chunked AES-256-GCM under a per-file data key.

Layout of an encrypted file (all integers big-endian)::

    header, 128 bytes (fixed size, so a key rotation rewrites it in place)
      0   8  magic  b"\\x89CAE\\r\\n\\x1a\\n"
      8   1  format version (1)
      9   1  algorithm (1 = AES-256-GCM chunks, data key wrapped with AES-256-GCM)
     10   4  chunk size C (plaintext bytes per chunk)
     14   7  nonce prefix (random per file)
     21   1  length of the master key id
     22  32  master key id (UTF-8, zero padded)
     54  60  wrapped data key: nonce (12) + AES-GCM(master key, data key) (32 + 16 tag)
    114  14  zero
    body: chunks 0..n-1, each AES-256-GCM(data key) of C plaintext bytes (the last may be
          shorter; an empty file has one empty chunk), ciphertext + 16-byte tag

The nonce of chunk ``i`` is ``prefix (7) || i (4) || final (1)``; ``final`` is 1 only on the last
chunk, so dropping trailing chunks, reordering or swapping chunks fails authentication. Every
chunk's associated data is header bytes 0..21 (magic .. nonce prefix), so the chunk size and
prefix cannot be altered either. The data key is wrapped with associated data binding the same
header bytes, the key id and a caller context, so a header cannot be moved onto another file.

Chunk ``i`` starts at ``128 + i * (C + 16)``: a reader decrypts only the chunks a byte range
touches (HTTP Range reads, seeking in the report player).
"""

from __future__ import annotations

import io
import os
import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from callannotate.errors import CallAnnotateError
from callannotate.security.masterkeys import MAX_KID_BYTES, MasterKeyRing

MAGIC = b"\x89CAE\r\n\x1a\n"
VERSION = 1
ALGORITHM = 1
HEADER_SIZE = 128
FIXED_SIZE = 21
TAG_SIZE = 16
PREFIX_SIZE = 7
DATA_KEY_SIZE = 32
WRAPPED_SIZE = 12 + DATA_KEY_SIZE + TAG_SIZE
DEFAULT_CHUNK_SIZE = 64 * 1024
_WRAP_LABEL = b"callannotate-data-key\x00"

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


class DecryptionError(CallAnnotateError):
    """Encrypted data failed authentication: tampered, truncated, reordered or wrong key."""

    status_code = 500
    code = "stored_data_corrupt"


def is_encrypted_prefix(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def is_encrypted_file(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as fh:
        return is_encrypted_prefix(fh.read(len(MAGIC)))


@dataclass(frozen=True)
class Header:
    chunk_size: int
    prefix: bytes
    kid: str
    wrapped: bytes

    def fixed(self) -> bytes:
        return MAGIC + struct.pack(">BBI", VERSION, ALGORITHM, self.chunk_size) + self.prefix

    def pack(self) -> bytes:
        kid = self.kid.encode("utf-8")
        out = self.fixed() + bytes([len(kid)]) + kid.ljust(MAX_KID_BYTES, b"\0") + self.wrapped
        return out.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def parse(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE or not is_encrypted_prefix(data):
            raise DecryptionError("not an encrypted file (bad or short header)")
        version, algorithm, chunk_size = struct.unpack(">BBI", data[8:14])
        if version != VERSION or algorithm != ALGORITHM:
            raise DecryptionError(f"unsupported encrypted file version {version}/{algorithm}")
        kid_len = data[21]
        if chunk_size == 0 or kid_len == 0 or kid_len > MAX_KID_BYTES:
            raise DecryptionError("corrupt encrypted file header")
        try:
            kid = data[22 : 22 + kid_len].decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("corrupt encrypted file header") from None
        return cls(chunk_size, data[14:21], kid, data[54 : 54 + WRAPPED_SIZE])


def _wrap_aad(fixed: bytes, kid: str, context: bytes) -> bytes:
    return _WRAP_LABEL + fixed + kid.encode("utf-8") + b"\0" + context


def _wrap(ring: MasterKeyRing, fixed: bytes, data_key: bytes, context: bytes) -> tuple[str, bytes]:
    master = ring.current
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(fixed, master.kid, context))
    return master.kid, nonce + sealed


def unwrap_data_key(ring: MasterKeyRing, header: Header, context: bytes = b"") -> bytes:
    master = ring.get(header.kid)
    nonce, sealed = header.wrapped[:12], header.wrapped[12:]
    try:
        return AESGCM(master.key).decrypt(
            nonce, sealed, _wrap_aad(header.fixed(), header.kid, context)
        )
    except InvalidTag:
        raise DecryptionError(
            "encrypted file header failed authentication (tampered, or a different context)"
        ) from None


def new_header(ring: MasterKeyRing, chunk_size: int, context: bytes = b"") -> tuple[Header, bytes]:
    """A fresh header and its (unwrapped) data key."""
    data_key = AESGCM.generate_key(bit_length=256)
    prefix = secrets.token_bytes(PREFIX_SIZE)
    fixed = Header(chunk_size, prefix, "", b"").fixed()
    kid, wrapped = _wrap(ring, fixed, data_key, context)
    return Header(chunk_size, prefix, kid, wrapped), data_key


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts into ``raw`` chunk by chunk (constant memory).

    ``close()`` writes the final chunk; without it the file is incomplete and will not
    authenticate. ``raw`` is closed too when ``close_raw`` is true.
    """

    def __init__(
        self,
        raw: BinaryIO,
        ring: MasterKeyRing,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        context: bytes = b"",
        close_raw: bool = True,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._close_raw = close_raw
        header, data_key = new_header(ring, chunk_size, context)
        self._aead = AESGCM(data_key)
        self._prefix = header.prefix
        self._aad = header.fixed()
        self._chunk = chunk_size
        self._index = 0
        self._buf = bytearray(chunk_size)  # the chunk being filled (plaintext)
        self._fill = 0
        self._out = bytearray(chunk_size + TAG_SIZE)  # one sealed chunk
        self._written = 0
        raw.write(header.pack())

    def writable(self) -> bool:
        return True

    @property
    def plaintext_bytes(self) -> int:
        return self._written

    def _emit(self, data: memoryview, final: bool) -> None:
        nonce = _nonce(self._prefix, self._index, final)
        out = memoryview(self._out)[: len(data) + TAG_SIZE]
        self._aead.encrypt_into(nonce, data, self._aad, out)
        self._raw.write(out)
        self._index += 1

    def write(self, b: ReadableBuffer) -> int:
        if self.closed:
            raise ValueError("write to a closed encrypting writer")
        data = memoryview(b).cast("B")
        n = len(data)
        self._written += n
        chunk = self._chunk
        buf = memoryview(self._buf)
        pos = 0
        while pos < n:
            if self._fill == chunk:
                # More data follows, so the full chunk held back is not the final one.
                self._emit(buf, final=False)
                self._fill = 0
            if self._fill == 0 and n - pos > chunk:
                # Whole chunks straight from the caller's buffer, no copy.
                self._emit(data[pos : pos + chunk], final=False)
                pos += chunk
                continue
            take = min(chunk - self._fill, n - pos)
            buf[self._fill : self._fill + take] = data[pos : pos + take]
            self._fill += take
            pos += take
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            # The chunk that ends the file carries the final flag (an empty file has one).
            self._emit(memoryview(self._buf)[: self._fill], final=True)
            self._fill = 0
            self._raw.flush()
        finally:
            super().close()
            if self._close_raw:
                self._raw.close()


class DecryptingReader(io.RawIOBase):
    """A seekable read-only view of the plaintext; decrypts only the chunks read.

    Opening checks the header and the final chunk, so a truncated file is refused up front.
    """

    def __init__(
        self, raw: BinaryIO, ring: MasterKeyRing, *, context: bytes = b"", close_raw: bool = True
    ) -> None:
        super().__init__()
        self._raw = raw
        self._close_raw = close_raw
        try:
            header = Header.parse(_read_exact(raw, 0, HEADER_SIZE))
            self._aead = AESGCM(unwrap_data_key(ring, header, context))
            self._prefix = header.prefix
            self._aad = header.fixed()
            self._chunk = header.chunk_size
            body = raw.seek(0, io.SEEK_END) - HEADER_SIZE
            stride = self._chunk + TAG_SIZE
            self._count = max(1, -(-body // stride))
            last = body - (self._count - 1) * stride
            if body < TAG_SIZE or last < TAG_SIZE:
                raise DecryptionError("encrypted file is truncated")
            self._size = body - self._count * TAG_SIZE
            self._pos = 0
            self._cached: tuple[int, bytes] | None = None
            self._load(self._count - 1)
        except BaseException:
            if close_raw:
                raw.close()
            raise

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""
        return self._size

    @property
    def chunk_size(self) -> int:
        return self._chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _sealed(self, index: int) -> tuple[bytes, bytes, int]:
        """``(nonce, sealed chunk, plaintext length)`` of chunk ``index``."""
        stride = self._chunk + TAG_SIZE
        final = index == self._count - 1
        length = self._size + self._count * TAG_SIZE - index * stride if final else stride
        sealed = _read_exact(self._raw, HEADER_SIZE + index * stride, length)
        return _nonce(self._prefix, index, final), sealed, length - TAG_SIZE

    @staticmethod
    def _tampered(index: int) -> DecryptionError:
        return DecryptionError(
            f"encrypted chunk {index} failed authentication (tampered, truncated or reordered)"
        )

    def _load(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        nonce, sealed, _ = self._sealed(index)
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            raise self._tampered(index) from None
        self._cached = (index, plain)
        return plain

    def readinto(self, b: WriteableBuffer) -> int:
        out = memoryview(b).cast("B")
        if self._pos >= self._size or not len(out):
            return 0
        index, offset = divmod(self._pos, self._chunk)
        cached = self._cached is not None and self._cached[0] == index
        if offset == 0 and not cached and len(out) >= min(self._chunk, self._size - self._pos):
            # A whole chunk wanted: decrypt straight into the caller's buffer.
            nonce, sealed, n = self._sealed(index)
            try:
                self._aead.decrypt_into(nonce, sealed, self._aad, out[:n])
            except InvalidTag:
                raise self._tampered(index) from None
            self._pos += n
            return n
        plain = self._load(index)
        n = min(len(out), len(plain) - offset)
        out[:n] = plain[offset : offset + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = []
        while self._pos < self._size:
            index, offset = divmod(self._pos, self._chunk)
            plain = self._load(index)
            parts.append(plain[offset:] if offset else plain)
            self._pos += len(plain) - offset
        return b"".join(parts)

    def read_range(self, start: int, length: int) -> bytes:
        """``length`` plaintext bytes from ``start`` (fewer at the end of the file)."""
        self.seek(start)
        parts = []
        remaining = length
        while remaining > 0:
            piece = self.read(remaining)
            if not piece:
                break
            parts.append(piece)
            remaining -= len(piece)
        return b"".join(parts)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._cached = None
        if self._close_raw:
            self._raw.close()


def _read_exact(raw: BinaryIO, offset: int, length: int) -> bytes:
    raw.seek(offset)
    data = raw.read(length)
    if len(data) != length:
        raise DecryptionError("encrypted file is truncated")
    return data


def encrypt_bytes(
    ring: MasterKeyRing,
    plaintext: bytes,
    *,
    context: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, ring, chunk_size=chunk_size, context=context, close_raw=False)
    writer.write(plaintext)
    writer.close()
    return out.getvalue()


def decrypt_bytes(ring: MasterKeyRing, blob: bytes, *, context: bytes = b"") -> bytes:
    with DecryptingReader(io.BytesIO(blob), ring, context=context) as reader:
        return reader.readall()


def rewrap_header(ring: MasterKeyRing, data: bytes, context: bytes = b"") -> bytes | None:
    """A new header for ``data`` (an encrypted header) wrapped under the current master key.

    ``None`` when it is already wrapped under the current key.
    """
    header = Header.parse(data)
    if header.kid == ring.current.kid:
        return None
    data_key = unwrap_data_key(ring, header, context)
    kid, wrapped = _wrap(ring, header.fixed(), data_key, context)
    return Header(header.chunk_size, header.prefix, kid, wrapped).pack()
