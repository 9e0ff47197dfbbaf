"""Deployment files: docker-compose.yml and the Kubernetes manifests parse, reference files
that exist, carry a pipeline configuration that passes `config validate`, and run both planes:
workers (`cdc-pipeline run`) and control-plane replicas (`cdc-pipeline control`), each probed,
scraped and given more time to stop than its bounded shutdown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.settings.loading import interpolate, load_settings
from pipeline.core.settings.root import Settings

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
# Bounded shutdown of `run` and `control` on SIGTERM, seconds: compose's stop_grace_period and
# the pods' terminationGracePeriodSeconds must exceed it, or SIGKILL cuts the shutdown short.
BOUNDED_SHUTDOWN_S = 30
PLANES = {"worker": ("run", 2, 3), "control": ("control", 2, 2)}  # command, compose and k8s replicas


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_mounts_and_build_contexts_exist() -> None:
    services = compose()["services"]
    assert {
        "source-postgres",
        "target-postgres",
        "kafka",
        "connect",
        "pipeline-setup",
        "worker",
        "control",
        "prometheus",
        "grafana",
    } <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = REPO / build["context"]
            assert context.is_dir(), name
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("./"):
                assert (REPO / host).exists(), f"{name}: {host} does not exist"


def test_compose_source_has_logical_wal_and_official_images() -> None:
    services = compose()["services"]
    assert "wal_level=logical" in services["source-postgres"]["command"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["connect"]["image"].startswith("quay.io/debezium/connect:")


@pytest.mark.parametrize("service", ["worker", "control"])
def test_compose_pipeline_config_validates(service: str) -> None:
    svc = compose()["services"][service]
    mount = next(v for v in svc["volumes"] if v.endswith(":ro") and "pipeline.yaml" in v)
    host, container = mount.split(":")[:2]
    assert svc["environment"]["CDC_CONFIG"] == container
    settings = load_settings(REPO / host, {"SOURCE_PASSWORD": "x", "TARGET_PASSWORD": "y"})
    assert settings.pipelines[0].target.url.startswith("postgresql://")
    assert settings.metrics.port == 9108


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_compose_runs_both_planes_from_one_image_and_config() -> None:
    services = compose()["services"]
    worker, control = services["worker"], services["control"]
    for name, (command, replicas, _) in PLANES.items():
        svc = services[name]
        assert svc["command"][0] == command, name
        assert svc["deploy"]["replicas"] == replicas, name
        assert _seconds(svc["stop_grace_period"]) > BOUNDED_SHUTDOWN_S, name
        assert svc["depends_on"]["pipeline-setup"] == {"condition": "service_completed_successfully"}, name
    for key in ("build", "environment", "volumes"):
        assert worker[key] == control[key] == services["pipeline-setup"][key], key
    assert "pipeline" not in services  # renamed to worker: one name per plane


def test_compose_prometheus_scrapes_both_planes() -> None:
    config = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cdc-pipeline"
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(PLANES) <= set(compose()["services"])
    settings = load_settings(
        REPO / "deploy" / "compose" / "pipeline.yaml", {"SOURCE_PASSWORD": "x", "TARGET_PASSWORD": "y"}
    )
    assert sd["port"] == settings.metrics.port
    relabel = {r["target_label"]: r["source_labels"] for r in job["relabel_configs"]}
    assert relabel["component"] == ["__meta_dns_name"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_dockerfile_is_non_root_with_healthcheck() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text
    assert "/healthz" in text
    for copied in ("pipeline", "connectors", "sinks", "constraints.txt", "pyproject.toml"):
        assert copied in text
        assert (REPO / copied).exists()


def kubernetes_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kubernetes_docs() if d["kind"] == kind}


def _kubernetes_settings(tmp_path: Path) -> Settings:
    (config_map,) = _by_kind("ConfigMap").values()
    config_text = config_map["data"]["pipeline.yaml"]
    assert "password:" not in config_text  # secrets come from files, never from the ConfigMap
    cfg = tmp_path / "pipeline.yaml"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("source-password", "target-password"):
        (secrets / name).write_text("s3cret")
    cfg.write_text(interpolate(config_text, {}).replace("/etc/cdc-pipeline/secrets", str(secrets)))
    return load_settings(cfg, {})


def test_kubernetes_manifests_hold_both_planes() -> None:
    kinds = [d["kind"] for d in kubernetes_docs()]
    assert kinds.count("ConfigMap") == 1
    deployments = _by_kind("Deployment")
    assert set(deployments) == {f"cdc-pipeline-{plane}" for plane in PLANES}
    for plane, (command, _, replicas) in PLANES.items():
        spec = deployments[f"cdc-pipeline-{plane}"]["spec"]
        assert spec["replicas"] == replicas, plane
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == plane
        assert spec["template"]["spec"]["containers"][0]["args"][0] == command, plane


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_kubernetes_deployment(plane: str, tmp_path: Path) -> None:
    settings = _kubernetes_settings(tmp_path)
    deployment = _by_kind("Deployment")[f"cdc-pipeline-{plane}"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert port == settings.metrics.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > BOUNDED_SHUTDOWN_S
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    secret_items = {i["path"] for v in volumes.values() if "secret" in v for i in v["secret"]["items"]}
    assert secret_items == {"source-password", "target-password"}
    assert volumes["config"]["configMap"]["name"] in _by_kind("ConfigMap")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["CDC_CONFIG"] == mount["mountPath"]
    args = container["args"]
    if "--pipeline" in args:
        assert args[args.index("--pipeline") + 1] in {p.name for p in settings.pipelines}


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_kubernetes_metrics_service_selects_every_pod(plane: str) -> None:
    pod = _by_kind("Deployment")[f"cdc-pipeline-{plane}"]["spec"]["template"]
    (service,) = [
        s for s in _by_kind("Service").values() if s["spec"]["selector"].get("app.kubernetes.io/component") == plane
    ]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None"  # headless: discovery sees each pod, not one address
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    (budget,) = [
        b
        for b in _by_kind("PodDisruptionBudget").values()
        if b["spec"]["selector"] == {"matchLabels": pod["metadata"]["labels"]}
    ]
    assert budget["spec"].get("maxUnavailable", 0) <= 1 and budget["spec"].get("minAvailable", 1) >= 1
