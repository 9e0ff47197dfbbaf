"""Prometheus alert rules (deploy/prometheus): `promtool test rules` passes, every alert has a
firing and a non-firing case, the rules only use exported metrics, each has a runbook
section, and the rule tests do catch a broken rule. promtool missing is a failure, not a
skip (`apt-get install -y prometheus`; `make setup` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_dashboard import exported_series, promql_metric_names

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
DOC = REPO / "README.md"

REQUIRED_ALERTS = {
    "ReplicationSlotInactive",
    "ReplicationSlotWalRetainedHigh",
    "ReplicationSlotWalUnreservedOrLost",
    "ReplicationSlotLossImminent",
    "MigrationLagCritical",
    "ConsumerLagGrowing",
    "ConnectorTaskFailed",
    "DlqReceivingMessages",
    "PipelineDown",
}
PROMETHEUS_OWN = {"up"}  # series Prometheus itself records per scrape target


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package (apt-get install -y prometheus), "
            "as deploy/local/install-system-packages.sh does"
        )
    return path


def run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_rule_tests_pass() -> None:
    proc = run("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rules_and_scrape_config_are_valid() -> None:
    proc = run("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["cdc-pipeline"]


def test_required_alerts_exist_with_severity_and_runbook() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    for rule in rules():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"README.md#{rule['alert'].lower()}"


def test_migration_lag_critical_is_replication_lag_above_60_seconds() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "MigrationLagCritical"]
    assert "cdc_heartbeat_age_seconds" in rule["expr"] and rule["expr"].strip().endswith("> 60")


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), f"no firing case: {names - firing}"
    assert names - quiet == set(), f"no non-firing case: {names - quiet}"
    assert (firing | quiet) <= names, "tests name alerts that do not exist"


def test_rules_use_only_exported_metrics() -> None:
    allowed = exported_series() | PROMETHEUS_OWN
    for rule in rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= allowed, f"{rule['alert']}: {names - allowed}"


def test_every_alert_has_a_runbook_section() -> None:
    text = DOC.read_text(encoding="utf-8")
    headings = {h.strip().lower() for h in re.findall(r"^#{2,4}\s+(\S+)\s*$", text, flags=re.MULTILINE)}
    missing = {r["alert"] for r in rules() if r["alert"].lower() not in headings}
    assert not missing, f"README.md lacks a runbook heading for {sorted(missing)}"


def test_rule_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The promtool tests are not vacuous: raising MigrationLagCritical's threshold breaks them."""
    text = (PROM / "alerts.yml").read_text(encoding="utf-8")
    broken = text.replace("(cdc_heartbeat_age_seconds) > 60", "(cdc_heartbeat_age_seconds) > 600")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = run("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "MigrationLagCritical" in proc.stdout + proc.stderr
