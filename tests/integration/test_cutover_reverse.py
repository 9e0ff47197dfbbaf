"""The rollback window's pieces on the real stack: ``start_reverse`` on a fresh new primary (a write
right after it reaches the reverse topic), ``stop_reverse`` (connector and slot gone, twice), and
``cutover finish`` (lists what exists, refuses before ``done``, drops everything it listed).

The new primary is a fresh database on the stack's TARGET cluster, the old source one of the same
name on the SOURCE cluster (the ``databases`` fixture). No workers run here: the forward side is
set up as a cutover leaves it (source prepared, its slot kept), and the control schemas and
heartbeat copies the workers would have created are created by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import typer
import yaml
from confluent_kafka import Consumer
from typer.testing import CliRunner

from connectors import source_prep
from connectors.slots import create_logical_slot
from pipeline.cli.cutover_finish_cmd import finish_command
from pipeline.control.cutover import finish
from pipeline.control.cutover.finish import FinishError, plan_finish, run_finish
from pipeline.control.cutover.reverse import (
    ReverseError,
    reverse_connector_config,
    reverse_source,
    start_reverse,
    stop_reverse,
)
from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.root import Settings
from pipeline.localstack import LocalStack
from tests.conftest import Databases

TABLE = "public.items"


def _document(stack: LocalStack, db: Databases, token: str) -> dict[str, Any]:
    s = stack.settings

    def source(name: str, port: int, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "host": s.host,
            "port": port,
            "database": db.name,
            "user": "postgres",
            "password": "postgres",
            "tables": [TABLE],
            "heartbeat_interval_ms": 1000,
            "connector_overrides": {
                "topic.creation.default.partitions": 1,
                "topic.creation.default.replication.factor": 1,
            },
            **extra,
        }

    def target(port: int, control_schema: str) -> dict[str, Any]:
        url = f"postgresql://postgres@{s.host}:{port}/{db.name}"
        return {"url": url, "password": "postgres", "versions": "table", "control_schema": control_schema}

    return {
        "kafka": {"bootstrap_servers": s.bootstrap_servers},
        "connect": {"url": s.connect_url},
        "sources": [
            source(f"fs_{token}", s.source_pg_port),
            # snapshot_mode initial on purpose: the reverse connector must run no_data anyway
            source(f"rs_{token}", s.target_pg_port, control_schema="cdc_rev"),
        ],
        "pipelines": [
            {
                "name": f"pf_{token}",
                "source": f"fs_{token}",
                "target": target(s.target_pg_port, "cdc_control"),
                "cutover": {"reverse": {"source": f"rs_{token}", "pipeline": f"pb_{token}"}},
            },
            {"name": f"pb_{token}", "source": f"rs_{token}", "target": target(s.source_pg_port, "cdc_back")},
        ],
        "metrics": {"enabled": False},
    }


@pytest.fixture
def setup(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> tuple[Settings, Path]:
    """Both databases with ``items``; the forward side as after a cutover; the config file."""
    token = unique("x").split("_", 1)[1]
    for dsn in (databases.source_dsn, databases.target_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, v text)")
            conn.execute("CREATE TABLE heartbeat (source text PRIMARY KEY, ts timestamptz)")  # a worker's copy
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA cdc_control")  # the forward pipeline's control schema
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA cdc_back")  # the reverse pipeline's control schema
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(_document(local_stack, databases, token)), encoding="utf-8")
    settings = load_settings(path, {})
    old = settings.source(f"fs_{token}")
    source_prep.prepare(old)
    with source_prep.connect(old) as conn:
        create_logical_slot(conn, old.resolved_slot_name)
    return settings, path


def _slots(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
        return sorted(r[0] for r in rows.fetchall())


def _schemas(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cdc%' ORDER BY 1")
        return [r[0] for r in rows.fetchall()]


def _connector_exists(settings: Settings, name: str) -> bool:
    return httpx.get(f"{settings.connect.url}/connectors/{name}", timeout=10).status_code == 200


def _wait_for_value(bootstrap: str, topic: str, value: str, timeout_s: float = 90) -> dict[str, Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            payload: dict[str, Any] = json.loads(msg.value())["payload"]
            if (payload.get("after") or {}).get("v") == value:
                return payload
    finally:
        consumer.close()
    raise AssertionError(f"{value!r} never reached {topic} in {timeout_s}s")


def test_start_reverse_captures_a_write_made_right_after_it_and_stop_removes_connector_and_slot(
    local_stack: LocalStack, databases: Databases, setup: tuple[Settings, Path]
) -> None:
    settings, _ = setup
    forward = settings.pipelines[0]
    new = reverse_source(settings, forward)
    started = start_reverse(settings, forward)
    try:
        assert started.connector == new.resolved_connector_name
        assert started.slot in _slots(databases.target_dsn)
        assert started.slot_created
        with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items (v) VALUES ('written right after start_reverse')")
        topic = f"{new.resolved_topic_prefix}.public.items"
        event = _wait_for_value(local_stack.settings.bootstrap_servers, topic, "written right after start_reverse")
        assert event["op"] == "c"  # streamed, not a snapshot read ('r'): snapshot.mode was no_data
        again = start_reverse(settings, forward)  # a rerun reuses the slot and the connector
        assert (again.connector, again.slot, again.slot_created) == (started.connector, started.slot, False)
    finally:
        stop_reverse(settings, forward, started)
    assert not _connector_exists(settings, started.connector)
    assert started.slot not in _slots(databases.target_dsn)
    assert _slots(databases.source_dsn), "stop_reverse must not touch the forward slot"
    stop_reverse(settings, forward)  # idempotent, names from the settings
    stop_reverse(settings, forward, started)


def test_finish_lists_refuses_before_done_then_drops_everything_it_listed(
    databases: Databases, setup: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, path = setup
    forward = settings.pipelines[0]
    old, new = settings.source(forward.source), reverse_source(settings, forward)
    started = start_reverse(settings, forward)
    try:
        app = typer.Typer()
        app.command()(finish_command)
        result = CliRunner().invoke(app, ["-c", str(path), "-p", forward.name, "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        listed = {(r["kind"], r["name"], r["where"].split(" ")[0]) for r in json.loads(result.output)["removals"]}
        assert listed == {
            ("connector", new.resolved_connector_name, "kafka"),
            ("slot", new.resolved_slot_name, "new"),
            ("publication", new.resolved_publication_name, "new"),
            ("table", "cdc_rev.heartbeat", "new"),
            ("table", f"cdc_rev.debezium_signal_{new.name}", "new"),
            ("schema", "cdc_rev", "new"),
            ("table", "public.heartbeat", "new"),
            ("schema", "cdc_control", "new"),
            ("slot", old.resolved_slot_name, "old"),
            ("publication", old.resolved_publication_name, "old"),
            ("table", "cdc.heartbeat", "old"),
            ("table", f"cdc.debezium_signal_{old.name}", "old"),
            ("schema", "cdc", "old"),
            ("table", "public.heartbeat", "old"),
            ("schema", "cdc_back", "old"),
        }
        assert _slots(databases.target_dsn) == [new.resolved_slot_name]  # a dry run drops nothing
        assert _connector_exists(settings, new.resolved_connector_name)
        text = CliRunner().invoke(app, ["-c", str(path), "--dry-run"])
        assert f"slot {old.resolved_slot_name} on old source {old.name}" in text.output
        # Before 'done' (no cutover recorded) finish refuses and changes nothing.
        with pytest.raises(FinishError):
            run_finish(settings, forward)
        assert _slots(databases.source_dsn) == [old.resolved_slot_name]
        # The phase check reads the cutover orchestrator's state store; here it says 'done'.
        marked: list[str] = []
        monkeypatch.setattr(finish, "cutover_phase", lambda pipe: "done")
        monkeypatch.setattr(finish, "mark_finished", lambda pipe: marked.append(pipe.name))
        dropped = run_finish(settings, forward)
        assert {(r.kind, r.name) for r in dropped} == {(k, n) for k, n, _ in listed}
        assert marked == [forward.name]
        assert plan_finish(settings, forward) == []
        assert _slots(databases.source_dsn) == [] and _slots(databases.target_dsn) == []
        assert _schemas(databases.source_dsn) == [] and _schemas(databases.target_dsn) == []
        assert not _connector_exists(settings, new.resolved_connector_name)
        with psycopg.connect(databases.target_dsn) as conn:  # user tables untouched
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
    finally:
        stop_reverse(settings, forward, started)


def test_reverse_connector_is_no_data_whatever_the_overrides(setup: tuple[Settings, Path]) -> None:
    settings, _ = setup
    forward = settings.pipelines[0]
    source = reverse_source(settings, forward).model_copy(update={"connector_overrides": {"snapshot.mode": "initial"}})
    config = reverse_connector_config(source)
    assert config["snapshot.mode"] == "no_data"
    assert config["slot.name"] == source.resolved_slot_name
    with pytest.raises(ReverseError, match=r"cutover\.reverse is not set"):
        reverse_source(settings, settings.pipelines[1])


def test_finish_never_lists_a_user_schema_or_a_captured_table(setup: tuple[Settings, Path], tmp_path: Path) -> None:
    _, path = setup
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for source in doc["sources"]:
        source["tables"].append("public.heartbeat")  # here a user table that happens to be called so
    doc["pipelines"][1]["target"]["control_schema"] = "public"  # a careless setting
    variant = tmp_path / "variant.yaml"
    variant.write_text(yaml.safe_dump(doc), encoding="utf-8")
    settings = load_settings(variant, {})
    listed = {(r.kind, r.name) for r in plan_finish(settings, settings.pipelines[0])}
    assert ("schema", "public") not in listed
    assert ("table", "public.heartbeat") not in listed
    assert ("schema", "cdc_control") in listed and ("slot", settings.sources[0].resolved_slot_name) in listed
