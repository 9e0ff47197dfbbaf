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
import sqlalchemy as sa
import yaml
from psycopg import sql

from connectors import source_prep
from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config
from pipeline.control.verify.plan import target_table
from pipeline.core.events import TableId
from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.root import Settings
from pipeline.localstack import LocalStack
from pipeline.transform.transformer import build_transformer
from sinks.sqlalchemy import canonical as portable
from sinks.sqlalchemy.ddl import physical
from tests.conftest import Databases, drop_slots

TARGETS = ("postgresql", "mariadb", "sqlite")


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
    target_kind: str = "postgresql"
    target_url: str = ""  # SQLAlchemy URL (with password) of a MariaDB/SQLite target

    @property
    def pipeline_name(self) -> str:
        return self.settings.pipelines[0].name

    def target_table(self, table: str) -> TableId:
        """Where the pipeline writes the source table ``schema.table`` (routes applied)."""
        pipe = self.settings.pipelines[0]
        schema, _, name = table.partition(".")
        source = TableId(schema, name)
        report = build_transformer(pipe.transforms, pipe.mask_salt).column_report(
            source, _columns(self.source_dsn, table)
        )
        return target_table(pipe, source, report)

    def target_values(self, table: str, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
        """Raw rows of the target copy of source ``table`` (default: the source's columns), sorted."""
        cols = columns or _columns(self.source_dsn, table)
        if self.target_kind == "postgresql":
            t = self.target_table(table)
            return table_rows(self.target_dsn, f"{t.schema}.{t.table}", cols)
        return sorted(_sa_rows(self.target_url, self.target_kind, self.target_table(table), cols), key=repr)

    def target_canonical(self, table: str) -> list[str] | None:
        """Canonical texts of the target copy (source column types), sorted; None when absent."""
        cols, types = _typed_columns(self.source_dsn, table)
        try:
            rows = _sa_rows(self.target_url, self.target_kind, self.target_table(table), cols)
        except sa.exc.DBAPIError:
            return None
        return sorted(portable.row_text(r, types) for r in rows)

    def source_canonical(self, table: str) -> list[str]:
        """Canonical texts of the source rows, sorted."""
        cols, types = _typed_columns(self.source_dsn, table)
        schema, _, name = table.partition(".")
        with psycopg.connect(self.source_dsn) as conn:
            select = [
                sql.SQL(portable.interval_micros_sql("{c}")).format(c=sql.Identifier(c))
                if t == "interval"
                else sql.Identifier(c)
                for c, t in zip(cols, types, strict=True)
            ]
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {}.{}").format(
                    sql.SQL(", ").join(select), sql.Identifier(schema), sql.Identifier(name)
                )
            ).fetchall()
        return sorted(portable.row_text(r, types) for r in rows)

    def target_snapshot(self, table: str) -> list[str]:
        """Every column of the target copy, version columns included, as sorted text."""
        t = self.target_table(table)
        if self.target_kind == "postgresql":
            with psycopg.connect(self.target_dsn) as conn:
                rows = conn.execute(
                    sql.SQL("SELECT t::text FROM {}.{} t").format(sql.Identifier(t.schema), sql.Identifier(t.table))
                ).fetchall()
            return sorted(r[0] for r in rows)
        engine = sa.create_engine(self.target_url, poolclass=sa.pool.NullPool)
        schema, name = physical(t, "sqlite" if self.target_kind == "sqlite" else "mysql")
        try:
            with engine.connect() as conn:
                tbl = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
                return sorted(repr(tuple(r)) for r in conn.execute(sa.select(tbl)).all())
        finally:
            engine.dispose()

    def make_sink(self) -> Any:
        """The pipeline's own sink (to read or reset stored offsets the way workers do)."""
        from sinks.factory import make_sink  # noqa: PLC0415 - the worker wiring is heavy

        return make_sink(self.settings.pipelines[0])

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
            diff = self._diff(tables) if self.target_kind != "postgresql" else ""
            for table in (tables or self.tables) if self.target_kind == "postgresql" else []:
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

    def _diff(self, tables: list[str] | None) -> str:
        """'' when every table's canonical rows are equal on a MariaDB/SQLite target, else why not."""
        for table in tables or self.tables:
            src = self.source_canonical(table)
            tgt = self.target_canonical(table)
            if tgt is None:
                return f"{table}: not created yet"
            if src != tgt:
                missing = sorted(set(src) - set(tgt))[:3]
                extra = sorted(set(tgt) - set(src))[:3]
                return f"{table}: source {len(src)} rows, target {len(tgt)}; missing {missing}, unexpected {extra}"
        return ""


