"""Unit tests of pipeline.control.monitor and pipeline.control.polling: the pure layer (LSNs, WAL rate, time to slot loss,
heartbeat age, partition lag, restart backoff), metric export, and the pollers with fake
connections and a fake Kafka Connect (httpx.MockTransport)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from connectors.connect_client import ConnectClient, RetryPolicy
from pipeline.cli import lag_cmd, monitor_cmd
from pipeline.control.monitor.connector import ConnectorStateMonitor, ReopeningConnectClient, RestartBackoff
from pipeline.control.monitor.export import export_slot_report
from pipeline.control.monitor.group import MonitorGroup, build_monitors
from pipeline.control.monitor.heartbeat import HeartbeatProbe, heartbeat_probes, heartbeat_target_table
from pipeline.control.monitor.slot import SlotMonitor
from pipeline.control.monitor.slot_model import (
    ServerSample,
    SlotRow,
    WalRateWindow,
    evaluate_slot,
    heartbeat_age_seconds,
    seconds_until_lost,
)
from pipeline.control.polling import PollingMonitor
from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch, TableChanges, Upsert, key_text
from pipeline.core.events import Column, Op, Position, TableId, format_lsn, parse_lsn
from pipeline.core.offsets import partition_lag
from pipeline.core.settings.models import ConnectSettings, PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError
from sinks.factory import make_target

MB = 1024 * 1024
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def source(name: str, **extra: Any) -> SourceSettings:
    return SourceSettings(name=name, database="db", user="u", tables=["public.t"], **extra)


def row(**over: Any) -> SlotRow:
    base: dict[str, Any] = {
        "slot_name": "s",
        "plugin": "pgoutput",
        "slot_type": "logical",
        "database": "db",
        "active": False,
        "restart_lsn": 1000,
        "confirmed_flush_lsn": 4000,
        "wal_status": "reserved",
        "safe_wal_size": 100 * MB,
    }
    base.update(over)
    return SlotRow(**base)


def sample(slot: SlotRow | None, *, current: int = 10_000, keep_mb: int | None = 1024) -> ServerSample:
    return ServerSample(current_lsn=current, server_now=NOW, max_slot_wal_keep_size_mb=keep_mb, slot=slot)


# --------------------------------------------------------------------------- LSNs


def test_parse_lsn_reads_both_hex_halves() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn(" 0/C515958 ") == 0xC515958


@pytest.mark.parametrize("bad", ["", "12", "/1", "1/", "G/1", "123456789/0", "1/2/3"])
def test_parse_lsn_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match=r"pg_lsn|invalid literal"):
        parse_lsn(bad)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_format_and_parse_lsn_round_trip(position: int) -> None:
    assert parse_lsn(format_lsn(position)) == position


# --------------------------------------------------------------------------- WAL rate


def test_wal_rate_needs_two_samples() -> None:
    window = WalRateWindow(60)
    assert window.rate() is None
    window.add(0.0, 1000)
    assert window.rate() is None
    window.add(10.0, 6000)
    assert window.rate() == 500.0


def test_wal_rate_slides_over_the_window() -> None:
    window = WalRateWindow(30)
    for t in range(0, 100, 10):  # 1 MB/s for 50 s, then 2 MB/s
        window.add(float(t), t * MB if t <= 50 else 50 * MB + (t - 50) * 2 * MB)
    # samples kept: t >= 90 - 30 = 60 -> 60, 70, 80, 90
    assert [s.at_s for s in window.samples] == [60.0, 70.0, 80.0, 90.0]
    assert window.rate() == pytest.approx(2 * MB)


def test_wal_rate_keeps_two_samples_when_polls_are_sparser_than_the_window() -> None:
    window = WalRateWindow(5)
    window.add(0.0, 0)
    window.add(60.0, 600)
    assert window.rate() == 10.0
    window.add(120.0, 1800)
    assert len(window.samples) == 2
    assert window.rate() == 20.0


def test_wal_rate_restarts_when_the_position_goes_back() -> None:
    window = WalRateWindow(60)
    window.add(0.0, 10_000)
    window.add(1.0, 20_000)
    window.add(2.0, 5_000)  # another server behind the address
    assert window.rate() is None
    window.add(3.0, 6_000)
    assert window.rate() == 1000.0


def test_wal_rate_same_instant_replaces_the_sample() -> None:
    window = WalRateWindow(60)
    window.add(0.0, 0)
    window.add(1.0, 100)
    window.add(1.0, 300)
    assert window.rate() == 300.0


def test_wal_rate_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        WalRateWindow(0)


# --------------------------------------------------------------------------- time to loss


@pytest.mark.parametrize(
    ("safe", "rate", "unlimited", "status", "expected"),
    [
        (100.0, 10.0, False, "reserved", 10.0),
        (100.0, 0.0, False, "reserved", math.inf),  # no WAL written: never
        (100.0, None, False, "reserved", math.nan),  # no rate yet: unknown
        (None, 10.0, False, "reserved", math.nan),  # no safe size: unknown
        (-50.0, 10.0, False, "unreserved", 0.0),  # beyond the limit already
        (0.0, 10.0, False, "unreserved", 0.0),
        (None, 10.0, False, "lost", 0.0),
        (None, 10.0, True, "reserved", math.inf),  # max_slot_wal_keep_size = -1
        (None, 10.0, True, "lost", 0.0),
        (math.inf, 10.0, False, "reserved", math.inf),
    ],
)
def test_seconds_until_lost(
    safe: float | None, rate: float | None, unlimited: bool, status: str, expected: float
) -> None:
    got = seconds_until_lost(safe, rate, unlimited=unlimited, wal_status=status)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected


def test_evaluate_slot_computes_retained_behind_and_time_to_loss() -> None:
    report = evaluate_slot("s", sample(row(), current=10_000), wal_rate=MB / 10)
    assert report.exists and not report.active
    assert report.retained_bytes == 9000
    assert report.behind_bytes == 6000
    assert report.safe_wal_size_bytes == 100 * MB
    assert report.seconds_until_lost == pytest.approx(1000.0)
    assert not report.unlimited


def test_evaluate_slot_unlimited_retention_is_infinite() -> None:
    report = evaluate_slot("s", sample(row(safe_wal_size=None), keep_mb=-1), wal_rate=123.0)
    assert report.unlimited
    assert report.safe_wal_size_bytes == math.inf
    assert report.seconds_until_lost == math.inf


def test_evaluate_slot_before_postgresql_13_is_unlimited() -> None:
    assert evaluate_slot("s", sample(row(safe_wal_size=None), keep_mb=None), wal_rate=1.0).unlimited


def test_evaluate_slot_lost_slot() -> None:
    lost = row(wal_status="lost", restart_lsn=None, safe_wal_size=None)
    report = evaluate_slot("s", sample(lost), wal_rate=10.0)
    assert report.retained_bytes is None
    assert report.behind_bytes == 6000
    assert report.safe_wal_size_bytes == 0.0
    assert report.seconds_until_lost == 0.0


def test_evaluate_slot_missing_slot() -> None:
    report = evaluate_slot("s", sample(None), wal_rate=10.0)
    assert not report.exists
    assert report.retained_bytes is None and report.behind_bytes is None
    assert math.isnan(report.seconds_until_lost)


def test_evaluate_slot_clamps_positions_ahead_of_current() -> None:
    report = evaluate_slot("s", sample(row(restart_lsn=20_000, confirmed_flush_lsn=20_000), current=10_000), None)
    assert report.retained_bytes == 0 and report.behind_bytes == 0


def test_slot_report_to_dict_is_json_safe() -> None:
    report = evaluate_slot("s", sample(row(safe_wal_size=None), keep_mb=-1, current=(1 << 32) + 16), None)
    data = report.to_dict()
    assert data["safe_wal_size_bytes"] == "inf"
    assert data["seconds_until_lost"] == "inf"
    assert data["current_lsn"] == "1/10"
    json.dumps(data)
    missing = evaluate_slot("s", sample(None), None).to_dict()
    assert missing["seconds_until_lost"] is None
    json.dumps(missing)


# --------------------------------------------------------------------------- heartbeat, partition lag


def test_heartbeat_age_is_source_now_minus_applied_ts() -> None:
    assert heartbeat_age_seconds(NOW - timedelta(seconds=30), NOW) == 30.0
    assert heartbeat_age_seconds(NOW + timedelta(seconds=1), NOW) == 0.0  # never negative


def test_heartbeat_age_grows_while_nothing_is_applied() -> None:
    applied = NOW
    ages = [heartbeat_age_seconds(applied, NOW + timedelta(seconds=s)) for s in (0, 10, 20)]
    assert ages == [0.0, 10.0, 20.0]


def test_heartbeat_age_needs_aware_datetimes() -> None:
    with pytest.raises(TypeError):
        heartbeat_age_seconds(datetime(2025, 1, 1), NOW)


@pytest.mark.parametrize(
    ("low", "high", "committed", "lag"),
    [
        (0, 10, 4, 6),
        (0, 10, None, 10),  # nothing stored: the runner reads from the beginning
        (5, 10, None, 5),
        (5, 10, 2, 5),  # committed offset deleted by retention
        (0, 10, 10, 0),
        (0, 10, 12, 0),  # never negative
        (0, 0, None, 0),
    ],
)
def test_partition_lag(low: int, high: int, committed: int | None, lag: int) -> None:
    assert partition_lag(low, high, committed) == lag


# --------------------------------------------------------------------------- restart backoff


def test_restart_backoff_doubles_up_to_the_maximum_and_resets_when_healthy() -> None:
    b = RestartBackoff(initial_s=10, max_s=35, reset_after_s=100)
    assert b.ready(0)
    assert b.record_restart(0) == 10
    assert not b.ready(9) and b.ready(10)
    assert b.record_restart(10) == 20
    assert b.record_restart(30) == 35
    assert b.record_restart(65) == 35
    assert b.attempts == 4
    b.record_healthy(100)
    assert b.attempts == 4 and not b.ready(99.9)
    b.record_healthy(200)
    assert b.attempts == 0 and b.ready(200)


def test_restart_backoff_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        RestartBackoff(initial_s=10, max_s=5)


# --------------------------------------------------------------------------- export


def test_export_slot_report_sets_and_clears_series() -> None:
    src, slot = "unit_export", "s"
    export_slot_report(src, evaluate_slot(slot, sample(row(active=True, wal_status="extended")), MB / 1.0))
    assert value("cdc_replication_slot_exists", source=src, slot=slot) == 1
    assert value("cdc_replication_slot_active", source=src, slot=slot) == 1
    assert value("cdc_replication_slot_wal_retained_bytes", source=src, slot=slot) == 9000
    assert value("cdc_replication_slot_bytes_behind", source=src, slot=slot) == 6000
    assert value("cdc_replication_slot_wal_status", source=src, slot=slot, status="extended") == 1
    assert value("cdc_replication_slot_wal_status", source=src, slot=slot, status="reserved") == 0
    assert value("cdc_replication_slot_seconds_until_lost", source=src, slot=slot) == pytest.approx(100.0)
    assert value("cdc_source_wal_rate_bytes_per_second", source=src) == MB
    assert value("cdc_source_slot_wal_unlimited", source=src) == 0
    export_slot_report(src, evaluate_slot(slot, sample(None), None))
    assert value("cdc_replication_slot_exists", source=src, slot=slot) == 0
    assert value("cdc_replication_slot_active", source=src, slot=slot) is None
    assert value("cdc_replication_slot_wal_status", source=src, slot=slot, status="extended") is None


def test_export_slot_report_postgresql_17_columns() -> None:
    src, slot = "unit_pg17", "s"
    since = NOW - timedelta(minutes=5)
    lost = row(
        wal_status="lost", restart_lsn=None, safe_wal_size=None, inactive_since=since, invalidation_reason="wal_removed"
    )
    export_slot_report(src, evaluate_slot(slot, sample(lost), None))
    assert value("cdc_replication_slot_inactive_since_timestamp_seconds", source=src, slot=slot) == since.timestamp()
    assert value("cdc_replication_slot_invalidated", source=src, slot=slot, reason="wal_removed") == 1
    assert value("cdc_replication_slot_wal_retained_bytes", source=src, slot=slot) is None
    previous = evaluate_slot(slot, sample(lost), None)
    export_slot_report(src, evaluate_slot(slot, sample(None), None), previous)  # dropped
    assert value("cdc_replication_slot_invalidated", source=src, slot=slot, reason="wal_removed") is None
    assert value("cdc_replication_slot_exists", source=src, slot=slot) == 0


def test_slot_stats_collector_exports_counters() -> None:
    metrics.SLOT_STATS.update("unit_stats", "s", {"spill_txns": 3, "total_bytes": 1234, "stats_reset": 9})
    assert value("cdc_replication_slot_spill_txns_total", source="unit_stats", slot="s") == 3
    assert value("cdc_replication_slot_decoded_bytes_total", source="unit_stats", slot="s") == 1234
    metrics.SLOT_STATS.forget("unit_stats", "s")
    assert value("cdc_replication_slot_spill_txns_total", source="unit_stats", slot="s") is None


# --------------------------------------------------------------------------- pollers


def refused() -> Any:
    raise psycopg.OperationalError("connection refused")


def test_slot_monitor_poll_never_raises_for_database_errors() -> None:
    mon = SlotMonitor(source("unit_refused"), interval_s=1, connect=refused)
    mon.poll_once()
    mon.poll_once()
    assert not mon.healthy
    assert "connection refused" in (mon.last_error or "")
    assert value("cdc_monitor_up", monitor="slot", source="unit_refused") == 0
    assert value("cdc_monitor_poll_errors_total", monitor="slot", source="unit_refused", check="slot") == 2


class Exploding(PollingMonitor):
    kind = "unit"

    def __init__(self) -> None:
        super().__init__("boom", 0.01)
        self.closed = False

    def poll_once(self) -> None:
        raise RuntimeError("bug in a poll")

    def close(self) -> None:
        self.closed = True


def test_polling_thread_survives_exceptions_and_stops() -> None:
    mon = Exploding()
    mon.start()
    deadline = time.monotonic() + 5
    while mon.polls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mon.polls >= 3
    mon.stop(5)
    assert mon.closed
    assert "bug in a poll" in (mon.last_error or "")
    assert (value("cdc_monitor_poll_errors_total", monitor="unit", source="boom", check="poll") or 0) >= 3


def test_stop_without_start_closes() -> None:
    mon = Exploding()
    mon.stop()
    assert mon.closed


def test_polling_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlotMonitor(source("unit_bad"), interval_s=0)


def test_monitor_group_readiness() -> None:
    mon = SlotMonitor(source("unit_ready"), interval_s=1, connect=refused)
    group = MonitorGroup([mon])
    ok, detail = group.ready()
    assert not ok and detail["monitors"] == {"slot:unit_ready": "not polled yet"}
    mon._guarded_poll()
    ok, detail = group.ready()
    assert not ok and "connection refused" in str(detail)
    assert MonitorGroup().ready()[0] is False


# --------------------------------------------------------------------------- connector monitor


class FakeConnect:
    """A Kafka Connect REST API: connector name -> status body (or an HTTP status)."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any] | int] = {}
        self.restarts: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        name = parts[1]
        if request.method == "POST" and parts[-1] == "restart":
            self.restarts.append(name)
            return httpx.Response(204)
        body = self.bodies.get(name, 404)
        if isinstance(body, int):
            return httpx.Response(body, json={"message": f"HTTP {body}"})
        return httpx.Response(200, json=body)

    def client(self) -> ConnectClient:
        return ConnectClient(
            ConnectSettings(url="http://connect.test"),
            transport=httpx.MockTransport(self.handler),
            retry=RetryPolicy(max_attempts=1),
            sleep=lambda _s: None,
        )


