"""Validate Kubernetes manifests against the official Python client's models.

Run by tests/deploy/test_helm_chart.py with the tool venv's Python (.tools/k8s-schema, which
has ``kubernetes``; the project's .venv does not):

    .tools/k8s-schema/bin/python tests/deploy/k8s_schema.py manifests.yaml

The client's models (kubernetes 37) are pydantic models generated from the Kubernetes OpenAPI
schema that forbid unknown fields, so this is a strict schema check like kubeconform's: a
misspelt or misplaced field, a wrong type or a missing required field is an error. Kinds of
other API groups (CRDs such as monitoring.coreos.com) have no model and are listed as
skipped. Prints one JSON object: {"checked": [...], "skipped": [...], "errors": [...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from pydantic import ValidationError

# API groups whose kinds the client models (the built-in ones).
BUILTIN_GROUPS = {
    "",
    "apps",
    "autoscaling",
    "batch",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
}


def model_for(api_version: str, kind: str) -> type[Any] | None:
    group, _, version = api_version.rpartition("/")
    if group not in BUILTIN_GROUPS:
        return None
    model = getattr(client, f"{version.capitalize()}{kind}", None)
    if model is None:
        raise LookupError(f"no model for {api_version} {kind}")
    return model  # type: ignore[no-any-return]


def check(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"checked": [], "skipped": [], "errors": []}
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            model = model_for(str(doc.get("apiVersion", "")), str(doc.get("kind", "")))
        except LookupError as exc:
            out["errors"].append(f"{name}: {exc}")
            continue
        if model is None:
            out["skipped"].append(name)
            continue
        try:
            model.model_validate(doc)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                out["errors"].append(f"{name}: {where}: {error['msg']}")
            continue
        out["checked"].append(name)
    return out


def main(argv: list[str]) -> int:
    docs = [d for path in argv for d in yaml.safe_load_all(Path(path).read_text()) if d]
    result = check(docs)
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
