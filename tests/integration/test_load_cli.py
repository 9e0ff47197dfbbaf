"""``cdc-pipeline load run|status`` on the real stack, end to end for a small database: the refusal of
``connectors apply`` before the load, the copy (keyed and keyless tables), the connector registered
with ``snapshot.mode=no_data`` on the load's slot and streaming from there (no snapshot reads), the
``--json`` report, ``connectors apply`` accepted after the load, a completed load not redone, and a
refused load (a second source onto a target table that already has rows); /metrics while a load
runs, and ``kill -9`` of the loader mid-table followed by a clean restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from tests.e2e.test_observability import free_port, scrape
from tests.integration.sources import Cli, Env
from tests.integration.test_connectors import consume, has

ROWS = 500


def bulk_config(env: Env, source_name: str | None = None) -> Path:
    """``env``'s source with ``initial_load: bulk`` and one pipeline into the test's target database."""
    name = source_name or env.name
    path = env.config(["public.items", "public.notes"], initial_load="bulk", bulk_load={"jobs": 2, "chunk_rows": 1000})
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["sources"][0]["name"] = name
    doc["sources"][0]["topic_prefix"] = name
    doc["pipelines"] = [
        {"name": f"p_{name}"[:40], "source": name, "target": {"url": env.db.target_dsn}},
    ]
    doc["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    out = env.tmp / f"bulk-{name}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def target_count(env: Env, table: str) -> int:
    with psycopg.connect(env.db.target_dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()  # fixed test table names
    assert row is not None
    return int(row[0])


def test_load_run_then_stream_and_the_refusals(env: Env, cli: Cli) -> None:
    cli.secrets.add(env.password)
    env.tables_owned_by_role(
        "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2))",
        f"INSERT INTO public.items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, {ROWS}) g",
        "CREATE TABLE public.notes (note text, n int)",
        "ALTER TABLE public.notes REPLICA IDENTITY FULL",
        "INSERT INTO public.notes VALUES ('dup', 1), ('dup', 1), ('other', 2)",  # duplicates load exactly
    )
    config = bulk_config(env)

    res = cli("load", "status", "-c", config)
    assert res.exit_code == 1, res.output
    assert f"source {env.name}: not loaded" in res.output
    assert "no load recorded" in res.output

    res = cli("connectors", "apply", "-c", config)
    assert res.exit_code == 1, res.output
    assert (
        f"source {env.name} uses initial_load: bulk and has no completed load: run `cdc-pipeline load run -s {env.name}`"
        in res.output
    )
    with env.client() as client:
        assert client.get_config(env.connector) is None

    res = cli("load", "run", "-c", config, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["source"] == env.name and report["slot_name"] == env.slot
    assert report["already_loaded"] is False and report["recovered"] is False
    assert report["rows"] == ROWS + 3
    assert report["copy_seconds"] > 0 and report["rows_per_s"] > 0
    assert {(t["table"], t["rows"]) for t in report["tables"]} == {("public.items", ROWS), ("public.notes", 3)}
    assert all(set(t) == {"pipeline", "table", "rows", "seconds", "rows_per_s", "path"} for t in report["tables"])
    assert "/" in report["consistent_point"] and report["consistent_lsn"] > 0
    assert target_count(env, "items") == ROWS
    assert target_count(env, "notes") == 3

    # The connector was registered on the load's slot, without a snapshot of its own.
    with env.client() as client:
        registered = client.get_config(env.connector)
        assert registered is not None
        assert registered["snapshot.mode"] == "no_data"
        assert registered["slot.name"] == env.slot
        assert client.status(env.connector).healthy

    env.run_sql("INSERT INTO public.items VALUES (100001, 'after the load', 1)")
    payloads = consume(env, f"{env.name}.public.items", has("c", id=100001))
    assert not [p for p in payloads if p.get("op") == "r"], "the connector snapshotted although the load copied"

    res = cli("load", "status", "-c", config, "--json")
    assert res.exit_code == 0, res.output
    status = json.loads(res.stdout)[env.name]
    assert status["done"] is True
    assert status["pipelines"][f"p_{env.name}"[:40]]["status"] == "done"

    res = cli("connectors", "apply", "-c", config)
    assert res.exit_code == 0, res.output
    assert f"{env.connector}: unchanged" in res.output

    res = cli("load", "run", "-c", config)
    assert res.exit_code == 0, res.output
    assert "already loaded" in res.output
    assert target_count(env, "items") == ROWS  # not copied twice

    # A second bulk source of the same database into the same (now filled) target tables: refused.
    other = bulk_config(env, f"{env.name}_b")
    res = cli("load", "run", "-c", other)
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("load refused:")]
    assert len(lines) == 1, res.output
    assert "rows" in lines[0] and "initial_load: snapshot" in lines[0]
    assert "Traceback" not in res.output


def test_load_run_serves_metrics_and_a_killed_load_restarts_clean(env: Env, cli: Cli) -> None:
    cli.secrets.add(env.password)
    rows = 20_000
    env.tables_owned_by_role(
        "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2))",
        f"INSERT INTO public.items SELECT g, 'item ' || g, g FROM generate_series(1, {rows}) g",
        "CREATE TABLE public.notes (note text, n int)",
        "ALTER TABLE public.notes REPLICA IDENTITY FULL",
        "ANALYZE public.items",
    )
    config = bulk_config(env)
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    port = free_port()
    doc["metrics"]["port"] = port
    doc["sources"][0]["bulk_load"] = {"jobs": 1, "chunk_rows": 1000}
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    # The loader pauses mid-table (test hook); meanwhile /metrics shows the table's progress.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "load", "run", "-c", str(config)],
        env={**os.environ, "CDC_BULK_PAUSE_AFTER_ROWS": "1000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        labels = {"pipeline": f"p_{env.name}"[:40], "table": "public.items"}
        deadline = time.monotonic() + 60
        copied = 0.0
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                samples = scrape(port)
            except httpx.HTTPError:
                samples = {}
            copied = samples.get(("cdc_bulk_load_rows_total", tuple(sorted(labels.items()))), 0.0)
            if copied > 0:
                break
            time.sleep(0.3)
        assert 0 < copied < rows, f"no progress seen on /metrics (copied {copied})"
        assert samples[("cdc_bulk_load_table_rows", tuple(sorted(labels.items())))] == rows
        ratio = samples[("cdc_bulk_load_progress_ratio", tuple(sorted(labels.items())))]
        assert 0 < ratio < 1
    finally:
        proc.kill()  # kill -9 of the loader mid-table
        proc.wait(30)

    res = cli("load", "status", "-c", config)
    assert res.exit_code == 1, res.output
    assert "copying" in res.output
    res = cli("connectors", "apply", "-c", config)
    assert res.exit_code == 1, res.output
    assert "has no completed load" in res.output

    res = cli("load", "run", "-c", config, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["recovered"] is True and report["rows"] == rows
    assert target_count(env, "items") == rows  # no duplicates of the first chunks, none missing
    with env.superuser() as conn:
        slots = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall()
    assert [s[0] for s in slots] == [env.slot]