def status_body(name: str, state: str, *task_states: str) -> dict[str, Any]:
    return {
        "name": name,
        "connector": {"state": state, "worker_id": "w:8083"},
        "tasks": [
            {"id": i, "state": s, "worker_id": "w:8083", **({"trace": "boom\n at x"} if s == "FAILED" else {})}
            for i, s in enumerate(task_states)
        ],
        "type": "source",
    }


def connector_monitor(fake: FakeConnect, src: SourceSettings, clock: Callable[[], float]) -> ConnectorStateMonitor:
    return ConnectorStateMonitor(
        [src], fake.client(), interval_s=1, backoff=lambda: RestartBackoff(10, 40, 100), clock=clock
    )


def test_connector_monitor_exports_states_and_restarts_failed_tasks_with_backoff() -> None:
    fake = FakeConnect()
    src = source("unit_conn")
    name = src.resolved_connector_name
    now = [0.0]
    mon = connector_monitor(fake, src, lambda: now[0])
    labels = {"source": src.name, "connector": name}

    fake.bodies[name] = status_body(name, "RUNNING", "FAILED")
    mon.poll_once()
    assert mon.healthy
    assert value("cdc_connector_state", state="RUNNING", **labels) == 1
    assert value("cdc_connector_task_state", task="0", state="FAILED", **labels) == 1
    assert value("cdc_connector_task_state", task="0", state="RUNNING", **labels) == 0
    assert fake.restarts == [name]
    assert value("cdc_connector_task_restarts_total", **labels) == 1

    now[0] = 5.0  # within the 10 s backoff: no new restart
    mon.poll_once()
    assert fake.restarts == [name]
    now[0] = 10.0
    mon.poll_once()
    assert fake.restarts == [name, name]
    assert value("cdc_connector_task_restarts_total", **labels) == 2
    now[0] = 25.0  # second pause is 20 s
    mon.poll_once()
    assert len(fake.restarts) == 2

    fake.bodies[name] = status_body(name, "RUNNING", "RUNNING")
    now[0] = 30.0
    mon.poll_once()
    now[0] = 130.0
    mon.poll_once()
    assert mon.backoffs[name].attempts == 0
    assert value("cdc_connector_task_state", task="0", state="RUNNING", **labels) == 1


