"""End-to-end harness: a source database with Debezium capturing it through our connector code,
pipeline workers as real ``cdc-pipeline run`` processes, and source-vs-target comparison."""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from connectors import source_prep
from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config
from pipeline.localstack import LocalStack
from pipeline.settings import Settings, load_settings
from tests.conftest import Databases, drop_slots


def canonical(value: Any) -> Any:
    """A value in a form where equal data compares equal: NaN as text, Decimals normalised
    (Debezium drops trailing zeros of unconstrained NUMERIC), aware times in UTC (Debezium
    sends timetz normalised to UTC)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else str(value)
    if isinstance(value, dt.time) and value.tzinfo is not None:
        offset = value.utcoffset() or dt.timedelta()
        as_dt = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(tzinfo=None)) - offset
        return as_dt.time()
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def table_rows(dsn: str, table: str, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
    """Rows of ``schema.table`` (split at the first dot) as sorted tuples of the given columns
    (default: every column not starting with ``__cdc_``)."""
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn) as conn:
        if columns is None:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                    " AND column_name NOT LIKE '\\_\\_cdc\\_%%' ORDER BY ordinal_position",
                    (schema, name),
                ).fetchall()
            ]
        if not columns:
            return []
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {}.{}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema), sql.Identifier(name)
            )
        ).fetchall()
    return sorted((tuple(canonical(v) for v in row) for row in rows), key=repr)


@dataclass
class E2EPipeline:
    """One source + connector + pipeline configuration, and the workers started for it."""

    config_path: Path
    settings: Settings
    source_dsn: str
    target_dsn: str
    tables: list[str]
    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)

    @property
    def pipeline_name(self) -> str:
        return self.settings.pipelines[0].name

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"worker-{len(self.workers)}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--log-level", "info", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc`` (an expected death: convergence checks ignore it)."""
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def wait_assigned(self, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
        """Wait until ``proc``'s log shows a partition assignment."""
        log = self.log_dir / f"worker-{self.workers.index(proc)}.log"
        deadline = time.monotonic() + timeout
        while "partitions assigned" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"worker got no partitions:\n{self.worker_logs()}")
            time.sleep(0.3)

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def wait_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until ``text`` appears ``count`` times across the workers' logs."""
        deadline = time.monotonic() + timeout
        while self.worker_logs().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen {count} times:\n{self.worker_logs()}")
            time.sleep(0.3)

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def source(self, statement: str, params: Any = None) -> None:
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            conn.execute(statement, params)

    def wait_converged(self, timeout: float = 120, tables: list[str] | None = None) -> None:
        """Wait until every table's rows are equal in source and target."""
        deadline = time.monotonic() + timeout
        diff = ""
        while time.monotonic() < deadline:
            diff = ""
            for table in tables or self.tables:
                src = table_rows(self.source_dsn, table)
                try:
                    tgt = table_rows(self.target_dsn, table, _columns(self.source_dsn, table))
                except psycopg.errors.UndefinedTable:
                    tgt = []
                    diff = f"{table}: not created yet"
                    break
                if src != tgt:
                    diff = f"{table}: source {len(src)} rows, target {len(tgt)} rows; first source rows {src[:3]}, target {tgt[:3]}"
                    break
            if not diff:
                return
            for proc in self.workers:
                if proc.pid not in self.killed and proc.poll() not in (None, 0):
                    raise AssertionError(f"a worker exited with {proc.returncode}:\n{self.worker_logs()}")
            time.sleep(0.5)
        raise AssertionError(f"target did not converge: {diff}\n{self.worker_logs()}")


def _columns(dsn: str, table: str) -> list[str]:
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " ORDER BY ordinal_position",
                (schema, name),
            ).fetchall()
        ]


@pytest.fixture
def e2e(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[..., E2EPipeline]]:
    """Factory: ``e2e(ddl=[...], tables=[...], pipeline={...}, source={...})`` creates the tables
    in the source, prepares it, registers the connector, waits until it runs, and returns an
    :class:`E2EPipeline`. Workers, the connector and the slot are removed afterwards."""
    made: list[E2EPipeline] = []
    s = local_stack.settings
    client = ConnectClient(load_settings(None, {"CDC_CONNECT__URL": s.connect_url}).connect)
    connectors: list[str] = []

    def make(
        ddl: list[str],
        tables: list[str],
        pipeline: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> E2EPipeline:
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            for statement in ddl:
                conn.execute(statement)
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
                    "tables": tables,
                    "heartbeat_interval_ms": 1000,
                    **(source or {}),
                }
            ],
            "pipelines": [
                {
                    "name": unique("p"),
                    "source": name,
                    "target": {
                        "url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{databases.name}",
                        "password": "postgres",
                    },
                    "batch": {"max_wait_ms": 200},
                    "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 2},
                    **(pipeline or {}),
                }
            ],
            "metrics": {"enabled": False},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        settings = load_settings(path, {})
        src = settings.sources[0]
        source_prep.prepare(src)
        connector = src.resolved_connector_name
        client.apply(connector, build_connector_config(src))
        connectors.append(connector)
        client.wait_for(connector, lambda st: st.healthy, timeout_s=90)
        log_dir = tmp_path / f"logs-{name}"
        log_dir.mkdir()
        p = E2EPipeline(path, settings, databases.source_dsn, databases.target_dsn, tables, log_dir)
        made.append(p)
        return p

    yield make
    for p in made:
        for proc in p.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    for connector in connectors:
        client.delete(connector)
    client.close()
    with psycopg.connect(s.pg_dsn("source"), autocommit=True) as conn:
        drop_slots(conn, databases.name)
