"""The lock files written by scripts/lock.sh agree with pyproject.toml, setup.sh and the models.

A dependency added to pyproject.toml without re-running ``bash scripts/lock.sh`` fails here, so
the image (``pip install --require-hashes --no-deps -r requirements.lock``) never lacks it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RELOCK = "pyproject.toml changed without `bash scripts/lock.sh`"


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, sha256 hashes)`` for each ``name==version`` entry of a pip file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))  # join continuation lines
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert match, f"{path.name}: not a pinned requirement: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in entries, f"{path.name}: {name} twice"
        entries[name] = (match[2], re.findall(r"sha256:([0-9a-f]{64})", match[3]))
    return entries


def project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {"runtime": data["dependencies"], "dev": data["optional-dependencies"]["dev"]}


def assert_satisfied(requirements: list[str], lock: dict[str, tuple[str, list[str]]]) -> None:
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} missing: {RELOCK}"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {text!r}: {RELOCK}"
        )


def test_runtime_lock_pins_and_hashes_every_dependency_without_torch() -> None:
    lock = parse_lock(ROOT / "requirements.lock")
    assert_satisfied(project()["runtime"], lock)
    assert "torch" not in lock
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert unhashed == [], "pip --require-hashes needs a hash for every entry"


def test_dev_constraints_pin_the_dev_extra_torch_and_the_runtime_versions() -> None:
    dev = parse_lock(ROOT / "requirements" / "dev.txt")
    assert_satisfied(project()["dev"], dev)
    torch = re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    assert torch and dev["torch"][0] == torch[1]
    runtime = parse_lock(ROOT / "requirements.lock")
    for name, (version, _) in runtime.items():
        assert name in dev, f"{name} is in requirements.lock but not in dev.txt: {RELOCK}"
        assert dev[name][0] == version, f"dev.txt has {name}=={dev[name][0]}, lock {version}"


def test_model_hashes_cover_exactly_requirements_models_txt() -> None:
    lines = (ROOT / "requirements-models.txt").read_text(encoding="utf-8").splitlines()
    pinned = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    hashed = parse_lock(ROOT / "requirements" / "models.txt")
    assert sorted(f"{name}=={version}" for name, (version, _) in hashed.items()) == sorted(
        f"{canonicalize_name(p.split('==')[0])}=={p.split('==')[1]}" for p in pinned
    )
    assert all(hashes for _, hashes in hashed.values())


def test_parse_lock_rejects_an_unpinned_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("fastapi>=0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match=re.escape("not a pinned requirement: 'fastapi>=0.1")):
        parse_lock(bad)