def test_connector_monitor_without_auto_restart_only_reports() -> None:
    fake = FakeConnect()
    src = source("unit_noauto")
    name = src.resolved_connector_name
    fake.bodies[name] = status_body(name, "FAILED")
    mon = ConnectorStateMonitor([src], fake.client(), interval_s=1, auto_restart=False)
    mon.poll_once()
    assert fake.restarts == []
    assert value("cdc_connector_state", source=src.name, connector=name, state="FAILED") == 1


def test_connector_monitor_absent_and_unreachable() -> None:
    fake = FakeConnect()
    src = source("unit_absent")
    name = src.resolved_connector_name
    labels = {"source": src.name, "connector": name}
    mon = connector_monitor(fake, src, time.monotonic)
    mon.poll_once()
    assert value("cdc_connector_state", state="ABSENT", **labels) == 1
    assert value("cdc_monitor_up", monitor="connect", source=src.name) == 1

    fake.bodies[name] = status_body(name, "RUNNING", "RUNNING", "RUNNING", "RUNNING")
    mon.poll_once()
    assert value("cdc_connector_task_state", task="2", state="RUNNING", **labels) == 1
    fake.bodies[name] = status_body(name, "RUNNING", "RUNNING")
    mon.poll_once()
    assert value("cdc_connector_task_state", task="2", state="RUNNING", **labels) is None  # task gone

    fake.bodies[name] = 500
    mon.poll_once()
    assert not mon.healthy
    assert value("cdc_monitor_up", monitor="connect", source=src.name) == 0
    assert value("cdc_connector_state", state="RUNNING", **labels) == 0
    assert value("cdc_connector_task_state", task="0", state="RUNNING", **labels) is None
    assert (value("cdc_monitor_poll_errors_total", monitor="connect", source=src.name, check="status") or 0) >= 1


