"""Seal small secrets (CardDAV passwords, tokens) for storage: a stable, tiny API.

``seal`` returns a self-describing blob in the encrypted file format of
:mod:`callannotate.security.envelope` (AES-256-GCM under a fresh data key wrapped by the current
master key, whose id is in the header). ``unseal`` reverses it and raises
:class:`SealedDataError` when the blob was altered, truncated, sealed with another ``context``
or under a master key that is no longer available. ``context`` binds a blob to where it belongs
(for example ``b"contact-source:42:password"``) so it cannot be copied onto another record.

Sealing always encrypts, whatever ``encryption.enabled`` says: that switch is for bulk files.
"""

from __future__ import annotations

from callannotate.config import Settings
from callannotate.security.atrest import vault_for
from callannotate.security.envelope import DecryptionError, decrypt_bytes, encrypt_bytes
from callannotate.security.masterkeys import MasterKeyError

__all__ = ["SealedDataError", "is_sealed", "seal", "unseal"]


class SealedDataError(Exception):
    """A sealed blob could not be opened: tampered, wrong context or missing master key."""


def seal(settings: Settings, plaintext: bytes, *, context: bytes = b"") -> bytes:
    """Encrypt ``plaintext``; the result embeds the key id and is safe to store anywhere."""
    return encrypt_bytes(vault_for(settings).ring, bytes(plaintext), context=bytes(context))


def unseal(settings: Settings, blob: bytes, *, context: bytes = b"") -> bytes:
    """The plaintext of a blob made by :func:`seal` with the same ``context``."""
    try:
        return decrypt_bytes(vault_for(settings).ring, bytes(blob), context=bytes(context))
    except DecryptionError as exc:
        raise SealedDataError(f"cannot unseal secret: {exc}") from None
    except MasterKeyError as exc:
        raise SealedDataError(f"cannot unseal secret: {exc}") from None


def is_sealed(blob: bytes) -> bool:
    """True when ``blob`` looks like the output of :func:`seal` (magic header)."""
    from callannotate.security.envelope import is_encrypted_prefix

    return is_encrypted_prefix(bytes(blob[:8]))
