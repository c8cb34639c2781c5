"""The shipped Prometheus, Alertmanager and Grafana files: valid, tested, consistent with
the metrics the service exports.

``promtool`` and ``amtool`` come from Debian's ``prometheus`` and ``prometheus-alertmanager``
packages (scripts/setup.sh installs them); without them these tests skip, except under
CI=true where they must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from callannotate.config import MetricsSettings, QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability import collector

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC_RE = re.compile(r"\b(callannotate_[a-z0-9_]+)\b")
# names Prometheus itself provides
BUILTIN = {"up"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (apt-get install prometheus prometheus-alertmanager)")
        pytest.skip(f"{name} not installed (Debian packages prometheus, prometheus-alertmanager)")
    return path


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every shipped dashboard."""
    out = []
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((PROM / "rules" / "callannotate.rules.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name the service can export (families with their suffixes)."""
    source = collector.install(
        FileQueue(tmp_path / "queue", QueueSettings()), None, MetricsSettings()
    )
    try:
        names: set[str] = set()
        for family in REGISTRY.collect():
            names.add(family.name)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "info": ("_info",),
                "summary": ("_sum", "_count"),
            }.get(family.type, ())
            names.update(family.name + s for s in suffixes)
        return names
    finally:
        collector.uninstall(source)


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = tool("promtool")
    checked = run(promtool, "check", "rules", "rules/callannotate.rules.yml", cwd=PROM)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "tests/callannotate.rules.test.yml", cwd=PROM)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((PROM / "tests" / "callannotate.rules.test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    alerts = {name for name, _ in rule_exprs()}
    assert alerts <= fired, alerts - fired
    # the thresholds are tested from below too (no alert) for the ratio and SLA rules
    assert {"CallAnnotateJobsFailing", "CallAnnotateJobDurationOverSLA"} <= silent


def test_scrape_config_is_valid(tmp_path: Path) -> None:
    promtool = tool("promtool")
    token = tmp_path / "token"
    token.write_text("secret\n")
    config = (PROM / "prometheus.yml").read_text()
    config = config.replace("/etc/prometheus/callannotate-metrics.token", str(token))
    (tmp_path / "rules").mkdir()
    shutil.copy(PROM / "rules" / "callannotate.rules.yml", tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(config)
    checked = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alertmanager_config_is_valid() -> None:
    amtool = tool("amtool")
    checked = run(amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doc = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert receivers[doc["route"]["receiver"]]["webhook_configs"][0]["send_resolved"] is True


def test_dashboards_are_structurally_sound() -> None:
    assert {p.stem for p in DASHBOARDS} == {"dependencies", "overview", "pipeline", "realtime"}
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "callannotate.yml").read_text()
    )
    ds_uid = provisioning["datasources"][0]["uid"]
    uids = set()
    for path in DASHBOARDS:
        doc: dict[str, Any] = json.loads(path.read_text())
        assert doc["uid"] not in uids
        uids.add(doc["uid"])
        assert doc["title"] and doc["schemaVersion"] >= 36
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in doc["panels"]:
            assert panel["type"] in {"timeseries", "stat"}, panel["title"]
            assert panel["datasource"]["uid"] == ds_uid
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip() and target["refId"]
                assert target["datasource"]["uid"] == ds_uid
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "callannotate.yml").read_text()
    )
    assert providers["providers"][0]["type"] == "file"


def test_every_dashboard_and_alert_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule of a generated rule file)."""
    promtool = tool("promtool")
    exprs = [e for _, _, e in dashboard_exprs()] + [e for _, e in rule_exprs()]
    rules = {
        "groups": [
            {
                "name": "parse-check",
                "rules": [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_every_metric_named_in_dashboards_and_alerts_is_exported(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    texts = [(f"{d}: {t}", e) for d, t, e in dashboard_exprs()] + rule_exprs()
    unknown = {
        (where, name)
        for where, expr in texts
        for name in METRIC_RE.findall(expr)
        if name not in exported and name not in BUILTIN
    }
    assert not unknown, sorted(unknown)


def test_filebeat_example_reads_our_json_lines() -> None:
    doc = yaml.safe_load((DEPLOY / "filebeat" / "filebeat.yml").read_text())
    (stream,) = doc["filebeat.inputs"]
    assert stream["type"] == "filestream"
    assert stream["parsers"][0]["ndjson"]["expand_keys"] is True


def test_resilience_and_security_metrics_have_panels() -> None:
    """Each of these metrics is shown by a dashboard panel, not only used by an alert rule."""
    shown = {name for _, _, expr in dashboard_exprs() for name in METRIC_RE.findall(expr)}
    wanted = {
        "callannotate_circuit_breakers",
        "callannotate_circuit_breaker_transitions_total",
        "callannotate_webhook_deliveries_total",
        "callannotate_email_deliveries_total",
        "callannotate_auth_failures_total",
        "callannotate_rate_limit_rejections_total",
        "callannotate_contacts_sync_total",
        "callannotate_events_dropped_total",
    }
    assert wanted <= shown, wanted - shown