# --------------------------------------------------------------------------- wiring


def pipeline(name: str, src: str, **extra: Any) -> PipelineSettings:
    return PipelineSettings(name=name, source=src, target={"url": "postgresql://u@h/db", "schema": "app"}, **extra)


def test_heartbeat_target_table_defaults_to_the_target_schema() -> None:
    src = source("unit_hb")
    assert heartbeat_target_table(src, pipeline("p", "unit_hb")) == TableId("app", "heartbeat")


def test_heartbeat_target_table_follows_a_route() -> None:
    src = source("unit_hb2", control_schema="ctl")
    routed = pipeline("p", "unit_hb2", transforms=[{"match": "ctl.*", "route": "cdc_meta.{table}"}])
    assert heartbeat_target_table(src, routed) == TableId("cdc_meta", "heartbeat")


def test_build_monitors_wires_sources_probes_and_connectors() -> None:
    settings = Settings(
        sources=[source("a").model_dump(), source("b").model_dump()],
        pipelines=[
            pipeline("pa", "a").model_dump(by_alias=True),
            pipeline("pb", "b").model_dump(by_alias=True),
            PipelineSettings(name="ps", source="a", target={"url": "sqlite:///x.db"}).model_dump(by_alias=True),
        ],
    )
    group = build_monitors(settings, sources=["a"])
    slots = group.slot_monitors
    assert [m.source.name for m in slots] == ["a"]
    assert [(p.pipeline, p.table, p.target.kind) for p in slots[0].heartbeats] == [
        ("pa", TableId("app", "heartbeat"), "postgresql"),
        ("ps", TableId("public", "heartbeat"), "sqlite"),
    ]
    assert [m.kind for m in group.monitors] == ["slot", "connect"]
    group.stop()
    off = Settings(sources=[source("a").model_dump()], monitor={"enabled": False})
    assert build_monitors(off).monitors == []


