"""The bulk path and the Debezium snapshot path give the same target table for every supported
type: the e2e all-types table (tests/e2e/test_apply_core.py) loaded both ways from one source
database into two target schemas, compared column type by column type and row by row
(tests/e2e/conftest.table_rows: NaN, Decimal scale and timetz zones in canonical form)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config
from connectors.source_prep import prepare
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.core.settings.models import ConnectSettings
from pipeline.localstack import LocalStack
from tests.conftest import Databases
from tests.e2e.conftest import table_rows
from tests.e2e.test_apply_core import ALL_TYPES_DDL
from tests.integration.bulk_env import bulk_config

MORE_ROWS = [
    "INSERT INTO public.all_types SELECT 3, s, i, -0.0000000001, 1.50, 'Infinity', 1e-300, false, E'tab\\there\\\\',"
    " vc, 'a', '\\x', u, j, jb, dt, '00:00:00', '00:00:01-11:30', ts, tstz, '-3 days 00:00:01', '{}', '{NULL}', 'sad'"
    " FROM public.all_types WHERE id = 1",
]


def _types(dsn: str, schema: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (f"{schema}.all_types",),
        ).fetchall()
    return {str(n): str(t) for n, t in rows}


def test_bulk_equals_debezium_snapshot(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        for statement in [*ALL_TYPES_DDL, *MORE_ROWS]:
            conn.execute(statement)
    tables = ["public.all_types"]
    snap_path, snap = bulk_config(
        local_stack,
        databases,
        unique("vs"),
        tables,
        tmp_path,
        source={"initial_load": "snapshot"},
        target_schema="viasnap",
    )
    _, bulk = bulk_config(local_stack, databases, unique("vb"), tables, tmp_path, target_schema="viabulk")
    report = run_bulk_load(bulk, bulk.sources[0], register=lambda: None)
    assert [t.path for t in report.tables] == ["copy"]

    source = snap.sources[0]
    prepare(source)
    connector = source.resolved_connector_name
    worker: subprocess.Popen[bytes] | None = None
    with ConnectClient(ConnectSettings(url=local_stack.settings.connect_url)) as client:
        try:
            config = build_connector_config(source)
            assert config["snapshot.mode"] == "initial"
            client.apply(connector, config)
            log = (tmp_path / "worker.log").open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "-c", str(snap_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + 120
            while True:
                try:
                    if len(table_rows(databases.target_dsn, "viasnap.all_types")) == 3:
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
                time.sleep(1)
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(30)
            client.delete(connector)

    assert _types(databases.target_dsn, "viabulk") == _types(databases.target_dsn, "viasnap")
    via_bulk = table_rows(databases.target_dsn, "viabulk.all_types")
    via_snapshot = table_rows(databases.target_dsn, "viasnap.all_types")
    assert len(via_bulk) == 3
    for got, want in zip(via_bulk, via_snapshot, strict=True):
        assert got == want
    with psycopg.connect(databases.target_dsn) as conn:  # both paths order every row before streamed changes
        versions = conn.execute(
            "SELECT DISTINCT __cdc_commit_lsn FROM viabulk.all_types UNION SELECT __cdc_commit_lsn FROM viasnap.all_types"
        ).fetchall()
    assert versions == [(0,)]
