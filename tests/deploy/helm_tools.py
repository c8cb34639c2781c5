"""Finding and running the Kubernetes tools of tests/deploy/test_helm_chart.py.

helm, trivy, checkov and yamllint live in the tool venv ``.tools/k8s`` that
``scripts/setup.sh`` makes (stage "Kubernetes chart tools"); ``CALLANNOTATE_K8S_TOOLS``
names another folder, and the ``PATH`` is searched last. The Kubernetes client that
k8s_schema.py needs is in ``.tools/k8s-schema`` (``CALLANNOTATE_K8S_SCHEMA_PYTHON``). A
missing tool skips the test with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "callannotate"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "rel"
NAMESPACE = "callannotate"
# trivy renders charts for Kubernetes 1.20 unless told; the chart needs >= 1.25.
KUBE_VERSION = "1.30.0"

Manifest = dict[str, Any]


def tools_dir() -> Path:
    return Path(os.environ.get("CALLANNOTATE_K8S_TOOLS") or REPO / ".tools" / "k8s" / "bin")


def tool(name: str) -> str:
    """The path of ``name``; skip (or fail under CI=true) when it is not installed."""
    candidate = tools_dir() / name
    path = str(candidate) if os.access(candidate, os.X_OK) else shutil.which(name)
    if path is None:
        why = f"{name} not installed (bash scripts/setup.sh makes the tool venv .tools/k8s)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    return path


def schema_python() -> str:
    """The Python of the tool venv .tools/k8s-schema (has the ``kubernetes`` client)."""
    path = Path(
        os.environ.get("CALLANNOTATE_K8S_SCHEMA_PYTHON")
        or REPO / ".tools" / "k8s-schema" / "bin" / "python"
    )
    if not os.access(path, os.X_OK):
        why = f"{path} missing (bash scripts/setup.sh makes the tool venv .tools/k8s-schema)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    return str(path)


def run(
    cmd: Sequence[str], *, timeout: float = 240, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (bounded in time) with extra environment variables; never raises on exit."""
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **env},
    )


def helm_template(
    *values_files: Path, set_values: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    cmd += ["--kube-version", KUBE_VERSION]
    for path in values_files:
        cmd += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        cmd += ["--set-string", f"{key}={value}"]
    return run(cmd)


def render(*values_files: Path, set_values: Mapping[str, str] | None = None) -> list[Manifest]:
    """The chart's manifests as helm renders them (fails the test on a helm error)."""
    done = helm_template(*values_files, set_values=set_values)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(deployment: Manifest) -> list[Manifest]:
    spec: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    return spec


def pod_labels(deployment: Manifest) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_vars(container: Manifest) -> Iterator[Manifest]:
    yield from container.get("env", [])
