"""Acceptance of issue 17, "Writes during the load": pgbench scale 10 on a fresh database, pgbench
writing at 500 tx/s during the whole bulk load (``run_bulk_load``: slot with an exported snapshot,
parallel copy, connector registered with ``snapshot.mode=no_data`` on that slot), then a worker
streams what was written meanwhile, and ``cdc-pipeline verify`` is clean for every table,
including the keyless ``pgbench_history`` (REPLICA IDENTITY FULL; verified as a multiset).

Kept short: one load, pgbench stopped a few seconds after the hand-over, one verification.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config
from pipeline.core.settings.loading import load_settings
from pipeline.localstack import LocalStack
from tests.conftest import Databases, drop_slots
from tests.e2e.conftest import E2EPipeline
from tests.e2e.helpers_snapshot import run_verify
from tests.e2e.test_verify_under_load import _env, _pgbench

pytestmark = pytest.mark.timeout(1200)

SCALE = 10
RATE, CLIENTS = 500, 4
TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"]


def _history(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def bulk_source(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[E2EPipeline]:
    """A configuration with ``initial_load: bulk`` on the test's database; no connector yet (the
    load registers it). The connector, workers and slots are removed afterwards."""
    s = local_stack.settings
    name = unique("s")
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": s.bootstrap_servers},
        "connect": {"url": s.connect_url},
        "sources": [
            {
                "name": name,
                "host": s.host,
                "port": s.source_pg_port,
                "database": databases.name,
                "user": "postgres",
                "password": "postgres",
                "tables": TABLES,
                "heartbeat_interval_ms": 1000,
                "initial_load": "bulk",
                "bulk_load": {"jobs": 2},
            }
        ],
        "pipelines": [
            {
                "name": unique("p"),
                "source": name,
                "target": {
                    "url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{databases.name}",
                    "password": "postgres",
                    "schema": "public",
                    "control_schema": "cdc_control",
                },
                "batch": {"max_wait_ms": 100},
                "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 2},
            }
        ],
        "metrics": {"enabled": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    p = E2EPipeline(path, load_settings(path, {}), databases.source_dsn, databases.target_dsn, TABLES, log_dir)
    yield p
    for proc in p.workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    client = ConnectClient(p.settings.connect)
    client.delete(p.settings.sources[0].resolved_connector_name)
    client.close()
    with psycopg.connect(s.pg_dsn("source"), autocommit=True) as conn:
        drop_slots(conn, databases.name)


def test_bulk_load_under_pgbench_then_streaming_verifies_clean(
    bulk_source: E2EPipeline, local_stack: LocalStack, databases: Databases
) -> None:
    # bulkcore's orchestrator (pipeline/control/bulkload/run.py); skipped on a branch without it
    run_bulk_load = pytest.importorskip("pipeline.control.bulkload.run").run_bulk_load
    p = bulk_source
    subprocess.run(_pgbench(local_stack, databases, "-i", "-s", str(SCALE), "-q"), env=_env(), check=True)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        conn.execute("INSERT INTO pgbench_history SELECT 1, 1, 1, 0, now(), 'x' FROM generate_series(1, 3)")  # dups
    source = p.settings.sources[0]
    client = ConnectClient(p.settings.connect)
    registered: list[float] = []

    def register() -> None:
        client.apply(source.resolved_connector_name, build_connector_config(source))
        registered.append(time.monotonic())

    argv = _pgbench(local_stack, databases, "-R", str(RATE), "-c", str(CLIENTS), "-j", "2", "-T", "600", "-P", "10")
    bench = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)  # the load is on before the slot exists
        before = _history(databases.source_dsn)
        report = run_bulk_load(p.settings, source, jobs=2, register=register)
        print(f"bulk load: {report.rows:,} rows in {report.copy_seconds:.1f} s ({report.rows_per_s:,.0f} rows/s)")
        assert report.rows >= 100_000 * SCALE and not report.already_loaded and len(registered) == 1
        assert bench.poll() is None, "pgbench stopped during the load"
        written = _history(databases.source_dsn) - before
        assert written > RATE * report.copy_seconds / 2, f"only {written} pgbench transactions during the load"
        status = client.wait_for(source.resolved_connector_name, lambda st: st.healthy, timeout_s=90)
        assert status.healthy, status
        p.wait_assigned(p.start_worker())
        time.sleep(10)  # streaming under load after the hand-over
        assert bench.poll() is None
    finally:
        if bench.poll() is None:
            bench.terminate()
        out, _ = bench.communicate(timeout=60)
        client.close()
        print(out[-1500:])
    p.wait_converged(timeout=300)
    code, doc, _ = run_verify(p.config_path)
    for t in doc["tables"]:
        print(t["table"], t["status"], t["rows_source"], t["rows_target"], t["reason"])
    assert code == 0, doc
    assert {t["table"]: t["status"] for t in doc["tables"]} == dict.fromkeys(TABLES, "match")
