"""Prometheus alert and recording rules (deploy/prometheus): `promtool test rules` passes, every
alert has a firing and a non-firing case and every record an expression test, the rules only use
exported metrics (and the records before them), each alert has a runbook section, and the rule
tests do catch a broken rule. Each rule reads one plane's metrics, and the
rules on control-plane metrics aggregate `instance` away (one alert whichever replica exports
the series). promtool missing is a failure, not a skip (`apt-get install -y prometheus`;
`make setup` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core import metrics
from tests.unit.test_dashboard import cutover_phases, exported_series, promql_metric_names

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
DOC = REPO / "README.md"
TEST_FILES = ("alerts_test.yml", "cutover_test.yml")  # promtool rule tests, all of alerts.yml

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
    "ControlPlaneNoActiveReplica",
    "ControlPlaneSplitBrain",
    "VerificationFailed",
    "VerificationStale",
    "SnapshotFailed",
    "CutoverStuck",
    "CutoverWritePauseAboveBound",
    "CutoverAborted",
    "CutoverRollbackWindowRetainsWal",
    "CutoverLagGateLost",
}
REQUIRED_RECORDS = {"cdc:cutover_lag_seconds", "cdc:cutover_gate_ok", "cdc:cutover_gate_held"}
PROMETHEUS_OWN = {"up"}  # series Prometheus itself records per scrape target

# Which process exports a metric. Workers (`cdc-pipeline run`) export what they consume and
# apply; the control plane (`cdc-pipeline control`) exports the source-level series from its
# active replica and cdc_control_* from every replica; both export cdc_up.
WORKER_METRICS = {
    "cdc_ready",
    "cdc_schema_changes_total",
    "cdc_in_backoff",
    "cdc_assigned_partitions",
    "cdc_messages_consumed_total",
    "cdc_messages_skipped_total",
    "cdc_events_applied_total",
    "cdc_events_stale_total",
    "cdc_rows_written_total",
    "cdc_batches_total",
    "cdc_batch_messages",
    "cdc_batch_duration_seconds",
    "cdc_commit_to_apply_seconds",
    "cdc_last_applied_source_timestamp_seconds",
    "cdc_retries_total",
    "cdc_dlq_messages_total",
    "cdc_consumer_lag_messages",
    "cdc_consumer_lag_seconds",
}
CONTROL_PREFIXES = (
    "cdc_control_",
    "cdc_monitor_",
    "cdc_source_",
    "cdc_replication_slot_",
    "cdc_publication_",
    "cdc_heartbeat_",
    "cdc_connector_",
    "cdc_snapshot_",
    "cdc_verify_",
    "cdc_cutover_",
    "cdc_bulk_load_",
)
BOTH_PLANES = {"cdc_up"}
_AGGREGATION_BY = re.compile(r"\b(?:sum|min|max|avg|count)\s+by\s*\(([^)]*)\)\s*$")


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


def all_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, alerting and recording, in evaluation order."""
    doc = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rules() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in all_rules() if "alert" in rule]


def records() -> dict[str, str]:
    """Recorded series name -> its expression."""
    return {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}


def rule_tests() -> list[dict[str, Any]]:
    """The test cases of every promtool test file."""
    cases: list[dict[str, Any]] = []
    for name in TEST_FILES:
        doc = yaml.safe_load((PROM / name).read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["alerts.yml"], name
        cases.extend(doc["tests"])
    return cases


def test_promtool_rule_tests_pass() -> None:
    proc = run("test", "rules", *TEST_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("SUCCESS") == len(TEST_FILES)


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
        assert rule["annotations"]["runbook_url"] == runbook_url(rule["alert"])


def runbook_url(alert: str) -> str:
    """The runbook link of every rule: the external label ``runbook_base_url`` (README.md when
    unset) and the alert's README anchor."""
    base = "{{ with $externalLabels.runbook_base_url }}{{ . }}{{ else }}README.md{{ end }}"
    return f"{base}#{alert.lower()}"


def test_migration_lag_critical_is_replication_lag_above_60_seconds() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "MigrationLagCritical"]
    first = " ".join(rule["expr"].split()).split(" unless ", 1)[0]
    assert first == "max by (pipeline, source) (cdc_heartbeat_age_seconds) > 60"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in rule_tests():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), f"no firing case: {names - firing}"
    assert names - quiet == set(), f"no non-firing case: {names - quiet}"
    assert (firing | quiet) <= names, "tests name alerts that do not exist"


def test_every_record_has_an_expression_test_with_samples() -> None:
    tested = {
        check["expr"] for case in rule_tests() for check in case.get("promql_expr_test", []) if check.get("exp_samples")
    }
    assert set(records()) >= REQUIRED_RECORDS, REQUIRED_RECORDS - set(records())
    assert set(records()) <= tested, set(records()) - tested


