"""Encryption at rest for the data folder: one ``Vault`` per settings, used by every writer.

Writers call :meth:`Vault.open_write` / :meth:`Vault.write_bytes` and get an encrypting stream
when ``encryption.enabled`` is true (the default), a plain file otherwise. Readers call
:meth:`Vault.open_read` / :meth:`Vault.read_bytes`, which recognise encrypted files by their
magic header and pass older plaintext files through unchanged, so data written by earlier
versions (or with encryption off) stays readable.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from callannotate.config import Settings
from callannotate.security.envelope import (
    HEADER_SIZE,
    MAGIC,
    DecryptingReader,
    DecryptionError,
    EncryptingWriter,
    rewrap_header,
)
from callannotate.security.masterkeys import MasterKeyError, MasterKeyRing, key_file_path


@dataclass
class RewrapReport:
    rewrapped: list[Path] = field(default_factory=list)
    already_current: int = 0
    plaintext: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


class Vault:
    """Opens files in the data folder for reading and writing, encrypting when enabled."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.enabled = settings.encryption.enabled
        self.chunk_size = settings.encryption.chunk_size
        self._ring: MasterKeyRing | None = None
        self._lock = threading.Lock()

    @property
    def ring(self) -> MasterKeyRing:
        """The master key ring, loaded (and the key file created) on first use."""
        if self._ring is None:
            with self._lock:
                if self._ring is None:
                    self._ring = MasterKeyRing.from_settings(self._settings)
        return self._ring

    # ------------------------------------------------------------------ writing
    def wrap_writer(self, raw: BinaryIO, *, close_raw: bool = True) -> BinaryIO:
        """A stream writing into ``raw``: encrypting when enabled, ``raw`` itself otherwise."""
        if not self.enabled:
            return raw
        writer = EncryptingWriter(raw, self.ring, chunk_size=self.chunk_size, close_raw=close_raw)
        return writer  # type: ignore[return-value]  # RawIOBase is a binary stream

    def open_write(self, path: str | os.PathLike[str]) -> BinaryIO:
        """Create/truncate ``path``; ``close()`` completes the file."""
        return self.wrap_writer(open(path, "wb"))

    def write_bytes(self, path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` atomically (temporary file + rename)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.fchmod(fd, mode)
            with self.wrap_writer(os.fdopen(fd, "wb")) as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ reading
    def open_read(self, path: str | os.PathLike[str]) -> BinaryIO:
        """A seekable binary stream of the plaintext of ``path`` (encrypted or not)."""
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
        try:
            encrypted = raw.read(len(MAGIC)) == MAGIC
            raw.seek(0)
            if not encrypted:
                return raw
            reader = DecryptingReader(raw, self.ring)
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(reader, buffer_size=reader.chunk_size)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        with self.open_read(path) as fh:
            return fh.read()

    def plaintext_size(self, path: str | os.PathLike[str]) -> int:
        """Size of the plaintext of ``path`` without decrypting the body."""
        raw = open(path, "rb")  # noqa: SIM115 - closed below
        with raw:
            if raw.read(len(MAGIC)) != MAGIC:
                return raw.seek(0, io.SEEK_END)
            raw.seek(0)
            reader = DecryptingReader(raw, self.ring, close_raw=False)
            return reader.size

    @staticmethod
    def is_encrypted(path: str | os.PathLike[str]) -> bool:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC

    # ------------------------------------------------------------------ rotation
    def rewrap_file(self, path: str | os.PathLike[str]) -> bool | None:
        """Re-wrap the data key of ``path`` under the current master key, in place.

        Only the fixed-size header is rewritten; the ciphertext body is not touched.
        Returns True when rewritten, False when already current, None for a plaintext file.
        """
        with open(path, "r+b") as fh:
            head = fh.read(HEADER_SIZE)
            if head[: len(MAGIC)] != MAGIC:
                return None
            new = rewrap_header(self.ring, head)
            if new is None:
                return False
            fh.seek(0)
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def rewrap_tree(self, root: Path) -> RewrapReport:
        """Re-wrap every encrypted file under ``root`` (skipping the key folder)."""
        report = RewrapReport()
        secrets_dir = key_file_path(self._settings).parent.resolve()
        for path in _walk(root, skip=secrets_dir):
            try:
                outcome = self.rewrap_file(path)
            except (OSError, DecryptionError, MasterKeyError) as exc:
                report.failed.append((path, str(exc)))
                continue
            if outcome is None:
                report.plaintext += 1
            elif outcome:
                report.rewrapped.append(path)
            else:
                report.already_current += 1
        return report


def _walk(root: Path, skip: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() != skip]
        for name in filenames:
            path = here / name
            if path.is_file() and not path.is_symlink():
                yield path


_VAULTS: dict[tuple[object, ...], Vault] = {}
_VAULTS_LOCK = threading.Lock()


def _cache_key(settings: Settings) -> tuple[object, ...]:
    enc = settings.encryption
    secret = [s.get_secret_value() for s in [enc.master_key] if s is not None]
    secret += [s.get_secret_value() for s in enc.previous_master_keys]
    digest = hashlib.sha256("\0".join(secret).encode("utf-8")).hexdigest() if secret else ""
    return (str(key_file_path(settings).resolve()), digest, enc.enabled, enc.chunk_size)


def vault_for(settings: Settings) -> Vault:
    """The shared :class:`Vault` for these settings (one key ring per key source)."""
    key = _cache_key(settings)
    with _VAULTS_LOCK:
        vault = _VAULTS.get(key)
        if vault is None:
            vault = _VAULTS[key] = Vault(settings)
        return vault
