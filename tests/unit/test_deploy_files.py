"""Deployment files: docker-compose.yml and the Kubernetes manifests parse, reference files
that exist, and carry a pipeline configuration that passes `config validate`."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core.settings.loading import interpolate, load_settings

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_mounts_and_build_contexts_exist() -> None:
    services = compose()["services"]
    assert {"source-postgres", "target-postgres", "kafka", "connect", "pipeline", "prometheus", "grafana"} <= set(
        services
    )
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


def test_compose_pipeline_config_validates(tmp_path: Path) -> None:
    svc = compose()["services"]["pipeline"]
    mount = next(v for v in svc["volumes"] if v.endswith(":ro") and "pipeline.yaml" in v)
    host, container = mount.split(":")[:2]
    assert svc["environment"]["CDC_CONFIG"] == container
    settings = load_settings(REPO / host, {"SOURCE_PASSWORD": "x", "TARGET_PASSWORD": "y"})
    assert settings.pipelines[0].target.url.startswith("postgresql://")
    assert settings.metrics.port == 9108


def test_dockerfile_is_non_root_with_healthcheck() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text
    assert "/healthz" in text
    for copied in ("pipeline", "connectors", "sinks", "constraints.txt", "pyproject.toml"):
        assert copied in text
        assert (REPO / copied).exists()


def test_kubernetes_manifests(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "cdc-pipeline.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"ConfigMap", "Deployment", "Service"} <= set(kinds)
    config_text = kinds["ConfigMap"]["data"]["pipeline.yaml"]
    cfg = tmp_path / "pipeline.yaml"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("source-password", "target-password"):
        (secrets / name).write_text("s3cret")
    cfg.write_text(interpolate(config_text, {}).replace("/etc/cdc-pipeline/secrets", str(secrets)))
    settings = load_settings(cfg, {})
    pod = kinds["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert port == settings.metrics.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    secret_items = {i["path"] for v in pod["spec"]["volumes"] if "secret" in v for i in v["secret"]["items"]}
    assert secret_items == {"source-password", "target-password"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["CDC_CONFIG"] == mount["mountPath"]
    assert "password:" not in config_text  # secrets come from files, never from the ConfigMap
