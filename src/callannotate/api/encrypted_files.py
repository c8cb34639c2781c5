"""A ``FileResponse`` that serves the plaintext of a file encrypted at rest.

Starlette's ``FileResponse`` does everything a player needs (``Range``, multiple ranges,
``If-Range``, ``HEAD``, ETag/Last-Modified); this subclass only changes where the bytes come
from: a seekable decrypting reader (:meth:`callannotate.security.atrest.Vault.open_read`), which
decrypts just the 64 KiB chunks a range touches. ``Content-Length`` is the plaintext size.
Plaintext files (written before encryption at rest) are read through the same path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.background import BackgroundTask
from starlette.responses import FileResponse
from starlette.types import Send

from callannotate.security.atrest import Vault


def plaintext_stat(vault: Vault, path: Path) -> os.stat_result:
    """``os.stat(path)`` with ``st_size`` replaced by the size of the plaintext."""
    st = os.stat(path)
    fields = list(st)
    fields[6] = vault.plaintext_size(path)
    extra = {"st_atime": st.st_atime, "st_mtime": st.st_mtime, "st_ctime": st.st_ctime}
    return os.stat_result(fields, extra)


class DecryptedFileResponse(FileResponse):
    """Serve ``path`` decrypted; give it :func:`plaintext_stat` as ``stat_result``."""

    def __init__(
        self,
        path: Path,
        vault: Vault,
        *,
        stat_result: os.stat_result,
        media_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(
            path,
            media_type=media_type,
            headers=headers,
            background=background,
            stat_result=stat_result,
        )
        self.vault = vault

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        stream = await anyio.to_thread.run_sync(self.vault.open_read, self.path)
        file = anyio.wrap_file(stream)
        try:
            yield file
        finally:
            with anyio.CancelScope(shield=True):
                await file.aclose()

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        # Never hand the server the path (``pathsend``): it would send the ciphertext.
        await super()._handle_simple(send, send_header_only, False)
