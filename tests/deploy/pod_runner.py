"""Run a rendered Deployment's pod in a real Docker, the way a kubelet would.

No cluster can be installed on the project's machines, so tests/deploy/test_helm_chart.py
starts the chart's API and worker pods as containers: the same image, arguments (the image's
ENTRYPOINT kept, as Kubernetes does when a container has no ``command``), environment
(``secretKeyRef`` resolved from the rendered Secret, ``$(VAR)`` expanded), user and groups
(``runAsUser``, ``runAsGroup``, ``fsGroup``), read-only root filesystem, dropped capabilities
and no privilege escalation; the PVC as one Docker volume shared by the pods, the ConfigMap
and Secret volumes as read-only folders with the items, modes and group Kubernetes gives
them, ``emptyDir`` as a tmpfs. Probes are run as the kubelet runs them (HTTP GET, TCP
connect, exec). Not emulated: scheduling, resource limits, NetworkPolicy.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from docker_cli import Docker

Manifest = dict[str, Any]


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of earlier variables ($$ escapes)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


class Pod:
    """One running container of a rendered Deployment."""

    def __init__(self, docker: Docker, cid: str, ip: str, deployment: Manifest) -> None:
        self.docker = docker
        self.id = cid
        self.ip = ip
        self.spec = deployment["spec"]["template"]["spec"]
        self.container: Manifest = self.spec["containers"][0]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for port in self.container.get("ports", []):
            if port["name"] == name_or_number:
                return int(port["containerPort"])
        raise AssertionError(f"probe names port {name_or_number!r}, which the pod lacks")

    def running(self) -> bool:
        done = self.docker.run("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return done.stdout.strip() == "true"

    def logs(self) -> str:
        done = self.docker.run("logs", "--tail", "40", self.id, check=False)
        return done.stdout + done.stderr

    def exec(
        self, *command: str, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        flags = ["-i"] if stdin is not None else []
        return self.docker.run(
            "exec", *flags, self.id, *command, timeout=timeout, check=False, stdin=stdin
        )

    def probe(self, kind: str) -> tuple[bool, str]:
        """Run the container's ``kind`` probe once, as the kubelet does."""
        spec = self.container[kind]
        timeout = float(spec.get("timeoutSeconds", 1))
        if "httpGet" in spec:
            url = f"http://{self.ip}:{self.port(spec['httpGet']['port'])}{spec['httpGet']['path']}"
            try:
                status = httpx.get(url, timeout=timeout).status_code
            except httpx.HTTPError as exc:
                return False, f"{type(exc).__name__}: {exc}"
            return 200 <= status < 400, f"HTTP {status}"
        if "tcpSocket" in spec:
            try:
                port = self.port(spec["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True, "connected"
            except OSError as exc:
                return False, str(exc)
        done = self.exec(*spec["exec"]["command"], timeout=timeout + 30)
        return done.returncode == 0, (done.stdout + done.stderr).strip()[-300:]

    def wait_probe(self, kind: str, timeout_s: float) -> float:
        """Seconds until the probe succeeds (tried every second, not every periodSeconds)."""
        start = time.monotonic()
        why = ""
        while time.monotonic() - start < timeout_s:
            ok, why = self.probe(kind)
            if ok:
                return time.monotonic() - start
            assert self.running(), f"container exited before its {kind} passed:\n{self.logs()}"
            time.sleep(1)
        raise AssertionError(f"{kind} failing after {timeout_s} s ({why}):\n{self.logs()}")


class PodRunner:
    """Starts pods of one rendered release on one Docker network and one data volume."""

    def __init__(self, docker: Docker, docs: list[Manifest], workdir: Path) -> None:
        self.docker = docker
        self.docs = docs
        self.workdir = workdir
        suffix = uuid.uuid4().hex[:8]
        self.network = f"callannotate-helm-{suffix}"
        self.volumes: dict[str, str] = {}  # claim name -> docker volume
        self.started: list[str] = []
        docker.run("network", "create", self.network)

    def _object(self, kind: str, name: str) -> Manifest | None:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return found[0] if found else None

    def _secret_value(self, name: str, key: str) -> str | None:
        secret = self._object("Secret", name)
        if secret is None or key not in secret.get("data", {}):
            return None
        return base64.b64decode(secret["data"][key]).decode()

    def _env(self, container: Manifest) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                value = self._secret_value(ref["name"], ref["key"])
                assert value is not None or ref.get("optional"), f"unresolved {ref}"
                if value is None:
                    continue
            else:
                value = _expand(str(var.get("value", "")), env)
            env[var["name"]] = value
        return env

    def _folder(self, volume: Manifest, fs_group: int) -> Path:
        """A ConfigMap or Secret volume as the kubelet lays it out."""
        folder = self.workdir / str(volume["name"])
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            source = self._object("ConfigMap", volume["configMap"]["name"])
            assert source is not None, volume
            files = dict(source["data"])
            mode = int(volume["configMap"].get("defaultMode", 0o644))
        else:
            name = volume["secret"]["secretName"]
            files = {}
            for item in volume["secret"].get("items", []):
                value = self._secret_value(name, item["key"])
                assert value is not None, f"secret {name} has no key {item['key']}"
                files[item["path"]] = value
            mode = int(volume["secret"].get("defaultMode", 0o644))
        for path, text in files.items():
            target = folder / path
            target.write_text(text)
            os.chown(target, 0, fs_group)  # the kubelet gives the files to the fsGroup
            target.chmod(mode)
        folder.chmod(0o755)
        return folder

    def _mounts(self, pod: Manifest, container: Manifest) -> list[str]:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        fs_group = int(pod.get("securityContext", {}).get("fsGroup", 0))
        args: list[str] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            target = mount["mountPath"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.volumes:
                    self.volumes[claim] = f"{self.network}-{claim}"
                    self.docker.run("volume", "create", self.volumes[claim])
                args += ["-v", f"{self.volumes[claim]}:{target}"]
            elif "emptyDir" in volume:
                args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=1777"]
            else:
                folder = self._folder(volume, fs_group)
                args += ["-v", f"{folder}:{target}:ro"]
        return args

    def start(self, deployment: Manifest) -> Pod:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert "command" not in container, "the emulation keeps the image's ENTRYPOINT"
        psc = pod.get("securityContext", {})
        sc = container.get("securityContext", {})
        user = sc.get("runAsUser", psc.get("runAsUser"))
        group = sc.get("runAsGroup", psc.get("runAsGroup"))
        args = ["run", "-d", "--network", self.network, "--label", "callannotate-test=1"]
        args += ["--user", f"{user}:{group}", "--group-add", str(psc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for name, value in self._env(container).items():
            args += ["-e", f"{name}={value}"]
        args += self._mounts(pod, container)
        cid = self.docker.out(*args, container["image"], *container.get("args", []))
        self.started.append(cid)
        fmt = f'{{{{json (index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        ip = self.docker.inspect(cid, fmt)
        return Pod(self.docker, cid, ip, deployment)

    def close(self) -> None:
        for cid in self.started:
            self.docker.run("rm", "-f", "-v", cid, check=False, timeout=90)
        for volume in self.volumes.values():
            self.docker.run("volume", "rm", "-f", volume, check=False)
        self.docker.run("network", "rm", self.network, check=False)
