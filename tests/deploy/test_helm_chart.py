"""The Helm chart ``deploy/helm/callannotate``, validated with real tools.

A real helm (v4, from the tool venv ``.tools/k8s``; see helm_tools.py) renders the chart with
the default values and with ``ci/full-values.yaml`` (everything enabled); the manifests are
checked here (kinds, probes, security context, resources, image, labels and selectors, the
data volume, secret references, NetworkPolicy, HPA), the settings and command lines they
give the pods are parsed by the service's own code, and trivy (``trivy config``, offline,
embedded checks) and checkov (Kubernetes checks, ``--skip-download``) scan them. yamllint
checks the values files. Without the tools the tests skip, except under CI=true.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from docker_cli import Docker, build_image, docker_env
from helm_tools import (
    CHART,
    FULL_VALUES,
    KUBE_VERSION,
    NAMESPACE,
    REPO,
    Manifest,
    containers,
    env_vars,
    find,
    helm_template,
    one,
    pod_labels,
    render,
    run,
    schema_python,
    selects,
    tool,
)
from pod_runner import PodRunner
from prometheus_client import REGISTRY

from callannotate.cli import build_parser
from callannotate.config import MetricsSettings, QueueSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability import collector
from callannotate.pipeline.settings import parse_models

FULLNAME = "rel-callannotate"
API = f"{FULLNAME}-api"
WORKER = f"{FULLNAME}-worker"
SECRET = FULLNAME
FILE_SECRET_KEYS = {
    "jwt-secret",
    "encryption-master-key",
    "database-password",
    "metrics-token",
    "callbacks-secret",
}
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])

# checkov findings the chart accepts, with the reason (also in docs/deployment.md).
CHECKOV_SKIPS = {
    # Default values: the image is pinned by its tag (the appVersion); image.digest pins it by
    # content, which ci/full-values.yaml does (and checkov passes it there).
    "default": {"CKV_K8S_43": "image by tag (set image.digest to pin by content)"},
    # Full values: every secret is a mounted file except the Redis URL (events.redis_url and
    # jobs.broker_url have no *_file form), an environment variable from the Secret.
    "full": {"CKV_K8S_35": "the Redis URL is a secret environment variable"},
}

VALUES = {"default": (), "full": (FULL_VALUES,)}


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(*VALUES[request.param])


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return render(FULL_VALUES)


def deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    return {"api": one(docs, "Deployment", API), "worker": one(docs, "Deployment", WORKER)}


def test_helm_lint_passes_with_default_and_full_values() -> None:
    for extra in ([], ["--values", str(FULL_VALUES)]):
        done = run([tool("helm"), "lint", "--strict", str(CHART), *extra])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


def test_install_dry_run_prints_the_notes() -> None:
    """`helm install --dry-run=client` (no cluster) renders NOTES.txt with working names."""
    for extra in ([], ["--values", str(FULL_VALUES)]):
        command = [tool("helm"), "install", "callannotate", str(CHART), "--namespace"]
        command += [NAMESPACE, "--dry-run=client", *extra]
        done = run(command)
        assert done.returncode == 0, done.stderr
        notes = done.stdout.split("NOTES:", 1)[1]
        assert "rollout status deploy/callannotate-api" in notes
        assert "callannotate users create admin --role admin" in notes
        if extra:
            assert "https://calls.example.org/" in notes
        else:
            assert "port-forward svc/callannotate 8000:8000" in notes


def test_kinds_present(rendered: tuple[str, list[Manifest]]) -> None:
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    base = ["ConfigMap", "Deployment", "Deployment", "NetworkPolicy", "NetworkPolicy"]
    base += ["PersistentVolumeClaim", "PodDisruptionBudget", "PodDisruptionBudget"]
    base += ["Service", "Service", "ServiceAccount"]
    if name == "full":
        base += ["HorizontalPodAutoscaler", "Ingress", "Secret", "ServiceMonitor"]
    assert kinds == sorted(base)


def test_every_resource_is_namespaced_and_labelled(rendered: tuple[str, list[Manifest]]) -> None:
    for doc in rendered[1]:
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE, doc["kind"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "rel"
        assert meta["labels"]["app.kubernetes.io/name"] == "callannotate"
        assert meta["labels"]["app.kubernetes.io/version"] == APP_VERSION


def test_image_is_pinned_never_latest(rendered: tuple[str, list[Manifest]]) -> None:
    name, docs = rendered
    for deployment in deployments(docs).values():
        for c in containers(deployment):
            assert not c["image"].endswith(":latest")
            if name == "default":
                assert c["image"] == f"callannotate:{APP_VERSION}"
                assert c["imagePullPolicy"] == "Always"
            else:
                assert "@sha256:" in c["image"]
    refused = helm_template(set_values={"image.tag": "latest"})
    assert refused.returncode != 0 and "latest" in refused.stderr


def test_probes_on_health_and_ready(rendered: tuple[str, list[Manifest]]) -> None:
    api, worker = deployments(rendered[1]).values()
    (c,) = containers(api)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert ports["http"] == 8000
    (w,) = containers(worker)
    healthcheck = ["callannotate", "healthcheck", "--local"]
    # the service's own parser accepts the probe command
    assert build_parser().parse_args(healthcheck[1:]).local is True
    assert w["readinessProbe"]["exec"]["command"] == healthcheck
    # either executor (a Celery worker serves its children's metrics): liveness is the
    # process's own metrics listener, not the shared dependencies (one Redis outage must not
    # restart every worker pod)
    assert {p["name"] for p in w["ports"]} == {"metrics"}
    assert w["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert w["startupProbe"]["tcpSocket"] == {"port": "metrics"}
    if rendered[0] == "full":
        assert "--executor" in w["args"] and "celery" in w["args"]


def test_security_context(rendered: tuple[str, list[Manifest]]) -> None:
    for deployment in deployments(rendered[1]).values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(deployment):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def _quantity(value: str | int | float) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    text = str(value)
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def test_resources_requests_within_limits(rendered: tuple[str, list[Manifest]]) -> None:
    for deployment in deployments(rendered[1]).values():
        for c in containers(deployment):
            res = c["resources"]
            for what in ("cpu", "memory"):
                request, limit = _quantity(res["requests"][what]), _quantity(res["limits"][what])
                assert 0 < request <= limit, (c["name"], what)
    worker = containers(deployments(rendered[1])["worker"])[0]
    # measured: one worker process holds ~1.3 GB after a job (values.yaml comments)
    assert _quantity(worker["resources"]["limits"]["memory"]) >= 1.5 * 2**30


def test_data_volume_models_config_and_tmp_are_mounted(
    rendered: tuple[str, list[Manifest]],
) -> None:
    docs = rendered[1]
    pvc = one(docs, "PersistentVolumeClaim", f"{FULLNAME}-data")
    configmap = one(docs, "ConfigMap", f"{FULLNAME}-models")
    for deployment in deployments(docs).values():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert volumes["models-config"]["configMap"]["name"] == configmap["metadata"]["name"]
        assert "emptyDir" in volumes["tmp"]
        (c,) = containers(deployment)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in env_vars(c)}
        assert mounts[env["CALLANNOTATE_DATA_DIR"]]["name"] == "data"
        assert mounts["/tmp"]["name"] == "tmp"
        models = Path(env["CALLANNOTATE_MODELS_CONFIG"])
        assert mounts[str(models.parent)]["name"] == "models-config"
        assert models.name in configmap["data"]
    if rendered[0] == "full":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_models_config_is_the_repositorys_and_valid(
    rendered: tuple[str, list[Manifest]],
) -> None:
    name, docs = rendered
    content = one(docs, "ConfigMap", f"{FULLNAME}-models")["data"]["models.yaml"]
    if name == "default":
        assert content.strip() == (REPO / "config" / "models.yaml").read_text().strip()
    # the service's own loader accepts it (unknown steps or keys would be errors)
    parse_models(yaml.safe_load(content), f"ConfigMap ({name} values)")


def _secret_files(deployment: Manifest) -> dict[str, str]:
    """Mounted secret files of the pod: path -> Secret key."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out: dict[str, str] = {}
    for mount in containers(deployment)[0]["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret:
            assert mount["readOnly"] is True
            assert secret["defaultMode"] == 0o440  # group-readable for the fsGroup
            for item in secret["items"]:
                out[f"{mount['mountPath']}/{item['path']}"] = item["key"]
    return out


def test_secret_files_and_refs_resolve_to_keys_in_the_secret(full: list[Manifest]) -> None:
    (secret,) = find(full, "Secret")
    keys = set(secret["data"])
    assert keys == FILE_SECRET_KEYS | {"redis-url"}
    for deployment in deployments(full).values():
        c = containers(deployment)[0]
        files = _secret_files(deployment)
        file_env = {e["name"]: e["value"] for e in env_vars(c) if e["name"].endswith("_FILE")}
        # every *_FILE setting names a mounted file of a key the Secret holds, and back
        assert sorted(files[path] for path in file_env.values()) == sorted(FILE_SECRET_KEYS)
        volumes = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        assert [v["secret"]["secretName"] for v in volumes] == [secret["metadata"]["name"]]
        refs = [e["valueFrom"]["secretKeyRef"] for e in env_vars(c) if "valueFrom" in e]
        assert refs == [{"name": secret["metadata"]["name"], "key": "redis-url"}]


def test_without_secrets_no_secret_and_no_refs() -> None:
    docs = render()
    assert not find(docs, "Secret")
    for deployment in deployments(docs).values():
        assert not _secret_files(deployment)
        env = list(env_vars(containers(deployment)[0]))
        assert not [e for e in env if "valueFrom" in e or e["name"].endswith("_FILE")]


def test_existing_secret_mounts_the_listed_keys() -> None:
    docs = render(
        set_values={
            "secrets.existingSecret": "callannotate-keys",
            "secrets.existingSecretKeys": "{jwt-secret,metrics-token}",
        }
    )
    assert not find(docs, "Secret")
    for deployment in deployments(docs).values():
        assert sorted(_secret_files(deployment).values()) == ["jwt-secret", "metrics-token"]
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == "callannotate-keys"
        env = {e["name"]: e.get("value") for e in env_vars(containers(deployment)[0])}
        assert env["CALLANNOTATE_AUTH__JWT_SECRET_FILE"] == "/run/secrets/callannotate/jwt-secret"
        assert env["CALLANNOTATE_METRICS__TOKEN_FILE"] == "/run/secrets/callannotate/metrics-token"


STAND_INS = {
    "jwt-secret": "x" * 32,
    "encryption-master-key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "redis-url": "redis://:pw@redis:6379/0",
}


def _settings_env(deployment: Manifest, secrets_dir: Path) -> dict[str, str]:
    """The pod's CALLANNOTATE_* variables as the container would see them: Kubernetes'
    $(VAR) references resolved, secrets from stand-in values, and the secret files written
    under ``secrets_dir`` (the *_FILE variables are pointed there)."""
    files = _secret_files(deployment)
    env: dict[str, str] = {}
    for e in env_vars(containers(deployment)[0]):
        if "valueFrom" in e:
            value = STAND_INS.get(e["valueFrom"]["secretKeyRef"]["key"], "stand-in")
        elif e["name"].endswith("_FILE"):
            key = files[e["value"]]
            value = str(secrets_dir / key)
            Path(value).write_text(STAND_INS.get(key, f"stand-in {key}") + "\n")
        else:
            value = str(e["value"])
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
        env[e["name"]] = value
    return {k: v for k, v in env.items() if k.startswith("CALLANNOTATE_")}


def test_settings_env_is_accepted_by_the_service(
    rendered: tuple[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for deployment in deployments(rendered[1]).values():
        env = _settings_env(deployment, tmp_path)
        top = {n.removeprefix("CALLANNOTATE_").split("__")[0].lower() for n in env}
        assert top <= set(Settings.model_fields), top - set(Settings.model_fields)
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            settings = Settings()
        assert str(settings.data_dir) == env["CALLANNOTATE_DATA_DIR"]
        assert settings.metrics.host == "0.0.0.0"
        if rendered[0] == "full":
            assert settings.jobs.executor == "celery"
            assert settings.events.backend == "redis"
            assert settings.jobs.broker_url == settings.events.redis_url == STAND_INS["redis-url"]
            assert settings.workers.max_jobs_per_worker == 200
            assert settings.database.url.startswith("postgresql+psycopg://")
            secrets = {
                "jwt-secret": settings.auth.jwt_secret,
                "encryption-master-key": settings.encryption.master_key,
                "database-password": settings.database.password,
                "metrics-token": settings.metrics.token,
                "callbacks-secret": settings.callbacks.secret,
            }
            for key, secret in secrets.items():
                assert secret is not None
                assert secret.get_secret_value() == STAND_INS.get(key, f"stand-in {key}")


def test_command_lines_parse_with_the_service_cli(rendered: tuple[str, list[Manifest]]) -> None:
    api, worker = deployments(rendered[1]).values()
    (a,) = containers(api)
    # the image's ENTRYPOINT (tini) is kept: only the arguments are given
    assert "command" not in a and a["args"][0] == "callannotate"
    parsed = build_parser().parse_args(a["args"][1:])
    assert (parsed.host, parsed.port, parsed.no_workers) == ("0.0.0.0", 8000, True)
    (w,) = containers(worker)
    assert "command" not in w and w["args"][0] == "callannotate"
    parsed = build_parser().parse_args(w["args"][1:])
    if rendered[0] == "full":
        assert (parsed.executor, parsed.workers, parsed.queues) == ("celery", 2, "heavy,light")
    else:
        assert (parsed.executor, parsed.workers) == ("local", 1)


def test_selectors_match_their_pods(rendered: tuple[str, list[Manifest]]) -> None:
    docs = rendered[1]
    pods = {name: pod_labels(d) for name, d in deployments(docs).items()}
    for name, deployment in deployments(docs).items():
        assert selects(deployment["spec"]["selector"]["matchLabels"], pods[name])
        other = "worker" if name == "api" else "api"
        assert not selects(deployment["spec"]["selector"]["matchLabels"], pods[other])
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    api_service = services[FULLNAME]["spec"]
    assert selects(api_service["selector"], pods["api"])
    assert not selects(api_service["selector"], pods["worker"])
    assert api_service["ports"][0]["targetPort"] == "http"
    metrics = services[f"{FULLNAME}-metrics"]["spec"]
    assert metrics["clusterIP"] == "None"
    assert all(selects(metrics["selector"], labels) for labels in pods.values())
    assert metrics["publishNotReadyAddresses"] is True
    api_ports = {p["name"] for p in containers(deployments(docs)["api"])[0]["ports"]}
    assert api_ports == {"http", "metrics"}
    for pdb in find(docs, "PodDisruptionBudget"):
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selects(pdb["spec"]["selector"]["matchLabels"], pods[component])


def test_network_policies_select_the_pods_and_open_only_named_ports(
    rendered: tuple[str, list[Manifest]],
) -> None:
    docs = rendered[1]
    pods = {name: d for name, d in deployments(docs).items()}
    covered = set()
    for policy in find(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        selected = [d for d in pods.values() if selects(selector, pod_labels(d))]
        covered |= {n for n, d in pods.items() if d in selected}
        port_names = {p["name"] for d in selected for p in containers(d)[0].get("ports", [])}
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                assert port["port"] in port_names, (policy["metadata"]["name"], port)
    assert covered == {"api", "worker"}
    api_policy = one(docs, "NetworkPolicy", f"{FULLNAME}-api")["spec"]
    assert [p["port"] for r in api_policy["ingress"] for p in r["ports"]] == ["http"]
    everything = one(docs, "NetworkPolicy", FULLNAME)["spec"]
    assert [p["port"] for r in everything["ingress"] for p in r["ports"]] == ["metrics"]
    if rendered[0] == "full":
        assert "Egress" in everything["policyTypes"]
        assert {p["port"] for p in everything["egress"][0]["ports"]} == {53}


def test_hpa_targets_the_worker_deployment_on_queue_depth(full: list[Manifest]) -> None:
    (hpa,) = find(full, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    worker = one(full, "Deployment", WORKER)
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        worker["metadata"]["name"],
    )
    assert "replicas" not in worker["spec"]  # the HPA owns the count
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "callannotate_queue_depth"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "3"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_queue_depth_metric_is_exported_by_the_service(tmp_path: Path) -> None:
    """The HPA's metric is one the workers' metrics port really serves."""
    source = collector.install(
        FileQueue(tmp_path / "queue", QueueSettings()), None, MetricsSettings()
    )
    try:
        assert REGISTRY.get_sample_value("callannotate_queue_depth") == 0.0
    finally:
        collector.uninstall(source)


def test_ingress_routes_to_the_api_service_with_tls(full: list[Manifest]) -> None:
    (ingress,) = find(full, "Ingress")
    spec = ingress["spec"]
    assert spec["tls"] == [{"hosts": ["calls.example.org"], "secretName": "calls-example-org-tls"}]
    backend = spec["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_single_api_pod_gets_no_pdb(tmp_path: Path) -> None:
    """minAvailable 1 of one pod would block every node drain."""
    values = tmp_path / "one-api.yaml"
    values.write_text("api:\n  replicas: 1\n")
    pdbs = [p["metadata"]["name"] for p in find(render(values), "PodDisruptionBudget")]
    assert pdbs == [WORKER]


def test_invalid_values_are_refused() -> None:
    cases = {
        "worker.executr": ("celery", "additional properties"),
        "worker.executor": ("celery", "redis.enabled"),
        "redis.enabled": ("true", "secrets.redisUrl"),
        "env.QUEUE_MAX": ("1", "QUEUE_MAX"),
    }
    for key, (value, message) in cases.items():
        if key == "redis.enabled":
            done = run([tool("helm"), "template", "rel", str(CHART), "--set", f"{key}={value}"])
        else:
            done = helm_template(set_values={key: value})
        assert done.returncode != 0, key
        assert message in done.stderr, (key, done.stderr)


SCHEMA_CHECK = Path(__file__).with_name("k8s_schema.py")


def _schema_check(manifests: Path) -> dict[str, list[str]]:
    done = run([schema_python(), str(SCHEMA_CHECK), str(manifests)])
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_manifests_match_the_kubernetes_schema(
    rendered: tuple[str, list[Manifest]], tmp_path: Path
) -> None:
    """Every built-in kind against the Kubernetes client's strict models (unknown fields,
    types, required fields), like kubeconform --strict."""
    name, docs = rendered
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    result = _schema_check(manifests)
    assert result["errors"] == []
    assert len(result["checked"]) == len(docs) - len(result["skipped"])
    assert result["skipped"] == (["ServiceMonitor/rel-callannotate"] if name == "full" else [])


def test_schema_check_catches_a_misspelt_or_mistyped_field(tmp_path: Path) -> None:
    docs = render()
    worker = one(docs, "Deployment", WORKER)
    containers(worker)[0]["imagePullPolicyy"] = "Always"
    worker["spec"]["replicas"] = "two"
    del containers(one(docs, "Deployment", API))[0]["name"]
    manifests = tmp_path / "broken.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    errors = "\n".join(_schema_check(manifests)["errors"])
    assert "spec.template.spec.containers.0.imagePullPolicyy: Extra inputs" in errors
    assert f"Deployment/{WORKER}: spec.replicas: Input should be a valid integer" in errors
    assert f"Deployment/{API}: spec.template.spec.containers.0.name: Field required" in errors


def test_trivy_config_finds_nothing_offline(tmp_path: Path) -> None:
    trivy = tool("trivy")
    for extra in ([], ["--helm-values", str(FULL_VALUES)]):
        done = run(
            [
                trivy,
                "config",
                "--skip-check-update",
                "--helm-kube-version",
                KUBE_VERSION,
                "--include-non-failures",
                "--format",
                "json",
                *extra,
                str(CHART),
            ],
            TRIVY_CACHE_DIR=str(tmp_path / "trivy-cache"),
            TRIVY_DISABLE_TELEMETRY="true",
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        results = {r["Target"]: r for r in report["Results"]}
        # both Deployments were rendered and checked (a render error scans nothing)
        for target in ("templates/api-deployment.yaml", "templates/worker-deployment.yaml"):
            assert results[target]["MisconfSummary"]["Successes"] > 50, target
        failures = [
            (target, m["ID"], m["Severity"], m["Title"])
            for target, r in results.items()
            for m in r.get("Misconfigurations", [])
            if m["Status"] == "FAIL"
        ]
        assert failures == [], failures


def test_checkov_kubernetes_checks_pass(tmp_path: Path) -> None:
    checkov = tool("checkov")
    for name, files in VALUES.items():
        manifests = tmp_path / name
        manifests.mkdir()
        (manifests / "manifests.yaml").write_text(yaml.safe_dump_all(render(*files)))
        skips = CHECKOV_SKIPS[name]
        done = run(
            [
                checkov,
                "--skip-download",
                "--framework",
                "kubernetes",
                "--directory",
                str(manifests),
                "--skip-check",
                ",".join(sorted(skips)),
                "--output",
                "json",
            ],
            timeout=300,
            BC_SKIP_MAPPING="TRUE",
        )
        report = json.loads(done.stdout)
        summary = report["summary"]
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert failed == [] and summary["failed"] == 0, failed
        assert summary["passed"] > 100, summary
        assert done.returncode == 0, done.stderr
        checked = {c["resource"] for c in report["results"]["passed_checks"]}
        assert f"Deployment.{NAMESPACE}.{API}" in checked
        assert f"Deployment.{NAMESPACE}.{WORKER}" in checked


def test_yamllint_values_files() -> None:
    config = json.dumps(
        {
            "extends": "default",
            "rules": {
                "line-length": {"max": 100},
                "document-start": "disable",
                "comments": {"min-spaces-from-content": 1},
                "truthy": {"check-keys": False},
            },
        }
    )
    files = [CHART / "values.yaml", FULL_VALUES, CHART / "Chart.yaml"]
    done = run([tool("yamllint"), "--strict", "-d", config, *map(str, files)])
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------- the rendered pods in a real Docker

SAMPLE = REPO.parent / "shared" / "data" / "diarization" / "callsample" / "sample.wav"


def _pod_image(docker: Docker) -> str:
    """``CALLANNOTATE_HELM_TEST_IMAGE``, else the amd64 image of the image tests, built once
    per session by the repository's script (docker_cli.build_image)."""
    return os.environ.get("CALLANNOTATE_HELM_TEST_IMAGE") or build_image(docker, "amd64")


def _pod_job_audio(folder: Path) -> Path:
    """What the pods' job annotates: 9 s of the shared call sample (6-15 s: both speakers
    talk), or a tone without it. The pods' wiring is tested here (upload to the API pod, run
    by the worker pod over the shared volume); the whole sample through the same image is
    the Compose end-to-end test's (scripts/docker/e2e.sh), and the pipeline's own tests'."""
    clip = folder / "call-clip.wav"
    if SAMPLE.exists():
        audio, rate = sf.read(SAMPLE, dtype="float32")
        sf.write(clip, audio[6 * rate : 15 * rate], rate)
    else:
        t = np.arange(16000 * 5) / 16000
        sf.write(clip, 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    return clip


@pytest.mark.docker
@pytest.mark.timeout(3600)
def test_rendered_pods_run_in_docker(tmp_path: Path) -> None:
    """The chart's API and worker pods, started from the rendered manifests in a real Docker
    with their security context, volumes, secret files and probes (pod_runner.py), serve a
    job end to end."""
    env, why = docker_env()
    if env is None:
        if os.environ.get("CALLANNOTATE_DOCKER_TESTS") == "1":
            pytest.fail(f"CALLANNOTATE_DOCKER_TESTS=1 needs Docker: {why}")
        pytest.skip(why)
    docker = Docker(env)
    repository, _, tag = _pod_image(docker).rpartition(":")
    token = "pod-test-metrics-token"
    values = tmp_path / "pod-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                "api": {"replicas": 1},
                "secrets": {
                    "jwtSecret": "pod-test-jwt-secret-0123456789abcdef",
                    "encryptionMasterKey": STAND_INS["encryption-master-key"],
                    "metricsToken": token,
                },
            }
        )
    )
    docs = render(values)
    runner = PodRunner(docker, docs, tmp_path / "volumes")
    try:
        api = runner.start(one(docs, "Deployment", API))
        started = api.wait_probe("startupProbe", 300)
        api.wait_probe("readinessProbe", 60)
        api.wait_probe("livenessProbe", 10)
        worker = runner.start(one(docs, "Deployment", WORKER))
        worker_started = worker.wait_probe("startupProbe", 300)
        worker.wait_probe("livenessProbe", 10)
        worker.wait_probe("readinessProbe", 120)
        print(f"\nstartup probes passed after: api {started:.1f} s, worker {worker_started:.1f} s")

        # the secret files are the service's settings: the scrape token opens /metrics
        api_url = f"http://{api.ip}:{api.port('http')}"
        assert httpx.get(f"{api_url}/metrics", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{api_url}/metrics", headers=auth, timeout=10).status_code == 200
        metrics = httpx.get(f"http://{worker.ip}:{worker.port('metrics')}/metrics", timeout=10)
        assert "callannotate_queue_depth" in metrics.text

        # a job: uploaded to the API pod, run by the worker pod over the shared volume
        created = api.exec(
            "callannotate", "users", "create", "admin", "--role", "admin", "--password-stdin",
            stdin="pod-test-password-1\n",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        made = api.exec("callannotate", "apikeys", "create", "--user", "admin", "--name", "t")
        assert made.returncode == 0, made.stderr
        headers = {"X-API-Key": made.stdout.strip().splitlines()[-1].strip()}
        audio = _pod_job_audio(tmp_path)
        submitted = time.monotonic()
        with audio.open("rb") as fh:
            response = httpx.post(
                f"{api_url}/jobs", files={"file": (audio.name, fh)}, headers=headers, timeout=60
            )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 900
        state = ""
        while time.monotonic() < deadline:
            job = httpx.get(f"{api_url}/jobs/{job_id}", headers=headers, timeout=10).json()
            state = job["state"]
            if state in ("completed", "failed"):
                break
            assert worker.running(), worker.logs()
            time.sleep(0.5)
        assert state == "completed", (job, worker.logs())
        result = httpx.get(f"{api_url}/jobs/{job_id}/result", headers=headers, timeout=30)
        assert result.status_code == 200 and result.json()["utterances"]
        print(f"job ({audio.name}) completed {time.monotonic() - submitted:.1f} s after upload")

        # SIGTERM (through the image's tini) stops the worker within its grace period
        grace = int(worker.spec["terminationGracePeriodSeconds"])
        start = time.monotonic()
        docker.run("stop", "-t", str(grace), worker.id, timeout=grace + 60)
        assert time.monotonic() - start < grace, worker.logs()
    finally:
        runner.close()
