"""Encryption at rest: throughput of the chunked AES-256-GCM format, and its cost per call.

    .venv/bin/python benchmarks/encryption.py [--mb 256] [--chunk 65536] [--repeat 3]

Measures, on a stream of ``--mb`` MiB written and read through the same code the service uses
(:class:`~callannotate.security.envelope.EncryptingWriter` /
:meth:`~callannotate.security.atrest.Vault.open_read`):

* encryption MB/s: plaintext pushed in 64 KiB pieces (as an upload arrives) into an encrypted
  file on disk (tmpfs when /dev/shm exists, so the disk does not dominate);
* decryption MB/s: the file read back sequentially through the decrypting reader;
* random-access reads: 1000 ranges of 64 KiB at random offsets (a player seeking);
* the same sizes as plain file I/O, to show what encryption adds;
* the seconds encryption adds to a 1-hour 16 kHz call (16-bit mono WAV, 115 MB), once written
  and once read (the pipeline's decode).

Target (issue 17): >= 200 MB/s both ways, so a 1-hour call adds < 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from callannotate.config import EncryptionSettings, Settings
from callannotate.security.atrest import Vault

MB = 1024 * 1024
PIECE = 64 * 1024
HOUR_CALL_BYTES = 3600 * 16000 * 2 + 44


def _scratch() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="ca-enc-bench-", dir=base))


def _write(vault: Vault | None, path: Path, block: bytes, total: int) -> float:
    start = time.perf_counter()
    fh = vault.open_write(path) if vault is not None else open(path, "wb")  # noqa: SIM115
    with fh:
        view = memoryview(block)
        written = 0
        while written < total:
            n = min(PIECE, total - written)
            offset = written % (len(block) - PIECE)
            fh.write(view[offset : offset + n])
            written += n
    return time.perf_counter() - start


def _read(vault: Vault | None, path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    fh = vault.open_read(path) if vault is not None else open(path, "rb")  # noqa: SIM115
    n = 0
    with fh:
        while chunk := fh.read(1024 * 1024):
            n += len(chunk)
    return time.perf_counter() - start, n


def _seek(vault: Vault | None, path: Path, size: int, count: int = 1000) -> float:
    rng = random.Random(1)
    fh = vault.open_read(path) if vault is not None else open(path, "rb")  # noqa: SIM115
    start = time.perf_counter()
    with fh:
        for _ in range(count):
            fh.seek(rng.randrange(0, size - PIECE))
            assert len(fh.read(PIECE)) == PIECE
    return (time.perf_counter() - start) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="stream size in MiB (default 256)")
    parser.add_argument("--chunk", type=int, default=65536, help="encryption chunk size")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args(argv)

    scratch = _scratch()
    try:
        settings = Settings(
            data_dir=scratch / "data", encryption=EncryptionSettings(chunk_size=args.chunk)
        )
        vault = Vault(settings)
        vault.ring  # noqa: B018 - create the key file outside the timings
        total = args.mb * MB
        block = secrets.token_bytes(8 * MB + PIECE)  # random: nothing compresses or dedups
        enc, plain = scratch / "enc.bin", scratch / "plain.bin"
        rows: dict[str, float] = {}
        for _ in range(args.repeat):
            t_enc = _write(vault, enc, block, total)
            t_dec, n = _read(vault, enc)
            assert n == total
            t_pw = _write(None, plain, block, total)
            t_pr, _ = _read(None, plain)
            for key, t in (("enc", t_enc), ("dec", t_dec), ("pw", t_pw), ("pr", t_pr)):
                rows[key] = min(rows.get(key, float("inf")), t)
        seek_enc = _seek(vault, enc, total)
        seek_plain = _seek(None, plain, total)
        overhead = enc.stat().st_size - total
        mbps = {k: total / MB / v for k, v in rows.items()}

        print(f"stream {args.mb} MiB, chunk {args.chunk} B, best of {args.repeat}, on {scratch}")
        print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}")
        print(f"  encrypt (write) : {mbps['enc']:8.1f} MB/s   plain write {mbps['pw']:8.1f} MB/s")
        print(f"  decrypt (read)  : {mbps['dec']:8.1f} MB/s   plain read  {mbps['pr']:8.1f} MB/s")
        print(
            f"  random 64 KiB read: {seek_enc * 1e6:7.1f} us encrypted, "
            f"{seek_plain * 1e6:7.1f} us plain"
        )
        print(f"  size overhead   : {overhead} B ({overhead / total * 100:.3f} %)")
        hour = HOUR_CALL_BYTES / MB
        add_w = hour / mbps["enc"] - hour / mbps["pw"]
        add_r = hour / mbps["dec"] - hour / mbps["pr"]
        print(
            f"  1-hour 16 kHz call ({hour:.0f} MiB): +{max(add_w, 0):.3f} s to store, "
            f"+{max(add_r, 0):.3f} s to read back "
            f"(total {hour / mbps['enc']:.3f} s / {hour / mbps['dec']:.3f} s)"
        )
        ok = mbps["enc"] >= 200 and mbps["dec"] >= 200
        print(f"  target >= 200 MB/s both ways: {'met' if ok else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
