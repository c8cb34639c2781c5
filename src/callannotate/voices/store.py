"""The voiceprint store: one JSON file per voice under ``settings.voices_dir``.

Each voice (name, contact id, every sample's embedding and quality) lives in
``<root>/<voice id>.json``, written atomically (temporary file, fsync, rename), so readers
see the old or the new version, never a mix, and one file holds the whole voice, so there
is nothing to keep consistent between files. Read-modify-write updates hold an exclusive
``flock`` on ``<root>/.lock`` so concurrent API and worker processes don't lose updates.
No audio is stored, only embeddings. Given a :class:`~callannotate.security.atrest.Vault`
the files are encrypted at rest (voiceprints are biometric data); plaintext files written by
older versions stay readable.

A user's voices have distinct names (compared without case): a second voice under a name
the owner already uses is a :class:`~callannotate.errors.Conflict`, checked under the lock,
because two voices of one name both match the person and a report could not tell them
apart.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from callannotate.errors import Conflict, NotFound
from callannotate.jobs.fsutil import atomic_write, blocking_lock, fsync_dir, private_dir
from callannotate.voices.schemas import Voice, utcnow

if TYPE_CHECKING:
    from callannotate.security.atrest import Vault

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")
LOCK_FILE = ".lock"


def new_id() -> str:
    return uuid.uuid4().hex


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


class VoiceStore:
    """CRUD over the voice files in ``root`` (created on first write)."""

    def __init__(self, root: Path, vault: Vault | None = None) -> None:
        self.root = root
        self.vault = vault

    def _path(self, voice_id: str) -> Path:
        if not valid_id(voice_id):
            raise NotFound(f"voice {voice_id} not found")
        return self.root / f"{voice_id}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.root)  # 0700: voiceprints are private
        with blocking_lock(self.root / LOCK_FILE):
            yield

    def _write(self, voice: Voice) -> None:
        data = voice.model_dump_json().encode("utf-8")
        if self.vault is not None and self.vault.enabled:
            from callannotate.security.envelope import encrypt_bytes

            data = encrypt_bytes(self.vault.ring, data, chunk_size=self.vault.chunk_size)
        atomic_write(self._path(voice.id), data)

    def _read(self, path: Path) -> Voice:
        data = path.read_bytes()
        if self.vault is not None:
            from callannotate.security.envelope import decrypt_bytes, is_encrypted_prefix

            if is_encrypted_prefix(data):
                data = decrypt_bytes(self.vault.ring, data)
        return Voice.model_validate_json(data)

    def get(self, voice_id: str) -> Voice:
        path = self._path(voice_id)
        try:
            return self._read(path)
        except FileNotFoundError:
            raise NotFound(f"voice {voice_id} not found") from None

    def list(self) -> list[Voice]:
        """All voices, by name. Unreadable files are logged and skipped."""
        voices: list[Voice] = []
        if not self.root.is_dir():
            return voices
        for path in sorted(self.root.glob("*.json")):
            if not valid_id(path.stem):
                continue
            try:
                voices.append(self._read(path))
            except FileNotFoundError:
                continue  # deleted meanwhile
            except (ValidationError, ValueError) as exc:
                logger.warning("skipping unreadable voice file %s: %s", path.name, exc)
        voices.sort(key=lambda v: (v.name.casefold(), v.created_at))
        return voices

    def named(self, owner: str, name: str, *, other_than: str | None = None) -> Voice | None:
        """``owner``'s voice called ``name`` (case and surrounding blanks ignored), if any
        besides ``other_than``."""
        key = name.strip().casefold()
        return next(
            (
                v
                for v in self.list()
                if v.owner == owner and v.name.casefold() == key and v.id != other_than
            ),
            None,
        )

    def check_name_free(self, owner: str, name: str, *, other_than: str | None = None) -> None:
        """Raise :class:`Conflict` when ``owner`` already has a voice called ``name``."""
        taken = self.named(owner, name, other_than=other_than)
        if taken is not None:
            raise Conflict(
                f"a voice named {taken.name!r} already exists ({taken.id}): add samples to "
                "it, or choose another name"
            )

    def create(self, voice: Voice) -> Voice:
        with self._locked():
            self.check_name_free(voice.owner, voice.name)
            self._write(voice)
        return voice

    def update(self, voice_id: str, change: Callable[[Voice], Voice]) -> Voice:
        """Apply ``change`` to the stored voice under the lock and save the result."""
        with self._locked():
            before = self.get(voice_id)
            voice = change(before)
            if voice.name.casefold() != before.name.casefold() or voice.owner != before.owner:
                self.check_name_free(voice.owner, voice.name, other_than=voice.id)
            voice = voice.model_copy(update={"updated_at": utcnow()})
            self._write(voice)
        return voice

    def delete(self, voice_id: str) -> None:
        path = self._path(voice_id)
        with self._locked():
            try:
                path.unlink()
            except FileNotFoundError:
                raise NotFound(f"voice {voice_id} not found") from None
            fsync_dir(self.root)

    def delete_sample(self, voice_id: str, sample_id: str) -> Voice:
        def drop(voice: Voice) -> Voice:
            kept = [s for s in voice.samples if s.id != sample_id]
            if len(kept) == len(voice.samples):
                raise NotFound(f"sample {sample_id} of voice {voice_id} not found")
            return voice.model_copy(update={"samples": kept})

        return self.update(voice_id, drop)