# --------------------------------------------------------------------------- lag command helpers


def test_change_topics_match_the_subscription() -> None:
    src = source("unit_topics", topic_prefix="shop")
    pipe = pipeline("p", "unit_topics", dlq={"topic": "shop.dlq"})
    topics = ["shop.public.a", "shop.public.b", "shopx.public.a", "shop.dlq", "__consumer_offsets", "other.t"]
    assert lag_cmd.change_topics(topics, src, pipe) == ["shop.public.a", "shop.public.b"]


def test_render_shows_slots_and_partitions() -> None:
    report = lag_cmd.LagReport(
        slots=[
            lag_cmd.SlotLine(
                "a",
                "cdc_a",
                evaluate_slot("cdc_a", sample(row(wal_status="unreserved", safe_wal_size=-5)), 100.0),
                "cdc_a",
                True,
                {"p": 3.25},
            ),
            lag_cmd.SlotLine("b", "cdc_b", error="OperationalError: refused"),
        ],
        partitions=[lag_cmd.PartitionLagLine("p", "cdc.p", "a.public.t", 0, 0, 10, 4, 7, "target", 6)],
        errors=["source b: OperationalError: refused"],
    )
    text = lag_cmd.render(report)
    assert "unreserved" in text and "p=3.2s" in text
    assert "a.public.t" in text and " 6" in text
    assert "source b: OperationalError: refused" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["slots"][0]["wal_status"] == "unreserved"
    assert data["slots"][0]["seconds_until_lost"] == 0.0
    assert data["consumer_lag"][0]["lag"] == 6