def test_record_names_follow_the_level_metric_operations_convention() -> None:
    """https://prometheus.io/docs/practices/rules/#naming: ``level:metric:operations``; ours are
    all ``cdc:<name>``, never a name a process exports."""
    for name in records():
        assert re.fullmatch(r"cdc:[a-z][a-z0-9_]*(:[a-z0-9_]+)?", name), name
        assert name not in exported_series(), name


def test_rules_use_only_exported_metrics() -> None:
    """Alerts and records select exported series, or series recorded by an earlier rule."""
    allowed = exported_series() | PROMETHEUS_OWN
    for rule in all_rules():
        what = rule.get("alert") or rule["record"]
        names = promql_metric_names(rule["expr"])
        assert names, what
        assert names <= allowed, f"{what}: {names - allowed}"
        if "record" in rule:
            allowed.add(rule["record"])


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


def plane_of(series: str) -> str:
    """``worker``, ``control`` or ``both`` for an exported series name (histograms also by
    their ``_bucket``/``_sum``/``_count`` series), or a recorded one (the plane of what it reads)."""
    recorded = records()
    if series in recorded:
        planes = {plane_of(n) for n in promql_metric_names(recorded[series]) - PROMETHEUS_OWN} - {"both"}
        return planes.pop() if len(planes) == 1 else "both"
    histogram = re.sub(r"_(bucket|sum|count)$", "", series)
    if series in WORKER_METRICS or histogram in WORKER_METRICS:
        return "worker"
    if series in BOTH_PLANES:
        return "both"
    if series.startswith(CONTROL_PREFIXES):
        return "control"
    raise AssertionError(f"{series}: say which plane exports it (WORKER_METRICS or CONTROL_PREFIXES)")


def test_every_metric_belongs_to_a_plane() -> None:
    planes = {info.name: plane_of(info.name) for info in metrics.catalogue()}
    assert set(planes) >= WORKER_METRICS, WORKER_METRICS - set(planes)
    assert planes["cdc_control_active"] == "control" and planes["cdc_in_backoff"] == "worker"


def test_each_rule_reads_one_plane() -> None:
    for rule in all_rules():
        planes = {plane_of(n) for n in promql_metric_names(rule["expr"]) - PROMETHEUS_OWN}
        assert len(planes - {"both"}) <= 1, f"{rule.get('alert') or rule['record']} mixes planes: {planes}"


def enclosing_aggregations(expr: str, position: int) -> list[str]:
    """Label lists of the ``agg by (labels) (...)`` calls whose argument encloses ``position``,
    innermost first; ``absent(...)`` counts as an aggregation with no labels."""
    opened: list[int] = []
    for i, char in enumerate(expr[:position]):
        if char == "(":
            opened.append(i)
        elif char == ")" and opened:
            opened.pop()
    found: list[str] = []
    for start in reversed(opened):
        before = expr[:start]
        match = _AGGREGATION_BY.search(before)
        if match:
            found.append(match.group(1))
        elif re.search(r"\babsent\s*$", before):
            found.append("")
    return found


def test_enclosing_aggregations() -> None:
    expr = "max by (source) (rate(m_a[5m])) == 0 or absent(m_b) or m_c and min by (a, b) (m_d)"
    assert enclosing_aggregations(expr, expr.index("m_a")) == ["source"]
    assert enclosing_aggregations(expr, expr.index("m_b")) == [""]
    assert enclosing_aggregations(expr, expr.index("m_c")) == []
    assert enclosing_aggregations(expr, expr.index("m_d")) == ["a, b"]


def test_control_plane_rules_aggregate_the_replica_away() -> None:
    """A control-plane series moves from replica to replica at each takeover (and an old
    deployment exports it from several processes): a rule that kept `instance` would fire once
    per replica and restart its `for` at every takeover. tests/unit promtool cases check the
    behaviour; this checks every rule, also future ones. A recorded series was aggregated by its
    recording rule, which this checks like an alert."""
    recorded = set(records())
    for rule in all_rules():
        what = rule.get("alert") or rule["record"]
        expr = " ".join(rule["expr"].split())
        for name in promql_metric_names(expr) - PROMETHEUS_OWN - recorded:
            if plane_of(name) != "control":
                continue
            for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr):
                aggregations = enclosing_aggregations(expr, match.start())
                assert aggregations, f"{what}: {name} is not aggregated over replicas"
                assert "instance" not in aggregations[-1], f"{what}: keeps instance"


_COUNTER_FUNCTION = re.compile(r"\b(increase|rate|irate)\s*\(\s*([a-zA-Z_:][\w:]*_total)\b")


def test_counter_rules_also_fire_on_a_series_born_above_zero() -> None:
    """A counter exists only from its first increment (and a restarted worker starts a new
    series): increase() over a series that appears at 1 is 0. Every rule on a counter must
    also select the counter's new series: ``x > 0 unless x offset <window>``."""
    counter_rules = 0
    for rule in rules():
        expr = " ".join(rule["expr"].split())
        for match in _COUNTER_FUNCTION.finditer(expr):
            counter_rules += 1
            name = match.group(2)
            window = re.search(rf"{name}\[(\w+)\]", expr)
            assert window, rule["alert"]
            born = rf"{name} > 0 unless {name} offset {window.group(1)}"
            assert born in expr, f"{rule['alert']}: {name} needs `{born}`"
    assert counter_rules >= 1


