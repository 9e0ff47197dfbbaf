"""The Grafana dashboard and its provisioning files: every PromQL expression references only
metrics that pipeline/core/metrics.py defines, parses as PromQL (promtool), and the panels the
issue asks for are there; the control-plane stat names the active replica and is red when none
or more than one is active (its query evaluated by promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "cdc-pipeline.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "atop"}
)
_AGGREGATION_MODIFIERS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w$.:])[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords,
    label names (inside ``{}`` or ``by (...)``), string contents, durations or Grafana
    variables (``$x``). ``label_values(metric, label)`` yields ``metric``."""
    lv = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if lv:
        return {lv.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _AGGREGATION_MODIFIERS.sub("", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        token = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or token in _KEYWORDS:
            continue
        if token.lower() in ("inf", "nan"):
            continue
        names.add(token)
    return names


def exported_series() -> set[str]:
    """Every series name the service exports (histograms as _bucket/_sum/_count)."""
    return {name for info in metrics.catalogue() for name in metrics.series_names(info)}


def _panels(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        out.append(node)
        out.extend(_panels(node.get("panels", [])))
    return out


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(where, expr)`` of every panel target and every query variable."""
    data = dashboard()
    found: list[tuple[str, str]] = []
    for panel in _panels(data["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found.append((f"variable {var['name']}", query))
    return found


# --------------------------------------------------------------------------- the extractor itself


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("cdc_up", {"cdc_up"}),
        ('cdc_ready{pipeline=~"$pipeline"} == 0', {"cdc_ready"}),
        (
            "histogram_quantile(0.99, sum by (le, pipeline) "
            '(rate(cdc_commit_to_apply_seconds_bucket{a="b"}[$__rate_interval])))',
            {"cdc_commit_to_apply_seconds_bucket"},
        ),
        ("sum without (instance) (rate(x_total[5m] offset 1h)) / on(job) group_left(foo) y", {"x_total", "y"}),
        ('a{s="by (x) z"} > 1e3 and b unless c or d', {"a", "b", "c", "d"}),
        ("label_values(cdc_replication_slot_exists, source)", {"cdc_replication_slot_exists"}),
        ("max by (source) (m * 2 or n * 3) > bool +Inf", {"m", "n"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_references_only_exported_metrics() -> None:
    exported = exported_series()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    unknown = {
        f"{where}: {name}" for where, expr in exprs for name in promql_metric_names(expr) if name not in exported
    }
    assert not unknown, "metrics not defined in pipeline/core/metrics.py:\n" + "\n".join(sorted(unknown))
    for where, expr in exprs:
        assert promql_metric_names(expr), f"{where} selects no metric: {expr}"


def test_dashboard_covers_the_issue() -> None:
    used = {name for _, expr in dashboard_exprs() for name in promql_metric_names(expr)}
    required = {
        "cdc_replication_slot_wal_retained_bytes",
        "cdc_replication_slot_bytes_behind",
        "cdc_replication_slot_seconds_until_lost",
        "cdc_replication_slot_wal_status",
        "cdc_heartbeat_age_seconds",
        "cdc_consumer_lag_messages",
        "cdc_consumer_lag_seconds",
        "cdc_commit_to_apply_seconds_bucket",
        "cdc_events_applied_total",
        "cdc_dlq_messages_total",
        "cdc_connector_state",
        "cdc_connector_task_state",
    }
    assert required <= used, required - used
    titles = " ".join(p["title"].lower() for p in _panels(dashboard()["panels"]))
    for words in ("p50", "p99", "by table", "time to slot loss", "heartbeat", "wal_status"):
        assert words in titles


def test_dashboard_structure() -> None:
    data = dashboard()
    assert data["uid"] == "cdc-pipeline"
    panels = _panels(data["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel.get("description"), f"panel {panel['title']!r} needs a description"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    # every $variable used in an expression is defined (Grafana's own $__ variables aside)
    used = {v for _, e in dashboard_exprs() for v in re.findall(r"\$(\w+)", e) if not v.startswith("__")}
    assert used <= set(variables), used - set(variables)


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    """Each expression (Grafana variables replaced) as a recording rule through `promtool check rules`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install -y prometheus (see deploy/local/install-system-packages.sh)")
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue
        concrete = expr.replace("$__rate_interval", "5m").replace("$source", ".*").replace("$pipeline", ".*")
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _threshold_color(steps: list[dict[str, Any]], value: float) -> str:
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return str(color)


def test_control_plane_active_replica_panel(tmp_path: Path) -> None:
    """The stat shows one sample per active replica (legend: the replica) valued by how many are
    active in its lease, or a 'none' sample valued 0: green only at exactly 1."""
    (panel,) = [p for p in _panels(dashboard()["panels"]) if p["title"] == "Control plane: active replica"]
    assert panel["type"] == "stat" and panel["options"]["colorMode"] == "background"
    (target,) = panel["targets"]
    assert target["legendFormat"] == "{{replica}}"
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [_threshold_color(steps, v) for v in (0, 1, 2, 3)] == ["red", "green", "red", "red"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install -y prometheus (see deploy/local/install-system-packages.sh)")
    rules = {"groups": [{"name": "g", "rules": [{"record": "stat", "expr": target["expr"]}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    replica = 'cdc_control_active{{lease="app",replica="{0}",instance="{0}:9108"}}'
    cases = {
        "one active, one standby": ([(replica.format("c0"), "1x3"), (replica.format("c1"), "0x3")], {"c0": 1}),
        "split brain": ([(replica.format("c0"), "1x3"), (replica.format("c1"), "1x3")], {"c0": 2, "c1": 2}),
        "standbys only": ([(replica.format("c0"), "0x3"), (replica.format("c1"), "0x3")], {"none": 0}),
        "no control replica scraped": ([('up{instance="w1:9108"}', "1x3")], {"none": 0}),
    }
    tests = []
    for name, (series, expected) in cases.items():
        lease = "" if name == "no control replica scraped" else 'lease="app",'
        samples = [{"labels": f'stat{{{lease}replica="{r}"}}', "value": v} for r, v in expected.items()]
        tests.append(
            {
                "name": name,
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [{"expr": "stat", "eval_time": "2m", "exp_samples": samples}],
            }
        )
        colors = {_threshold_color(steps, v) for v in expected.values()}
        assert colors == ({"green"} if name == "one active, one standby" else {"red"}), name
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- provisioning


def test_provisioning_files() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "cdc-pipeline.yml").read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["url"]


# --------------------------------------------------------------------------- on-call row, verification, snapshots


def _panel(title: str) -> dict[str, Any]:
    (panel,) = [p for p in _panels(dashboard()["panels"]) if p["title"] == title]
    return panel


def _promtool_eval(
    tmp_path: Path, expr: str, cases: dict[str, tuple[list[tuple[str, str]], list[tuple[str, float]]]]
) -> None:
    """Evaluate ``expr`` (Grafana variables replaced) at 10m of each case: input series
    ``(series, values)`` -> expected ``(labels, value)`` samples, through `promtool test rules`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install -y prometheus (see deploy/local/install-system-packages.sh)")
    concrete = expr.replace("$__rate_interval", "5m").replace("$source", ".*").replace("$pipeline", ".*")
    rules = {"groups": [{"name": "g", "rules": [{"record": "panel", "expr": concrete}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = [
        {
            "name": name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [
                {
                    "expr": "panel",
                    "eval_time": "10m",
                    "exp_samples": [{"labels": f"panel{labels}", "value": value} for labels, value in expected],
                }
            ],
        }
        for name, (series, expected) in cases.items()
    ]
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _mapped(panel: dict[str, Any], value: float) -> tuple[str, str] | None:
    """``(text, color)`` of the first range/value mapping that matches ``value``, else None."""
    for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
        options = mapping["options"]
        if mapping["type"] == "range" and options["from"] <= value <= options["to"]:
            return options["result"]["text"], options["result"].get("color", "")
        if mapping["type"] == "value" and str(int(value)) in options:
            return options[str(int(value))]["text"], options[str(int(value))].get("color", "")
    return None


def test_first_row_is_what_on_call_reads_first() -> None:
    """Issue 22: heartbeat lag per pipeline, the cutover gate, time to slot loss, DLQ rate and
    apply rate, as stats right below the first row header."""
    panels = dashboard()["panels"]
    assert panels[0]["type"] == "row" and panels[0]["title"] == "On call"
    first = [p for p in panels if p["type"] != "row" and p["gridPos"]["y"] == panels[0]["gridPos"]["y"] + 1]
    expected = {
        "Heartbeat lag": "cdc_heartbeat_age_seconds",
        "Cutover gate": "cdc_cutover_ready",
        "Time to slot loss": "cdc_replication_slot_seconds_until_lost",
        "DLQ rate": "cdc_dlq_messages_total",
        "Apply rate": "cdc_events_applied_total",
    }
    assert [p["title"] for p in sorted(first, key=lambda p: p["gridPos"]["x"])] == list(expected)
    for panel in first:
        assert panel["type"] == "stat", panel["title"]
        names = {n for t in panel["targets"] for n in promql_metric_names(t["expr"])}
        assert expected[panel["title"]] in names, panel["title"]
    assert "pipeline" in first[0]["targets"][0]["expr"] and first[0]["targets"][0]["legendFormat"] == "{{pipeline}}"


def test_counter_panels_show_zero_not_no_data() -> None:
    for panel in _panels(dashboard()["panels"]):
        if any("_total" in t["expr"] for t in panel.get("targets", [])):
            assert panel["fieldConfig"]["defaults"].get("noValue") == "0", panel["title"]


def test_rate_stats_show_zero_per_pipeline_without_traffic(tmp_path: Path) -> None:
    """With no dead letter and nothing applied yet, the stats show 0 for each running pipeline
    (from cdc_ready), not "No data"; with traffic, the per-minute / per-second rate."""
    ready = [
        ('cdc_ready{pipeline="a",instance="w1:9108"}', "1x10"),
        ('cdc_ready{pipeline="b",instance="w2:9108"}', "1x10"),
    ]
    dlq = _panel("DLQ rate")["targets"][0]["expr"]
    _promtool_eval(
        tmp_path,
        dlq,
        {
            "no dead letters": (ready, [('{pipeline="a"}', 0), ('{pipeline="b"}', 0)]),
            "two a minute in a": (
                [*ready, ('cdc_dlq_messages_total{pipeline="a",error_class="X",instance="w1:9108"}', "0+2x10")],
                [('{pipeline="a"}', 2), ('{pipeline="b"}', 0)],
            ),
        },
    )
    applied = _panel("Apply rate")["targets"][0]["expr"]
    _promtool_eval(
        tmp_path,
        applied,
        {
            "idle": (ready, [('{pipeline="a"}', 0), ('{pipeline="b"}', 0)]),
            "one a second in b": (
                [*ready, ('cdc_events_applied_total{pipeline="b",table="t",op="c",instance="w2:9108"}', "0+60x10")],
                [('{pipeline="a"}', 0), ('{pipeline="b"}', 1)],
            ),
        },
    )


def test_time_to_slot_loss_shows_unlimited_retention_in_a_warning_colour(tmp_path: Path) -> None:
    """Unlimited retention (max_slot_wal_keep_size = -1) is a risk, not "no risk": the stat maps
    it to orange; a limited slot without WAL traffic (+Inf) is green; 30 minutes is red."""
    for title in ("Time to slot loss",):
        for panel in [p for p in _panels(dashboard()["panels"]) if p["title"] == title]:
            expr = panel["targets"][0]["expr"]
            _promtool_eval(
                tmp_path,
                expr,
                {
                    "limited, 30 minutes left": (
                        [
                            ('cdc_replication_slot_seconds_until_lost{source="app",slot="s1"}', "1800x10"),
                            ('cdc_source_slot_wal_unlimited{source="app"}', "0x10"),
                        ],
                        [('{source="app",slot="s1"}', 1800)],
                    ),
                    "unlimited": (
                        [
                            ('cdc_replication_slot_seconds_until_lost{source="app",slot="s1"}', " ".join(["Inf"] * 11)),
                            ('cdc_source_slot_wal_unlimited{source="app"}', "1x10"),
                        ],
                        [('{source="app",slot="s1"}', -1)],
                    ),
                    "limited, no WAL written": (
                        [
                            ('cdc_replication_slot_seconds_until_lost{source="app",slot="s1"}', " ".join(["Inf"] * 11)),
                            ('cdc_source_slot_wal_unlimited{source="app"}', "0x10"),
                        ],
                        [('{source="app",slot="s1"}', 1e9)],
                    ),
                },
            )
            assert _mapped(panel, -1) == ("UNLIMITED retention", "orange")
            assert _mapped(panel, 1e9) == ("no loss expected", "green")
            assert _mapped(panel, 1800) is None
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert _threshold_color(steps, 1800) == "red"


def test_verification_and_snapshot_panels() -> None:
    verification = _panel("Verification result")
    assert promql_metric_names(verification["targets"][0]["expr"]) == {"cdc_verify_ok"}
    assert _mapped(verification, 0) == ("MISMATCH", "red") and _mapped(verification, 1) == ("match", "green")
    since = _panel("Since last verification")
    assert promql_metric_names(since["targets"][0]["expr"]) == {"cdc_verify_last_run_timestamp_seconds"}
    assert since["fieldConfig"]["defaults"]["unit"] == "s"
    progress = _panel("Snapshot progress")
    assert promql_metric_names(progress["targets"][0]["expr"]) == {"cdc_snapshot_progress_ratio"}
    assert progress["fieldConfig"]["defaults"]["unit"] == "percentunit"
    state = _panel("Snapshot state")
    assert promql_metric_names(state["targets"][0]["expr"]) == {"cdc_snapshot_table_state"}
    assert ("failed", "red") in {_mapped(state, v) for v in range(1, 8)}
    used = {n for _, e in dashboard_exprs() for n in promql_metric_names(e)}
    assert {"cdc_verify_mismatched_chunks", "cdc_verify_rows", "cdc_snapshot_rows", "cdc_snapshot_requests"} <= used


# --------------------------------------------------------------------------- layout and the cutover row


def test_panels_do_not_overlap() -> None:
    """No two panels (rows included) share a grid cell."""
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboard()["panels"]):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r} at {(x, y)}"
                taken[(x, y)] = panel["title"]


def cutover_phases() -> list[str]:
    """The phases of ``cdc_cutover_phase`` in order, from its documentation in pipeline/core/metrics.py."""
    listed = re.search(r"\(([a-z_, ]+)\)", metrics.CUTOVER_PHASE._documentation)
    assert listed, metrics.CUTOVER_PHASE._documentation
    return [p.strip() for p in listed.group(1).split(",")]


def _row(title: str) -> list[dict[str, Any]]:
    """The panels below row ``title`` down to the next row (rows are not collapsed here)."""
    panels = dashboard()["panels"]
    (start,) = [i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title]
    found: list[dict[str, Any]] = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        found.append(panel)
    return found


def test_cutover_row_shows_gate_phase_and_write_pause() -> None:
    row = _row("Cutover")
    used = {n for p in row for t in p["targets"] for n in promql_metric_names(t["expr"])}
    assert used >= {
        "cdc_cutover_lag_ok",
        "cdc_cutover_ready",
        "cdc_cutover_phase",
        "cdc_cutover_write_pause_seconds",
        "cdc_cutover_phase_duration_seconds",
        "cdc_heartbeat_age_seconds",
    }
    lag = _panel("Cutover lag vs the 5 s gate")
    steps = lag["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [_threshold_color(steps, v) for v in (4.9, 5)] == ["green", "red"]
    pause = _panel("Write pause (last cutover)")
    assert pause["fieldConfig"]["defaults"]["unit"] == "s"
    steps = pause["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [_threshold_color(steps, v) for v in (9, 29, 30)] == ["green", "orange", "red"]
    gate = _panel("Cutover: lag gate and readiness")
    assert _mapped(gate, 0) == ("closed", "orange") and _mapped(gate, 1) == ("OPEN", "green")


def test_cutover_lag_panel_is_the_recorded_lag() -> None:
    """The panel computes what the recording rule cdc:cutover_lag_seconds records (so it works on
    a Prometheus without our rules), filtered by the pipeline variable."""
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    (record,) = [r["expr"] for g in groups for r in g["rules"] if r.get("record") == "cdc:cutover_lag_seconds"]
    (target,) = _panel("Cutover lag vs the 5 s gate")["targets"]
    assert target["expr"].replace('{pipeline=~"$pipeline"}', "") == record


def test_cutover_phase_timeline_names_every_phase(tmp_path: Path) -> None:
    """The state timeline encodes each phase as its index in the documented order, and maps
    every index back to the phase; the paused phases are red."""
    phases = cutover_phases()
    panel = _panel("Cutover phase")
    assert [(_mapped(panel, i) or ("", ""))[0] for i in range(len(phases))] == phases
    for phase in phases[phases.index("fenced") : phases.index("done")]:
        assert _mapped(panel, phases.index(phase)) == (phase, "red"), phase
    (target,) = panel["targets"]

    def current(pipeline: str, phase: str) -> list[tuple[str, str]]:
        return [
            (
                f'cdc_cutover_phase{{pipeline="{pipeline}",phase="{p}",instance="control-0:9108"}}',
                f"{int(p == phase)}x10",
            )
            for p in phases
        ]

    _promtool_eval(
        tmp_path,
        target["expr"],
        {
            "fenced and done": (
                current("a", "fenced") + current("b", "done"),
                [('{pipeline="a"}', phases.index("fenced")), ('{pipeline="b"}', phases.index("done"))],
            ),
            "idle": (current("a", "idle"), [('{pipeline="a"}', 0)]),
        },
    )
