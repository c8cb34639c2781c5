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


@dataclass
class EncryptReport:
    encrypted: list[Path] = field(default_factory=list)
    already_encrypted: int = 0
    changed_meanwhile: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def at_rest_files(settings: Settings) -> Iterator[Path]:
    """The stored files encryption at rest covers (docs/security.md, "What is encrypted"):
    recordings and results of every job, voiceprints, finished stream captures.

    Not: ``job.json`` (plaintext by design), uploads still arriving (``staging/*.part``), a
    stream being recorded (``.pcm``), the database, the key folder.
    """
    from callannotate.jobs.filequeue import FOLDERS, JOB_FILE, STAGING

    queue = settings.queue_dir
    for folder in FOLDERS:
        for job_dir in sorted(p for p in (queue / folder).glob("*") if p.is_dir()):
            # the recording (audio.<ext>) and result.json; not job.json, .lock, temporaries
            for path in sorted(job_dir.iterdir()):
                if path.name == JOB_FILE or path.name.startswith("."):
                    continue
                if path.is_file() and not path.is_symlink():
                    yield path
    for path in sorted((queue / STAGING).glob("stream-*.wav")):
        if path.is_file() and not path.is_symlink():
            yield path
    for path in sorted(settings.voices_dir.glob("*.json")):
        if path.is_file() and not path.is_symlink():
            yield path


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encrypt_existing_file(vault: Vault, path: Path) -> bool | None:
    """Encrypt the plaintext file ``path`` in place, crash-safe; ``False`` if it already was
    encrypted, ``None`` if it changed while being encrypted (left as it is, try again).

    The ciphertext is streamed into a temporary file next to it (one chunk in memory),
    fsync'd, then renamed over the original and the folder fsync'd: after a crash the file
    is either the old plaintext or the complete encrypted file, never a mix; a leftover
    temporary file is removed by the next run.
    """
    if Vault.is_encrypted(path):
        return False
    before = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".encrypting", dir=path.parent)
    try:
        os.fchmod(fd, before.st_mode & 0o777)
        with open(path, "rb") as src, vault.wrap_writer(os.fdopen(fd, "wb")) as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        with open(tmp, "rb") as done:
            os.fsync(done.fileno())
        if _signature(path.stat()) != _signature(before):
            Path(tmp).unlink(missing_ok=True)
            return None  # written meanwhile: keep the newer content
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def encrypt_existing(settings: Settings) -> EncryptReport:
    """Encrypt every plaintext file left from before encryption at rest was on (idempotent:
    encrypted files are skipped). Needs ``encryption.enabled``."""
    vault = vault_for(settings)
    if not vault.enabled:
        raise MasterKeyError("encryption.enabled is false: turn it on before encrypting files")
    vault.ring  # noqa: B018 - a missing or unreadable key stops here, before any file
    report = EncryptReport()
    for leftover in settings.data_dir.rglob(".*.encrypting"):
        leftover.unlink(missing_ok=True)  # an interrupted earlier run
    for path in at_rest_files(settings):
        try:
            outcome = encrypt_existing_file(vault, path)
        except FileNotFoundError:
            continue  # deleted or moved meanwhile (a job changing state)
        except (OSError, DecryptionError, MasterKeyError) as exc:
            report.failed.append((path, str(exc)))
            continue
        if outcome is None:
            report.changed_meanwhile.append(path)
        elif outcome:
            report.encrypted.append(path)
        else:
            report.already_encrypted += 1
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
