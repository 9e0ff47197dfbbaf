"""Issue 22, "recovering a connector whose slot or WAL is gone", through real Debezium, Kafka
Connect, Kafka and PostgreSQL: the slot of a registered connector is dropped while it is stopped
and the database's WAL moves on; Debezium then refuses to start ("no longer available on the
server"), ``connectors status`` and ``source check`` say so with the fix, and ``connectors
recover`` brings it back: the target verifies clean (repaired) and new rows stream again."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import psycopg
from typer.testing import CliRunner, Result

from connectors.connect_client import ConnectClient
from pipeline.cli import app
from pipeline.control.recovery import UNAVAILABLE_TRACE
from tests.e2e.conftest import E2EPipeline

ITEMS_DDL = "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int)"


def cli(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"cdc-pipeline {args} raised {result.exception!r}\n{result.output}")
    return result


def _client(p: E2EPipeline) -> ConnectClient:
    return ConnectClient(p.settings.connect)


def _break_the_slot(p: E2EPipeline, deletes: bool = True) -> None:
    """Stop the connector, drop its slot, change rows nobody will stream, switch WAL segments,
    then resume: Debezium's task fails on start."""
    src = p.settings.sources[0]
    name = src.resolved_connector_name
    with _client(p) as client:
        client.stop(name)
        client.wait_for(name, lambda s: s.state == "STOPPED" and not s.tasks, timeout_s=60)
        assert client.offsets(name), "the connector stored no offset before the break"
    deadline = time.monotonic() + 30
    while True:  # the WAL sender may linger a moment after the stop
        with p_conn(p) as conn:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (src.resolved_slot_name,)
            ).fetchone()
            if row is not None and not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (src.resolved_slot_name,))
                break
        assert time.monotonic() < deadline, "the slot stayed active after the stop"
        time.sleep(0.5)
    p.source("INSERT INTO public.items SELECT g, 'gap ' || g, g FROM generate_series(101, 120) g")
    p.source("UPDATE public.items SET qty = -1 WHERE id <= 10")
    if deletes:
        p.source("DELETE FROM public.items WHERE id BETWEEN 41 AND 50")
    for _ in range(2):
        p.source("SELECT pg_switch_wal()")
    with _client(p) as client:
        client.resume(name)
        status = client.wait_for(name, lambda s: s.failed, timeout_s=120)
    assert status.failed, f"the connector did not fail without its slot: {status}"
    traces = [status.trace or "", *(t.trace or "" for t in status.tasks)]
    assert any(UNAVAILABLE_TRACE in t for t in traces), traces


def p_conn(p: E2EPipeline) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(p.source_dsn, autocommit=True)


def test_a_dropped_slot_is_detected_and_recovered(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'v' || g, g FROM generate_series(1, 100) g"],
        ["public.items"],
    )
    src = p.settings.sources[0]
    config = str(p.config_path)
    fix = f"cdc-pipeline connectors recover -c FILE --source {src.name}"
    p.start_worker()
    p.wait_converged()

    # connectors list shows it, RUNNING, as this configuration's.
    listed = cli("connectors", "list", "-c", config, "--json")
    assert listed.exit_code == 0, listed.output
    (mine,) = [c for c in json.loads(listed.stdout) if c["name"] == src.resolved_connector_name]
    assert mine["source"] == src.name and mine["connector"]["state"] == "RUNNING"

    _break_the_slot(p)

    status = cli("connectors", "status", "-c", config)
    assert status.exit_code == 1
    assert "position lost (slot missing): slot " + src.resolved_slot_name in status.output
    assert f"fix: {fix}" in status.output
    assert "connectors restart" not in status.output  # the useless hint is gone
    as_json = cli("connectors", "status", "-c", config, "--json")
    (doc,) = json.loads(as_json.stdout)
    assert doc["position_lost"]["problem"] == "slot missing" and doc["healthy"] is False

    check = cli("source", "check", "-c", config)
    assert check.exit_code == 1
    assert "FAIL connector position: position lost (slot missing)" in check.output
    assert fix in check.output

    refused = cli("connectors", "recover", "-c", config)  # not a terminal, no --yes
    assert refused.exit_code == 2 and "pass --yes" in refused.output

    recovered = cli("connectors", "recover", "-c", config, "--repair", "--yes", "--timeout", "300")
    out = recovered.output
    assert recovered.exit_code == 0, out
    for line in (
        "position lost (slot missing)",
        "stopped",
        "Connect offsets deleted",
        "slot " + src.resolved_slot_name + ": absent",
        "initial snapshot done, streaming",
        "recovered: every pipeline verifies clean",
    ):
        assert line in out, f"{line!r} missing:\n{out}"
    p.wait_converged(timeout=60)  # the gap's inserts, updates and (repaired) deletes

    # New rows stream again, and status is clean.
    p.source("INSERT INTO public.items SELECT g, 'after ' || g, g FROM generate_series(201, 210) g")
    p.source("UPDATE public.items SET name = 'changed' WHERE id = 1")
    p.wait_converged(timeout=60)
    healthy = cli("connectors", "status", "-c", config)
    assert healthy.exit_code == 0, healthy.output
    assert "position lost" not in healthy.output

    # verify off a terminal: plain progress lines, fed by verify_pipeline's on_progress hook.
    verified = cli("verify", "-c", config)
    assert verified.exit_code == 0, verified.output
    pipeline = p.pipeline_name
    assert re.search(
        rf"^verify {pipeline}: 1/1 chunks \(100%\) public\.items \(table 1/1\), [\d,]+ rows/s$",
        verified.stdout,
        re.MULTILINE,
    ), verified.stdout


def test_incremental_recovery_streams_at_once_and_snapshots_through_the_queue(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'v' || g, g FROM generate_series(1, 100) g"],
        ["public.items"],
    )
    src = p.settings.sources[0]
    config = str(p.config_path)
    p.start_worker()
    p.wait_converged()
    _break_the_slot(p, deletes=False)

    recovered = cli("connectors", "recover", "-c", config, "--snapshot", "incremental", "--yes", "--timeout", "300")
    out = recovered.output
    assert recovered.exit_code == 0, out
    for line in (
        "streaming, offset stored",
        f"configured snapshot.mode={src.snapshot_mode} restored",
        ": queued for public.items",
        ": completed",
        "recovered: every pipeline verifies clean",
    ):
        assert line in out, f"{line!r} missing:\n{out}"
    with _client(p) as client:
        config_now = client.get_config(src.resolved_connector_name) or {}
    assert config_now.get("snapshot.mode") == src.snapshot_mode  # no_data was only for the restart
    p.source("INSERT INTO public.items SELECT g, 'after ' || g, g FROM generate_series(301, 305) g")
    p.wait_converged(timeout=60)