# --------------------------------------------------------------------------- CLI functions as typer commands


def cli_app() -> typer.Typer:
    """Registers the two commands the way pipeline/cli/__init__.py does with `run`."""
    app = typer.Typer()
    app.command(name="lag")(lag_cmd.lag)
    app.command(name="monitor")(monitor_cmd.control)
    return app


def write_config(tmp_path: Path, extra: str = "") -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    path = tmp_path / "cdc.yaml"
    path.write_text(
        "sources:\n"
        "  - name: app\n"
        "    host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    database: app\n"
        "    user: cdc\n"
        "    password: s3cret-Unit-Pw\n"
        "    tables: [public.t]\n" + extra,
        encoding="utf-8",
    )
    return path


def test_lag_command_reports_an_unreachable_source_as_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app(), ["lag", "-c", str(write_config(tmp_path)), "--json", "--wal-rate-sample", "0"]
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    (slot,) = data["slots"]
    assert slot["source"] == "app" and slot["slot"] == "cdc_app"
    assert "OperationalError" in slot["error"]
    assert data["consumer_lag"] == [] and data["errors"]
    assert "s3cret-Unit-Pw" not in result.output


def test_lag_command_table_and_unknown_pipeline(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    result = CliRunner().invoke(cli_app(), ["lag", "-c", config, "--wal-rate-sample", "0"])
    assert result.exit_code == 1
    assert "Replication slots" in result.output and "Consumer lag" in result.output and "Errors" in result.output
    result = CliRunner().invoke(cli_app(), ["lag", "-c", config, "--pipeline", "nope"])
    assert result.exit_code == 2
    assert "--pipeline" in result.output


def test_monitor_command_refuses_bad_invocations(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    result = CliRunner().invoke(cli_app(), ["monitor", "-c", config, "--source", "nope"])
    assert result.exit_code == 2 and "unknown source" in result.output


# --------------------------------------------------------------------------- restartable loops (control-plane lease)


class Blocking(PollingMonitor):
    """The first poll blocks until released; records which threads polled and the most polls at once."""

    kind = "unit"

    def __init__(self) -> None:
        super().__init__("blocking", 0.01)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.busy = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def poll_once(self) -> None:
        with self._count:
            self.busy += 1
            self.most_at_once = max(self.most_at_once, self.busy)
            self.threads.add(threading.get_ident())
        try:
            self.entered.set()
            self.release.wait(5)
        finally:
            with self._count:
                self.busy -= 1
        self.healthy = True


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_polling_monitor_restarts_after_stop() -> None:
    mon = Exploding()
    mon.start()
    wait_until(lambda: mon.polls >= 2)
    mon.stop(5)
    assert not mon.running and mon.closed
    mon.closed = False
    before = mon.polls
    mon.start()
    assert mon.running
    wait_until(lambda: mon.polls >= before + 2)
    mon.stop(5)
    assert mon.closed and not mon.running


def test_restart_while_a_stopped_poll_is_still_busy_never_overlaps_and_leaves_one_loop() -> None:
    """stop() times out on a poll in flight, start() follows at once (lease lost, then regained):
    the old thread must not poll again, and the new one waits for it before its first poll."""
    mon = Blocking()
    mon.start()
    assert mon.entered.wait(5)
    mon.stop(0.05)  # the poll is still blocked
    mon.start()
    time.sleep(0.1)
    mon.release.set()
    wait_until(lambda: mon.polls >= 6)
    mon.stop(5)
    assert mon.most_at_once == 1
    assert not mon.running
    live = [t for t in threading.enumerate() if t.name == "monitor-unit-blocking"]
    assert live == []


def test_monitor_group_start_stop_start() -> None:
    first, second = Exploding(), Exploding()
    group = MonitorGroup([first, second])
    group.stop()  # never started: closes, no error
    group.start()
    group.start()  # idempotent
    assert group.running
    wait_until(lambda: first.polls >= 1 and second.polls >= 1)
    group.stop(5)
    assert not group.running and not first.running and not second.running
    counts = (first.polls, second.polls)
    time.sleep(0.05)
    assert (first.polls, second.polls) == counts  # stopped means no more polls
    group.start()
    wait_until(lambda: first.polls > counts[0] and second.polls > counts[1])
    group.stop(5)


def test_connector_monitor_polls_again_after_a_restart_of_the_group() -> None:
    """The REST client is closed at every stop; the next start opens a new one."""
    fake = FakeConnect()
    src = source("unit_restartable")
    name = src.resolved_connector_name
    fake.bodies[name] = status_body(name, "RUNNING", "RUNNING")
    opened: list[ConnectClient] = []

    def factory() -> ConnectClient:
        opened.append(fake.client())
        return opened[-1]

    client = ReopeningConnectClient(factory)
    mon = ConnectorStateMonitor([src], client, interval_s=0.01, close_client=client.close)
    group = MonitorGroup([mon])
    group.start()
    wait_until(lambda: mon.polls >= 1 and mon.healthy)
    group.stop(5)
    group.start()
    polls = mon.polls
    wait_until(lambda: mon.polls >= polls + 2)
    group.stop(5)
    assert mon.healthy, mon.last_error
    assert len(opened) == 2
    assert value("cdc_monitor_poll_errors_total", monitor="connect", source="connectors", check="poll") is None


def test_build_monitors_restarts_connectors_only_when_the_control_plane_asks() -> None:
    settings = Settings(sources=[source("a").model_dump()])

    def auto_restart(group: MonitorGroup) -> bool:
        (connector,) = [m for m in group.monitors if isinstance(m, ConnectorStateMonitor)]
        group.stop()
        return connector.auto_restart

    assert auto_restart(build_monitors(settings)) is False  # e.g. beside a data-plane worker
    assert auto_restart(build_monitors(settings, restart_connectors=True)) is True
    off = Settings(sources=[source("a").model_dump()], monitor={"connector_auto_restart": False})
    assert auto_restart(build_monitors(off, restart_connectors=True)) is False


# --------------------------------------------------------------------------- heartbeat through the Target seam


def heartbeat_batch(source_name: str, ts: datetime, position: int = 100) -> ReducedBatch:
    """The heartbeat row as the data plane applies it: routed to ``public.heartbeat``."""
    table = TableId("public", "heartbeat")
    columns = (
        Column("source", "string", optional=False),
        Column("ts", "string", optional=False, logical="io.debezium.time.ZonedTimestamp"),
    )
    changes = TableChanges(table, TableId("cdc_control", "heartbeat"), ("source",), columns)
    key = key_text([source_name])
    changes.upserts[key] = Upsert(
        key=key,
        key_values={"source": source_name},
        row={"source": source_name, "ts": ts},
        position=Position(position, position),
        ts_ms=0,
        op=Op.UPDATE,
    )
    return ReducedBatch(tables={table: changes})


def test_heartbeat_age_measured_on_a_sqlite_target(tmp_path: Path) -> None:
    """Heartbeat lag works for a non-PostgreSQL target: the row is applied through the sink and
    read back through Target.read_heartbeat, and the age is the source's now() minus its ts."""
    url = f"sqlite:///{tmp_path / 'target.db'}"
    settings = Settings(
        sources=[source("unit_sqlite_hb").model_dump()],
        pipelines=[
            PipelineSettings(name="lite", source="unit_sqlite_hb", target={"url": url}).model_dump(by_alias=True)
        ],
    )
    src = settings.source("unit_sqlite_hb")
    labels = {"pipeline": "lite", "source": src.name}
    (probe,) = heartbeat_probes(settings, src)
    mon = SlotMonitor(src, interval_s=1, heartbeats=[probe], connect=refused)

    mon._poll_heartbeats(NOW)  # nothing applied yet: no table
    assert mon.heartbeat_ages == {"lite": None}
    assert value("cdc_heartbeat_age_seconds", **labels) is None

    sink = make_target(settings.pipelines[0], purpose="test")
    sink.apply(heartbeat_batch(src.name, NOW - timedelta(seconds=42.5)), "cdc.lite", {("t", 0): 1})
    sink.close()
    mon._poll_heartbeats(NOW)
    assert mon.heartbeat_ages == {"lite": pytest.approx(42.5)}
    assert value("cdc_heartbeat_age_seconds", **labels) == pytest.approx(42.5)
    mon.close()


class UnreachableTarget:
    kind = "postgresql"

    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        raise TransientSinkError("cannot connect to the target: refused")

    def close(self) -> None:
        pass


class FixedTarget(UnreachableTarget):
    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        return NOW - timedelta(seconds=7)


def test_an_unreachable_target_is_counted_and_the_other_heartbeats_still_read() -> None:
    src = source("unit_hb_down")
    table = TableId("public", "heartbeat")
    probes = [
        HeartbeatProbe("down", src.name, table, UnreachableTarget()),  # type: ignore[arg-type]
        HeartbeatProbe("up", src.name, table, FixedTarget()),  # type: ignore[arg-type]
    ]
    mon = SlotMonitor(src, interval_s=1, heartbeats=probes, connect=refused)
    mon._poll_heartbeats(NOW)
    assert mon.heartbeat_ages == {"up": 7.0}
    assert value("cdc_heartbeat_age_seconds", pipeline="up", source=src.name) == 7.0
    assert value("cdc_monitor_poll_errors_total", monitor="slot", source=src.name, check="heartbeat") == 1
    assert "refused" in (mon.last_error or "")
