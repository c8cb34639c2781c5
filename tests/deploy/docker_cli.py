"""The ``docker`` CLI for the deploy tests: finding a daemon, and commands bounded in time.

Shared by test_image.py (the image built and run as documented), test_helm_chart.py and
pod_runner.py (the Helm chart's pods run as containers); the two test modules also share the
image (build_image). Text mode throughout: output and standard input are ``str`` (UTF-8,
undecodable bytes replaced).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "docker" / "build-images.sh"
BUILD_TIMEOUT_S = 2400  # a cold build (pip install of every wheel) on 2 shared cores
IMAGE_TAG = "test"
_built: dict[str, str] = {}  # arch -> image built in this test session


class Docker:
    """``docker`` commands with the daemon's environment, bounded in time."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; with ``check``, a non-zero exit fails with the command and stderr."""
        done = subprocess.run(
            ["docker", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # container logs may hold any bytes
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} -> {done.returncode}: {done.stderr[-2000:]}"
            )
        return done

    def out(self, *args: str, timeout: float = 120) -> str:
        """The stripped standard output of a command that must succeed."""
        return self.run(*args, timeout=timeout).stdout.strip()

    def inspect(self, ref: str, fmt: str = "{{json .}}") -> Any:
        """``docker inspect --format FMT REF``, FMT being a ``{{json ...}}`` template."""
        return json.loads(self.out("inspect", "--format", fmt, ref))


def docker_env() -> tuple[dict[str, str] | None, str]:
    """The environment reaching a Docker daemon (``DOCKER_HOST``, else the private daemon of
    scripts/docker/dockerd.sh), or ``None`` and why not."""
    env = dict(os.environ)
    private = Path(os.environ.get("CALLANNOTATE_DOCKER_ROOT", "/tmp/callannotate-docker"))
    if not env.get("DOCKER_HOST") and (private / "docker.sock").exists():
        env["DOCKER_HOST"] = f"unix://{private / 'docker.sock'}"
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"docker CLI not usable: {exc}"
    if done.returncode != 0:
        return None, "no Docker daemon (scripts/docker/dockerd.sh start)"
    return env, ""


def build_image(docker: Docker, arch: str) -> str:
    """``callannotate:test-<arch>``, built by ``scripts/docker/build-images.sh`` (on
    ``BASE_IMAGE``, default ``local``: the debootstrap base) once per test session: the image
    and chart tests share it. Docker's layer cache keeps a rebuild of an unchanged tree short,
    and the script's lock makes this wait for a build already running (.ci/run starts one in
    the background) instead of building the same layers beside it."""
    if arch not in _built:
        env = {**docker.env, "CALLANNOTATE_IMAGE_TAG": IMAGE_TAG}
        env.setdefault("BASE_IMAGE", "local")
        done = subprocess.run(
            ["bash", str(BUILD), arch], env=env, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        assert done.returncode == 0, f"build-images.sh {arch} failed:\n{done.stderr[-3000:]}"
        lines = done.stderr.splitlines()
        print("".join(f"\n{x}" for x in lines if " built in " in x or " waited " in x))
        _built[arch] = f"callannotate:{IMAGE_TAG}-{arch}"
    return _built[arch]