def _typed_columns(dsn: str, table: str) -> tuple[list[str], list[str]]:
    """Column names and ``pg_type.typname`` of a source table, in order."""
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, name),
        ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def _sa_rows(url: str, kind: str, table: TableId, columns: list[str]) -> list[tuple[Any, ...]]:
    """Rows of ``columns`` of a MariaDB/SQLite target table (raw driver values)."""
    schema, name = physical(table, "sqlite" if kind == "sqlite" else "mysql")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            t = sa.table(name, *(sa.column(c) for c in columns), schema=schema)
            return [tuple(r) for r in conn.execute(sa.select(*t.c)).all()]
    finally:
        engine.dispose()


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
        target: str = "postgresql",
        share_source_with: E2EPipeline | None = None,
        versions: str = "columns",
    ) -> E2EPipeline:
        """``target`` is ``postgresql`` (default), ``mariadb`` (the stack's MariaDB, a database
        named like the test's databases for un-routed tables) or ``sqlite`` (a file in tmp_path).
        ``share_source_with`` makes a second pipeline (own consumer group) on the source and
        connector of an existing one: ``ddl`` then runs on the source and no connector is made.
        ``versions`` is the target's ``versions`` setting (``columns`` or ``table``)."""
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            for statement in ddl:
                conn.execute(statement)
        name = unique("s") if share_source_with is None else f"{unique('s')}_{len(made)}"
        target_doc, target_url = _target_doc(target, local_stack, databases, tmp_path / f"{name}.db")
        target_doc["versions"] = versions
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
                    "target": target_doc,
                    "batch": {"max_wait_ms": 200},
                    "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 2},
                    **(pipeline or {}),
                }
            ],
            "metrics": {"enabled": False},
        }
        if share_source_with is not None:
            shared = yaml.safe_load(share_source_with.config_path.read_text(encoding="utf-8"))
            doc["sources"] = shared["sources"]
            doc["pipelines"][0]["source"] = shared["sources"][0]["name"]
            doc["pipelines"][0]["name"] = f"{shared['pipelines'][0]['name']}_{len(made)}"
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        settings = load_settings(path, {})
        src = settings.sources[0]
        if share_source_with is None:  # else the other pipeline's connector feeds this one
            source_prep.prepare(src)
            connector = src.resolved_connector_name
            client.apply(connector, build_connector_config(src))
            connectors.append(connector)
            status = client.wait_for(connector, lambda st: st.healthy, timeout_s=90)
            assert status.healthy, f"connector {connector} not healthy after 90 s: {status}"
        log_dir = tmp_path / f"logs-{name}"
        log_dir.mkdir()
        p = E2EPipeline(path, settings, databases.source_dsn, databases.target_dsn, tables, log_dir)
        p.target_kind, p.target_url = target, target_url
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
    if any(p.target_kind == "mariadb" for p in made):
        drop_mariadb_databases(local_stack, databases.name)


def _target_doc(kind: str, stack: LocalStack, databases: Databases, sqlite_file: Path) -> tuple[dict[str, Any], str]:
    """The pipeline's ``target`` section and the SQLAlchemy URL to read it back (MariaDB/SQLite)."""
    s = stack.settings
    if kind == "postgresql":
        url = f"postgresql://postgres@{s.host}:{s.target_pg_port}/{databases.name}"
        return {"url": url, "password": "postgres"}, ""
    if kind == "mariadb":
        from pipeline.localstack.config import MARIADB_PASSWORD, MARIADB_USER  # noqa: PLC0415

        doc = {
            "url": f"mariadb+pymysql://{MARIADB_USER}@{s.host}:{s.mariadb_port}/",
            "password": MARIADB_PASSWORD,
            "schema": databases.name,
            "control_schema": f"{databases.name}_ctl",
        }
        return doc, s.mariadb_url()
    if kind == "sqlite":
        return {"url": f"sqlite:///{sqlite_file}"}, f"sqlite:///{sqlite_file}"
    raise ValueError(f"unknown e2e target {kind!r} (one of {TARGETS})")


def drop_mariadb_databases(stack: LocalStack, prefix: str) -> None:
    """Drop the MariaDB databases ``<prefix>`` and ``<prefix>_ctl`` (a test's target schema and
    control schema; tests that route tables elsewhere drop those databases themselves)."""
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            for db in (prefix, f"{prefix}_ctl"):
                cur.execute("DROP DATABASE IF EXISTS `" + db.replace("`", "``") + "`")
    finally:
        conn.close()
