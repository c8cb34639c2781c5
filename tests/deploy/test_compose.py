"""The Compose stack (compose.yaml, deploy/compose/): consistent with the settings tree, secrets
from files, health checks everywhere, valid for Docker Compose and Prometheus.

The stack itself runs in a real Docker in scripts/docker/e2e.sh (CI); these checks are the fast
part. ``docker compose config`` needs the Compose plugin (scripts/docker/dockerd.sh tools):
without it that one test skips.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from callannotate.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
OFFLINE = REPO / "deploy" / "compose" / "offline.yaml"
MAKE_SECRETS = REPO / "deploy" / "compose" / "make-secrets.sh"
OUR_SERVICES = ("api", "worker", "celery-worker")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """``${NAME:-default}`` -> default (what Compose does with an empty environment)."""
    return VARIABLE.sub(lambda m: m.group("default") or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def secret_settings() -> set[str]:
    """CALLANNOTATE_* names of every secret (SecretStr) setting."""
    names = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not isinstance(model, type) or not hasattr(model, "model_fields"):
            continue
        for name, sub in model.model_fields.items():
            if sub.annotation is SecretStr or SecretStr in getattr(sub.annotation, "__args__", ()):
                names.add(f"CALLANNOTATE_{section.upper()}__{name.upper()}")
    return names


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        for dep, condition in service.get("depends_on", {}).items():
            assert dep in compose["services"], f"{name} depends on unknown {dep}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dep}"
    for name in OUR_SERVICES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[1:3] == ["callannotate", "healthcheck"], name


def test_images_are_variables_with_defaults(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        match = VARIABLE.fullmatch(service["image"])
        assert match and match.group("default"), f"{name}: image {service['image']!r}"
    offline = yaml.safe_load(OFFLINE.read_text())["services"]
    assert set(offline) == set(compose["services"]) - set(OUR_SERVICES)


def test_secrets_are_files_and_never_values(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    assert all(set(spec) == {"file"} for spec in secrets.values()), secrets
    forbidden = secret_settings() | {"POSTGRES_PASSWORD"}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert not forbidden & set(env), f"{name}: secret values in the environment"
        mounted = {
            s if isinstance(s, str) else s.get("target", s["source"])
            for s in service.get("secrets", [])
        }
        for var, value in env.items():
            if var.endswith("_FILE"):
                target = str(value)
                short = target.removeprefix("/run/secrets/")
                assert short in mounted or target in mounted, f"{name}: {var} -> {value} unmounted"
                if var.startswith("CALLANNOTATE_"):
                    assert var.removesuffix("_FILE") in secret_settings(), f"{name}: {var}"


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_the_environment_of_our_containers_is_valid_settings(
    compose: dict[str, Any], service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CALLANNOTATE_* variable of the service is a real setting (a typo would stop the
    container at start), and the secret files are read into the secret settings."""
    for var in [v for v in os.environ if v.startswith("CALLANNOTATE_")]:
        monkeypatch.delenv(var)
    env = compose["services"][service]["environment"]
    for var, value in env.items():
        value = interpolate(str(value))
        if var.endswith("_FILE"):
            path = tmp_path / Path(value).name
            path.write_text(f"{Path(value).name}-value-with-at-least-32-bytes\n")
            value = str(path)
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.data_dir == Path("/data")
    assert settings.events.backend == "redis"
    assert settings.auth.jwt_secret is not None
    assert settings.auth.jwt_secret.get_secret_value().startswith("jwt_secret-value")
    assert settings.database.password is not None
    assert "postgres" in settings.database.url
    if service == "celery-worker":
        assert settings.jobs.executor == "celery"


def test_prometheus_config_of_the_stack_is_valid(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    # laid out as in the container: rules/ beside the configuration, the token a file
    config = (REPO / "deploy" / "compose" / "prometheus.yml").read_text()
    token = "/etc/prometheus/callannotate-metrics.token"
    assert token in config
    (tmp_path / "token").write_text("secret\n")
    (tmp_path / "prometheus.yml").write_text(config.replace(token, str(tmp_path / "token")))
    (tmp_path / "rules").symlink_to(REPO / "deploy" / "prometheus" / "rules")
    run = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_make_secrets_writes_private_files_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    first = subprocess.run(
        ["bash", str(MAKE_SECRETS), str(folder)], capture_output=True, text=True, check=True
    )
    names = {p.name for p in folder.iterdir()}
    assert names == set(yaml.safe_load(COMPOSE.read_text())["secrets"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path.name
    key = (folder / "master_key").read_text().strip()
    assert len(base64.b64decode(key)) == 32
    assert len((folder / "jwt_secret").read_text().strip()) >= 32
    before = {p.name: p.read_text() for p in folder.iterdir()}
    again = subprocess.run(
        ["bash", str(MAKE_SECRETS), str(folder)], capture_output=True, text=True, check=True
    )
    assert "wrote" in first.stdout and "wrote" not in again.stdout
    assert before == {p.name: p.read_text() for p in folder.iterdir()}


def test_docker_compose_accepts_the_files(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = (
        subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if docker
        else None
    )
    if docker is None or probe is None or probe.returncode != 0:
        pytest.skip("no Docker Compose plugin (bash scripts/docker/dockerd.sh tools)")
    subprocess.run(["bash", str(MAKE_SECRETS), str(tmp_path)], capture_output=True, check=True)
    env = {**os.environ, "CALLANNOTATE_SECRETS_DIR": str(tmp_path)}
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(OFFLINE)]):
        for profile in ([], ["--profile", "celery"]):
            run = subprocess.run(
                [docker, "compose", *files, *profile, "config", "-q"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            assert run.returncode == 0, f"{files} {profile}: {run.stderr}"


def test_prometheus_scrapes_every_worker_container_on_its_metrics_port(
    compose: dict[str, Any],
) -> None:
    """The job callannotate-workers resolves the name `worker`: the local workers (service
    name) and the Celery workers (network alias), each listening on the port it scrapes."""
    config = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "callannotate-workers"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"]
    services = compose["services"]
    assert "worker" in services["celery-worker"]["networks"]["default"]["aliases"]
    for name in ("worker", "celery-worker"):
        env = services[name]["environment"]
        assert env["CALLANNOTATE_METRICS__PORT"] == str(sd["port"]), name
        assert env["CALLANNOTATE_METRICS__HOST"] == "0.0.0.0", name  # inside the network only
        assert "ports" not in services[name], name  # never published on the host
