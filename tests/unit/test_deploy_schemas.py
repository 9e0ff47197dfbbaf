"""Schema validation of the deployment files, offline: docker-compose.yml against the Compose
Specification's JSON schema (compose-spec.json as shipped in the compose-go module, which
`docker compose` itself validates with; `make tools` copies it into ~/.cache), and every
Kubernetes object of deploy/kubernetes/ and of a non-default chart rendering against the
Kubernetes OpenAPI schemas that the kubernetes-validate package ships. The Prometheus Operator
objects (CRDs, in no such schema) are checked for the fields the operator requires."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.test_helm_chart import VALUES, render

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
COMPOSE_SCHEMA = Path.home() / ".cache" / "cdc-pipeline" / "bin" / "compose-spec.json"
KUBERNETES_VERSION = "1.33.0"  # oldest Kubernetes release still supported upstream
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def compose_validator() -> jsonschema.protocols.Validator:
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(f"{COMPOSE_SCHEMA} missing: run `make tools` (the compose-go module's schema/compose-spec.json)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator: jsonschema.protocols.Validator = jsonschema.validators.validator_for(schema)(schema)
    return validator


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_compose_schema_rejects_a_broken_file() -> None:
    """The validation is not vacuous: an unknown key and a wrong type are reported."""
    doc = copy.deepcopy(compose())
    doc["services"]["worker"]["replicas_typo"] = 2
    doc["services"]["prometheus"]["healthcheck"]["test"] = 42
    messages = [e.message for e in compose_validator().iter_errors(doc)]
    assert any("replicas_typo" in m for m in messages), messages
    assert any("42" in m for m in messages), messages


def kubernetes_docs(paths: list[Path]) -> list[dict[str, Any]]:
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def validate_kubernetes(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    return problems


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    docs = kubernetes_docs(sorted(KUBERNETES.glob("*.yaml")))
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} | CRD_KINDS
    assert validate_kubernetes(docs) == []


def test_non_default_chart_rendering_matches_the_api_schemas(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    docs = render("-f", str(values))
    assert "Secret" in {d["kind"] for d in docs}
    assert validate_kubernetes(docs) == []


def test_kubernetes_schema_rejects_a_broken_manifest() -> None:
    docs = kubernetes_docs([KUBERNETES / "cdc-pipeline.yaml"])
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["paht"] = "/healthz"
    problems = validate_kubernetes([wrong_type, unknown_field])
    assert len(problems) == 2 and "two" in problems[0] and "paht" in problems[1], problems


def test_prometheus_operator_objects() -> None:
    """monitoring.coreos.com/v1 fields the operator needs: a ServiceMonitor selector and named
    endpoint ports, PrometheusRule groups of named rules with expressions."""
    docs = kubernetes_docs([KUBERNETES / "monitoring.yaml"])
    assert sorted(d["kind"] for d in docs) == sorted(CRD_KINDS)
    for doc in docs:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["name"] and doc["metadata"]["labels"]
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"]
    assert all(isinstance(e["port"], str) and e["path"].startswith("/") for e in monitor["spec"]["endpoints"])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert r["expr"] and (r.get("alert") or r.get("record"))
