"""The container image (Dockerfile, scripts/docker/), built and run in a real Docker.

The amd64 image is built by ``scripts/docker/build-images.sh`` on ``BASE_IMAGE`` (default
here: ``local``, the debootstrap base) and run the way docs/deployment.md says: read-only root
file system, a volume on /data, a tmpfs on /tmp, as its non-root user, with authentication on.
The tests check /health, /ready, the HEALTHCHECK, that no compiler, torch or test tool is
inside, and that SIGTERM stops the service promptly with a running job returned to the queue.

They need a Docker daemon (``DOCKER_HOST``, or ``scripts/docker/dockerd.sh start``); without
one they skip with the reason, unless ``CALLANNOTATE_DOCKER_TESTS=1`` (CI's image job), where
that is a failure. The arm64 image (qemu, several minutes) is opt-in:
``CALLANNOTATE_ARM64_TESTS=1``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from docker_cli import Docker, build_image
from docker_cli import docker_env as find_docker

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "diarization" / "callsample" / "sample.wav"
READY_TIMEOUT_S = 300
STOP_GRACE_S = "5"  # workers.stop_grace_s of the service container

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def docker_env() -> dict[str, str]:
    env, why = find_docker()
    if env is None:
        if os.environ.get("CALLANNOTATE_DOCKER_TESTS") == "1":
            pytest.fail(f"CALLANNOTATE_DOCKER_TESTS=1 needs Docker: {why}")
        pytest.skip(why)
    return env


@pytest.fixture(scope="module")
def docker(docker_env: dict[str, str]) -> Docker:
    return Docker(docker_env)


@pytest.fixture(scope="module")
def image(docker: Docker) -> str:
    return build_image(docker, "amd64")


@pytest.fixture(scope="module")
def network(docker: Docker) -> Iterator[str]:
    """A user-defined network: the host reaches the containers at their addresses on it."""
    name = f"callannotate-test-{uuid.uuid4().hex[:8]}"
    docker.run("network", "create", name)
    try:
        yield name
    finally:
        docker.run("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def volume(docker: Docker) -> Iterator[str]:
    name = f"callannotate-test-data-{uuid.uuid4().hex[:8]}"
    docker.run("volume", "create", name)
    try:
        yield name
    finally:
        docker.run("volume", "rm", "-f", name, check=False)


class Container:
    """A detached container, removed when the test module ends (also on failure)."""

    def __init__(self, docker: Docker, cid: str, network: str) -> None:
        self.docker = docker
        self.id = cid
        ip = docker.inspect(
            cid, f'{{{{json (index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        )
        self.url = f"http://{ip}:8000"

    def wait_http(self, path: str, timeout_s: float) -> float:
        """Seconds until ``GET path`` answers 200; fails with the logs after ``timeout_s``."""
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < timeout_s:
            try:
                response = httpx.get(self.url + path, timeout=5)
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            running = self.docker.inspect(self.id, "{{json .State.Running}}")
            assert running, f"container exited:\n{self.logs()}"
            time.sleep(0.5)
        raise AssertionError(f"{path} not 200 within {timeout_s}s ({last}):\n{self.logs()}")

    def logs(self) -> str:
        done = self.docker.run("logs", "--tail", "25", self.id, check=False)
        return done.stdout + done.stderr

    def exec(self, *cmd: str, stdin: str | None = None) -> str:
        flags = ["-i"] if stdin is not None else []
        return self.docker.run("exec", *flags, self.id, *cmd, stdin=stdin).stdout

    def stop(self, timeout_s: int) -> tuple[float, int]:
        """``docker stop`` (SIGTERM, SIGKILL after ``timeout_s``): seconds taken, exit code."""
        start = time.monotonic()
        self.docker.run("stop", "-t", str(timeout_s), self.id, timeout=timeout_s + 30)
        took = time.monotonic() - start
        return took, int(self.docker.inspect(self.id, "{{json .State.ExitCode}}"))


@pytest.fixture(scope="module")
def start_container(
    docker: Docker, network: str, volume: str
) -> Iterator[Callable[..., Container]]:
    """Starts the image as documented: read-only root, /data volume, tmpfs /tmp."""
    started: list[str] = []

    def start(
        image: str,
        *command: str,
        platform: str | None = None,
        health_interval: str = "",
        env: dict[str, str] | None = None,
    ) -> Container:
        args = ["run", "-d", "--read-only", "--tmpfs", "/tmp:rw,size=256m,mode=1777"]
        args += ["-v", f"{volume}:/data", "--network", network, "--label", "callannotate-test=1"]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        if platform:
            args += ["--platform", platform]
        if health_interval:  # the image's HEALTHCHECK command, run more often
            args += ["--health-interval", health_interval]
        cid = docker.out(*args, image, *command)
        started.append(cid)
        return Container(docker, cid, network)

    try:
        yield start
    finally:
        for cid in started:
            docker.run("rm", "-f", "-v", cid, check=False, timeout=60)


@pytest.fixture(scope="module")
def service(image: str, start_container: Callable[..., Container]) -> Iterator[Container]:
    """The image's default command (API + one embedded worker, authentication on). Its
    HEALTHCHECK runs every 5 s instead of the image's 15 s (test_image_metadata checks those):
    test_healthcheck_becomes_healthy waits for the first check after /ready, not for the 15th
    second (each check is a `callannotate healthcheck` of ~3 s, so not more often). Running
    jobs get 5 s after SIGTERM (workers.stop_grace_s) instead of 30 s: the SIGTERM test
    waits for that grace to run out."""
    container = start_container(
        image, health_interval="5s", env={"CALLANNOTATE_WORKERS__STOP_GRACE_S": STOP_GRACE_S}
    )
    cold = container.wait_http("/ready", READY_TIMEOUT_S)
    print(f"\ncold start (container started -> /ready 200): {cold:.1f} s")
    yield container


@pytest.fixture(scope="module")
def api_key(service: Container) -> str:
    """An admin API key made with the CLI inside the container, as docs/deployment.md says."""
    service.exec(
        "callannotate", "users", "create", "admin", "--role", "admin", "--password-stdin",
        stdin="image-test-password-1\n",
    )  # fmt: skip
    out = service.exec("callannotate", "apikeys", "create", "--user", "admin", "--name", "test")
    return out.strip().splitlines()[-1].strip()


# ------------------------------------------------------------------------------ the image


def test_image_metadata(docker: Docker, image: str) -> None:
    info = docker.inspect(image)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert "8000/tcp" in config["ExposedPorts"]
    assert "/data" in config["Volumes"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "-e", "143", "--"]
    assert config["Cmd"] == ["callannotate", "serve", "--host", "0.0.0.0"]
    health = config["Healthcheck"]
    assert health["Test"] == ["CMD", "callannotate", "healthcheck"]
    seconds = {k: health[k] / 1e9 for k in ("Interval", "Timeout", "StartPeriod")}
    assert seconds == {"Interval": 15, "Timeout": 10, "StartPeriod": 180}, seconds
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CALLANNOTATE_DATA_DIR"] == "/data"
    assert env["CALLANNOTATE_MODEL_CACHE_DIR"] == "/opt/callannotate/models"
    print(f"\nimage size: {info['Size'] / 1e6:.0f} MB")


def test_no_compiler_torch_or_test_tools(docker: Docker, image: str) -> None:
    script = (
        "import importlib.util, shutil, sys\n"
        "tools = [t for t in ('gcc', 'cc', 'c++', 'clang', 'make', 'ld') if shutil.which(t)]\n"
        "mods = [m for m in ('torch', 'pytest', 'ruff', 'mypy', 'playwright', 'schemathesis')\n"
        "        if importlib.util.find_spec(m)]\n"
        "import av, ctranslate2, faster_whisper, onnxruntime  # the runtime is there\n"
        "print(tools, mods)\n"
        "sys.exit(1 if tools or mods else 0)\n"
    )
    done = docker.run(
        "run", "--rm", "--network", "none", "--read-only", image, "python3", "-c", script,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_models_are_baked_in_and_verified(docker: Docker, image: str) -> None:
    """Every configured model file is present with its pinned sha256, without a network."""
    done = docker.run(
        "run", "--rm", "--network", "none", "--read-only", image,
        "callannotate", "config", "check", "/opt/callannotate/config/models.yaml", "--files",
        "--json", timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    checks = json.loads(done.stdout)["model_files"]
    assert checks and all(v == "ok" for v in checks.values()), checks


# ------------------------------------------------------------------------------ running


def test_serves_read_only_as_non_root(service: Container) -> None:
    assert httpx.get(service.url + "/health", timeout=10).status_code == 200
    assert service.exec("id", "-u").strip() == "10001"
    probe = "import pathlib; pathlib.Path('/opt/venv/probe').write_text('x')"
    done = service.docker.run("exec", service.id, "python3", "-c", probe, check=False)
    assert done.returncode != 0 and "Read-only file system" in done.stderr
    # authentication is on: the job list needs a credential
    assert httpx.get(service.url + "/jobs", timeout=10).status_code == 401


def test_healthcheck_becomes_healthy(service: Container) -> None:
    deadline = time.monotonic() + 120  # the first check runs one interval (5 s) after start
    status = ""
    while time.monotonic() < deadline:
        status = service.docker.inspect(service.id, "{{json .State.Health.Status}}")
        if status == "healthy":
            break
        time.sleep(1)
    assert status == "healthy", service.docker.inspect(service.id, "{{json .State.Health}}")


def _long_call(tmp_path: Path, repeat: int = 8) -> Path:
    """The shared call sample repeated: a job long enough to be running when we stop."""
    if not SAMPLE.is_file():
        pytest.skip(f"shared call sample not found: {SAMPLE}")
    audio, rate = sf.read(SAMPLE, dtype="float32")
    path = tmp_path / "long_call.wav"
    sf.write(path, np.concatenate([audio] * repeat), rate)
    return path


def _job_state(url: str, key: str, job_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.get(f"{url}/jobs/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_sigterm_returns_running_job_to_queue(
    service: Container,
    api_key: str,
    image: str,
    start_container: Callable[..., Container],
    tmp_path: Path,
) -> None:
    audio = _long_call(tmp_path)
    with audio.open("rb") as fh:
        response = httpx.post(
            service.url + "/jobs",
            headers={"Authorization": f"Bearer {api_key}"},
            files={"file": ("long_call.wav", fh, "audio/wav")},
            timeout=60,
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while _job_state(service.url, api_key, job_id)["state"] != "running":
        assert time.monotonic() < deadline, "the job did not start within 120 s"
        time.sleep(0.5)

    # SIGTERM via tini: uvicorn stops, the running job gets workers.stop_grace_s (5 s here),
    # then it goes back to incoming; well within docker's own 60 s before SIGKILL.
    took, code = service.stop(60)
    print(f"\nstop with a running job: {took:.1f} s, exit code {code}")
    assert code == 0, service.logs()
    assert float(STOP_GRACE_S) <= took < 30

    # The same data volume, the API alone: the job waits in the queue for the next worker.
    api = start_container(image, "callannotate", "serve", "--host", "0.0.0.0", "--no-workers")
    api.wait_http("/ready", READY_TIMEOUT_S)
    job = _job_state(api.url, api_key, job_id)
    assert job["state"] == "queued", job

    took, code = api.stop(30)
    print(f"stop when idle: {took:.1f} s, exit code {code}")
    assert code == 0 and took < 10, api.logs()


# ------------------------------------------------------------------------------ arm64


@pytest.mark.skipif(
    os.environ.get("CALLANNOTATE_ARM64_TESTS") != "1",
    reason="arm64 under qemu takes many minutes: set CALLANNOTATE_ARM64_TESTS=1",
)
def test_arm64_image_answers_health_under_qemu(
    docker: Docker, start_container: Callable[..., Container]
) -> None:
    """The API alone: under qemu-user 7.2, ``import onnxruntime`` (aarch64) segfaults, so an
    emulated worker cannot load models (docs/deployment.md, "Container images")."""
    started = time.monotonic()
    image = build_image(docker, "arm64")
    print(f"\narm64 build: {time.monotonic() - started:.0f} s")
    assert docker.inspect(image, "{{json .Architecture}}") == "arm64"
    container = start_container(
        image, "callannotate", "serve", "--host", "0.0.0.0", "--no-workers",
        platform="linux/arm64",
    )  # fmt: skip
    took = container.wait_http("/health", 600)
    print(f"arm64 (qemu) start -> /health 200: {took:.1f} s")
    arch = container.exec("python3", "-c", "import platform; print(platform.machine())")
    assert arch.strip() == "aarch64"