def test_rule_tests_catch_a_dlq_rule_blind_to_new_series(tmp_path: Path) -> None:
    """Without the new-series clause the first-dead-letter cases fail (issue 22, defect 4)."""
    text = (PROM / "alerts.yml").read_text(encoding="utf-8")
    clause = "\n          or sum by (pipeline, error_class) (cdc_dlq_messages_total > 0 unless cdc_dlq_messages_total offset 10m)"
    assert clause in text
    (tmp_path / "alerts.yml").write_text(text.replace(clause, ""), encoding="utf-8")
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = run("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "the first dead letter of a worker fires" in proc.stdout + proc.stderr


def test_no_rule_selects_on_the_scrape_job() -> None:
    """Scrape jobs are named differently in compose, plain Prometheus and the Prometheus
    Operator (issue 22, defect 5): no rule may depend on the ``job`` label's value."""
    for rule in rules():
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", rule["expr"]), rule["alert"]


def test_runbook_base_url_is_documented() -> None:
    """The external label that makes runbook links absolute is set (commented) in the shipped
    Prometheus configs and explained in the README's runbook section."""
    for path in (PROM / "prometheus.yml", REPO / "deploy" / "compose" / "prometheus.yml"):
        assert "runbook_base_url" in path.read_text(encoding="utf-8"), path
    runbook = DOC.read_text(encoding="utf-8").split("## Alert runbook", 1)[1].split("\n## ", 1)[0]
    assert "runbook_base_url" in runbook


# --------------------------------------------------------------------------- cutover rules


def phases_named(expr: str) -> set[str]:
    """Phases an expression selects by ``phase="..."`` or ``phase=~"a|b"``."""
    return {p for value in re.findall(r'phase=~?"([^"]*)"', expr) for p in value.split("|")}


def test_cutover_rules_name_only_known_phases() -> None:
    known = set(cutover_phases())
    assert {"fenced", "done", "aborted", "finished"} <= known
    named: set[str] = set()
    for rule in all_rules():
        found = phases_named(rule["expr"])
        assert found <= known, f"{rule.get('alert') or rule['record']}: unknown phases {found - known}"
        named |= found
    assert named, "no rule reads cdc_cutover_phase"


def test_cutover_stuck_watches_every_phase_with_writes_fenced() -> None:
    """From ``fenced`` up to (not including) ``done`` the application cannot write."""
    phases = cutover_phases()
    paused = set(phases[phases.index("fenced") : phases.index("done")])
    (rule,) = [r for r in rules() if r["alert"] == "CutoverStuck"]
    assert phases_named(rule["expr"]) == paused
    assert rule["labels"]["severity"] == "critical"


def test_cutover_gate_records_the_documented_5_seconds() -> None:
    recorded = {name: " ".join(expr.split()) for name, expr in records().items()}
    assert recorded["cdc:cutover_lag_seconds"] == "max by (pipeline) (cdc_heartbeat_age_seconds)"
    assert recorded["cdc:cutover_gate_ok"] == "cdc:cutover_lag_seconds < bool 5"
    assert recorded["cdc:cutover_gate_held"].startswith("min_over_time(cdc:cutover_gate_ok[1m])")


@pytest.mark.parametrize(
    ("old", "new", "failing_case"),
    [
        ("cdc:cutover_lag_seconds < bool 5", "cdc:cutover_lag_seconds < bool 6", 'expr: "cdc:cutover_gate_ok"'),
        (
            "max by (pipeline) (cdc_cutover_write_pause_seconds) > 30\n",
            "max by (pipeline) (cdc_cutover_write_pause_seconds) > 60\n",
            "a write pause of 42 s",
        ),
        (
            '(cdc_cutover_phase{phase="done"}) == 1\n          )\n        for: 30m',
            '(cdc_cutover_phase{phase="idle"}) == 1\n          )\n        for: 30m',
            "the forward slot of a done cutover",
        ),
        (
            '{phase=~"drained|verified|sequences_synced|reverse_started|done|finished"}) == 1\n        for: 2m',
            '{phase=~"drained"}) == 1\n        for: 2m',
            "heartbeat lag of a pipeline whose forward connector",
        ),
    ],
)
def test_cutover_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str, failing_case: str) -> None:
    """The cutover promtool tests are not vacuous: each broken rule fails its named case."""
    text = (PROM / "alerts.yml").read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    (tmp_path / "alerts.yml").write_text(text.replace(old, new), encoding="utf-8")
    shutil.copy(PROM / "cutover_test.yml", tmp_path / "cutover_test.yml")
    proc = run("test", "rules", "cutover_test.yml", cwd=tmp_path)
    assert proc.returncode != 0
    assert failing_case in proc.stdout + proc.stderr
