"""The Helm chart (deploy/helm/cdc-pipeline): `helm lint --strict` passes, its default rendering
is exactly deploy/kubernetes/ (so the plain manifests cannot drift from the chart), values for
pipelines, secrets, replicas and resources reach the objects, the config checksum follows the
configuration, and the PrometheusRule holds deploy/prometheus/alerts.yml. helm missing is a
failure, not a skip: `make tools` builds it from the Go module proxy into ~/.cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "cdc-pipeline"
KUBERNETES = REPO / "deploy" / "kubernetes"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
TOOLS = Path.home() / ".cache" / "cdc-pipeline" / "bin"


def helm() -> str:
    path = shutil.which("helm") or (str(TOOLS / "helm") if (TOOLS / "helm").is_file() else None)
    if path is None:
        pytest.fail("helm not found: run `make tools` (go install helm.sh/helm/v3/cmd/helm into ~/.cache)")
    return path


def render(*args: str) -> list[dict[str, Any]]:
    """Objects of ``helm template cdc-pipeline CHART --namespace cdc-pipeline ARGS``."""
    proc = subprocess.run(
        [helm(), "template", "cdc-pipeline", str(CHART), "--namespace", "cdc-pipeline", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_helm_lint_strict() -> None:
    proc = subprocess.run(
        [helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_plain_manifests_are_the_charts_default_rendering(tmp_path: Path) -> None:
    """deploy/kubernetes/*.yaml == deploy/helm/render-manifests.sh output; re-run it after
    editing the chart."""
    env = {**os.environ, "CDC_RENDER_OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(CHART.parent / "render-manifests.sh"), helm()],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert rendered == sorted(p.name for p in KUBERNETES.glob("*.yaml")) == ["cdc-pipeline.yaml", "monitoring.yaml"]
    for name in rendered:
        assert (tmp_path / name).read_text() == (KUBERNETES / name).read_text(), (
            f"deploy/kubernetes/{name} is stale: run deploy/helm/render-manifests.sh"
        )


def test_chart_alert_rules_are_the_prometheus_rules() -> None:
    assert (CHART / "files" / "alerts.yml").read_text() == ALERTS.read_text(), (
        "cp deploy/prometheus/alerts.yml deploy/helm/cdc-pipeline/files/alerts.yml"
    )
    (rule,) = by_kind(render(), "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_runbook_base_url_value_replaces_the_fallback() -> None:
    base = "https://git.example.com/cdc/blob/main/README.md"
    (rule,) = by_kind(render("--set", f"monitoring.runbookBaseUrl={base}"), "PrometheusRule").values()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]  # records have no links
    urls = [r["annotations"]["runbook_url"] for r in alerts]
    assert urls and all(
        u.startswith("{{ with $externalLabels.runbook_base_url }}{{ . }}{{ else }}" + base + "{{ end }}#") for u in urls
    )


def test_service_monitor_selects_both_metrics_services() -> None:
    docs = render()
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind(docs, "Service").values() if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services} == {"worker", "control"}
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "targetLabel": "component",
    } in (endpoint["relabelings"])


VALUES = """
config:
  kafka: {bootstrap_servers: "k:9092"}
  connect: {url: "http://c:8083"}
  sources:
    - {name: app, host: db, database: app, user: u, password_file: /etc/cdc-pipeline/secrets/source-password,
       tables: [public.t]}
  pipelines:
    - {name: a, source: app, target: {url: "postgresql://w@t/a", password_file: /etc/cdc-pipeline/secrets/target-password}}
    - {name: b, source: app, target: {url: "postgresql://w@t/b", password_file: /etc/cdc-pipeline/secrets/target-password}}
  metrics: {port: 9200}
secrets:
  create: true
  values: {source-password: s1, target-password: s2}
workers:
  - {name: worker-a, pipeline: a, replicas: 4, resources: {requests: {cpu: "1", memory: 1Gi}}}
  - {name: worker-b, pipeline: b, replicas: 1, resources: {requests: {cpu: 250m, memory: 256Mi}}}
control:
  replicas: 3
  resources: {requests: {cpu: 50m, memory: 64Mi}}
"""


def test_values_for_pipelines_secrets_replicas_and_resources(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    docs = render("-f", str(values))
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"cdc-pipeline-worker-a", "cdc-pipeline-worker-b", "cdc-pipeline-control"}
    for name, pipeline, replicas, cpu in (("worker-a", "a", 4, "1"), ("worker-b", "b", 1, "250m")):
        spec = deployments[f"cdc-pipeline-{name}"]["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["args"] == ["run", "--pipeline", pipeline]
        assert spec["replicas"] == replicas and container["resources"]["requests"]["cpu"] == cpu
        assert container["ports"] == [{"name": "metrics", "containerPort": 9200}]
    assert deployments["cdc-pipeline-control"]["spec"]["replicas"] == 3
    (secret,) = by_kind(docs, "Secret").values()
    assert secret["stringData"] == {"source-password": "s1", "target-password": "s2"}
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert {"cdc-pipeline-worker-a", "cdc-pipeline-worker-b", "cdc-pipeline-control"} == set(budgets)
    (config_map,) = by_kind(docs, "ConfigMap").values()
    config = yaml.safe_load(config_map["data"]["pipeline.yaml"])
    assert [p["name"] for p in config["pipelines"]] == ["a", "b"]
    assert "s1" not in config_map["data"]["pipeline.yaml"]


def test_creating_a_secret_requires_its_values(tmp_path: Path) -> None:
    proc = subprocess.run(
        [helm(), "template", "x", str(CHART), "--set", "secrets.create=true"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "secrets.values.source-password is required" in proc.stderr


def _checksums(docs: list[dict[str, Any]]) -> set[str]:
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == 3
    return {p["metadata"]["annotations"]["checksum/config"] for p in pods}


def test_config_checksum_is_the_sha256_of_pipeline_yaml_and_follows_it() -> None:
    """checksum/config = sha256 (hex) of the ConfigMap's pipeline.yaml: a configuration change
    changes every pod template, so the Deployments roll and the setup Job differs."""
    docs = render()
    (config_map,) = by_kind(docs, "ConfigMap").values()
    expected = hashlib.sha256(config_map["data"]["pipeline.yaml"].rstrip("\n").encode()).hexdigest()
    assert _checksums(docs) == {expected}
    changed = render("--set", "config.sources[0].topic_partitions=12")
    (other,) = _checksums(changed)
    assert other != expected
    assert _checksums(render("--set", "control.replicas=5")) == {expected}  # not a config change
