"""Harness of the target contract suite: change events, targets built through
``sinks.factory.make_target`` on a fresh database per test (PostgreSQL database, MariaDB
databases, SQLite file), and backend-neutral reads, hand edits and locks through SQLAlchemy."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.core.batch import key_text
from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId
from pipeline.core.reduce import reduce_events
from pipeline.core.settings.models import PipelineSettings
from pipeline.localstack import LocalStack
from pipeline.localstack.config import MARIADB_PASSWORD, MARIADB_USER
from sinks.base import ApplyResult, Target
from sinks.factory import make_target
from sinks.sqlalchemy.ddl import physical, row_hash

KINDS = ("postgresql", "mariadb", "sqlite")
VERSIONS = ("columns", "table")
GROUP = "cdc.contract"
SOURCE_ITEMS = TableId("public", "items")
ITEM_COLUMNS = (
    Column("id", "int32", optional=False),
    Column("name", "string"),
    Column("amount", "bytes", logical="org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"}),
)
_offsets = count()


def ev(
    op: Op,
    pos: tuple[int, int],
    key: int | None,
    after: dict[str, object] | None = None,
    *,
    table: TableId = SOURCE_ITEMS,
    target: TableId | None = None,
    columns: tuple[Column, ...] | None = None,
    before: dict[str, object] | None = None,
    unavailable: frozenset[str] = frozenset(),
    key_columns: tuple[str, ...] = ("id",),
    key_values: dict[str, object] | None = None,
    snapshot: bool = False,
) -> ChangeEvent:
    """A change event of ``table`` (default ``public.items`` with ``id, name, amount``) at
    position ``pos`` = ``(commit_lsn, lsn)``; ``key`` fills ``{"id": key}`` unless
    ``key_values`` is given or the table is keyless."""
    if key_values is None and key is not None and key_columns:
        key_values = {"id": key}
    return ChangeEvent(
        topic="t",
        partition=0,
        offset=next(_offsets),
        table=table,
        op=op,
        position=Position(*pos),
        ts_ms=0,
        key=key_values,
        after=after,
        before=before,
        columns=columns or ITEM_COLUMNS,
        key_columns=key_columns,
        unavailable=unavailable,
        target=target,
        snapshot=snapshot,
    )


def norm(value: Any) -> Any:
    """Decimal text (SQLite, MariaDB LONGTEXT decimals) as Decimal, so rows compare across backends."""
    if isinstance(value, str) and "." in value and value.replace(".", "", 1).lstrip("-").isdigit():
        return Decimal(value)
    return value


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    """One target database of one backend kind, fresh for the test.

    ``settings`` is the pipeline's ``target`` section; :meth:`target` builds a Target from it
    (closed at teardown); ``engine`` reads back and edits the database by hand.
    """

    kind: str
    schema: str
    settings: dict[str, Any]
    engine: sa.Engine
    sqlite_file: Path | None = None
    targets: list[Target] = field(default_factory=list)
    versions: str = "columns"

    @property
    def items(self) -> TableId:
        """Where the source table ``public.items`` lands (the target's default schema)."""
        return TableId(self.schema, "items")

    @property
    def dialect(self) -> str:
        """The sink dialect that decides physical names: ``sqlite`` or ``mysql`` (PostgreSQL names alike)."""
        return "sqlite" if self.kind == "sqlite" else "mysql"

    def target(self, **overrides: Any) -> Target:
        """A Target built by ``make_target`` with the ``target`` section plus ``overrides``."""
        pipe = PipelineSettings.model_validate(
            {"name": "contract", "source": "src", "target": {**self.settings, **overrides}}
        )
        made = make_target(pipe)
        self.targets.append(made)
        return made

    def apply(
        self, target: Target, *events: ChangeEvent, offsets: dict[tuple[str, int], int] | None = None
    ) -> ApplyResult:
        """Reduce ``events`` and apply them with ``offsets`` for :data:`GROUP`."""
        return target.apply(reduce_events(events, self.schema), GROUP, offsets or {})

    def rows(self, table: TableId | None = None, cols: tuple[str, ...] = ("id", "name", "amount")) -> list[Any]:
        """Rows of ``cols`` of a target table (default: items), sorted, decimals normalised."""
        schema, name = physical(table or self.items, self.dialect)
        t = sa.table(name, *(sa.column(c) for c in cols), schema=schema)
        with self.engine.connect() as conn:
            got = conn.execute(sa.select(*t.c).order_by(*t.c)).all()
        return [tuple(norm(v) for v in r) for r in got]

    def positions(self, keys: list[int], table: TableId | None = None) -> list[tuple[int, int]]:
        """``(commit_lsn, lsn)`` stored for each ``id`` of ``keys`` (missing ones left out): the
        version columns in ``columns`` mode, ``<control_schema>.row_versions`` in ``table`` mode."""
        table = table or self.items
        if self.versions == "columns":
            schema, name = physical(table, self.dialect)
            t = sa.table(name, sa.column("id"), sa.column("__cdc_commit_lsn"), sa.column("__cdc_lsn"), schema=schema)
            with self.engine.connect() as conn:
                got = conn.execute(sa.select(t.c["__cdc_commit_lsn"], t.c["__cdc_lsn"]).where(t.c.id.in_(keys))).all()
            return sorted((int(a), int(b)) for a, b in got)
        schema, name = physical(TableId(self.settings["control_schema"], "row_versions"), self.dialect)
        key_col = "row_key" if self.kind == "postgresql" else "row_hash"
        rv = sa.table(name, sa.column("table_name"), sa.column(key_col), sa.column("commit_lsn"),
                      sa.column("lsn"), schema=schema)  # fmt: skip
        texts = [key_text([k]) for k in keys]
        wanted = texts if self.kind == "postgresql" else [row_hash(t) for t in texts]
        with self.engine.connect() as conn:
            got = conn.execute(
                sa.select(rv.c.commit_lsn, rv.c.lsn).where(rv.c.table_name == str(table), rv.c[key_col].in_(wanted))
            ).all()
        return sorted((int(a), int(b)) for a, b in got)

    def columns_of(self, table: TableId | None = None) -> list[str]:
        """Column names of a target table, in order."""
        schema, name = physical(table or self.items, self.dialect)
        with self.engine.connect() as conn:
            return [str(c["name"]) for c in sa.inspect(conn).get_columns(name, schema=schema)]

    def has_table(self, table: TableId) -> bool:
        """Whether ``table`` exists in the target."""
        schema, name = physical(table, self.dialect)
        with self.engine.connect() as conn:
            return sa.inspect(conn).has_table(name, schema=schema)

    def qualified(self, table: TableId) -> str:
        """The quoted, qualified physical name of ``table``."""
        schema, name = physical(table, self.dialect)
        prep = self.engine.dialect.identifier_preparer
        return prep.quote(name) if schema is None else f"{prep.quote_schema(schema)}.{prep.quote(name)}"

    def execute(self, statement: str) -> None:
        """Run one statement by hand (an operator's DDL), committed."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(statement)

    @contextlib.contextmanager
    def locked(self, table: TableId) -> Iterator[None]:
        """Hold a lock that blocks every write to ``table`` (SQLite: the whole file) while inside."""
        if self.kind == "sqlite":
            assert self.sqlite_file is not None
            conn = sqlite3.connect(self.sqlite_file, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()
            return
        with self.engine.connect() as sa_conn:
            if self.kind == "postgresql":
                sa_conn.exec_driver_sql(f"LOCK TABLE {self.qualified(table)} IN ACCESS EXCLUSIVE MODE")
                try:
                    yield
                finally:
                    sa_conn.rollback()
            else:
                sa_conn.exec_driver_sql(f"LOCK TABLES {self.qualified(table)} WRITE")
                try:
                    yield
                finally:
                    sa_conn.exec_driver_sql("UNLOCK TABLES")

    def close(self) -> None:
        """Close every target built and the engine."""
        for t in self.targets:
            t.close()
        self.engine.dispose()


@contextlib.contextmanager
def open_backend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str], versions: str = "columns"
) -> Iterator[Backend]:
    """A fresh :class:`Backend` of ``kind`` whose targets use ``target.versions: <versions>``;
    MariaDB databases named after it are dropped afterwards."""
    with _open_backend(kind, request, tmp_path, unique) as backend:
        backend.versions = versions
        backend.settings["versions"] = versions
        yield backend


@contextlib.contextmanager
def _open_backend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Backend]:
    schema = unique("s")
    if kind == "sqlite":
        path = tmp_path / "target.db"
        backend = Backend(
            kind,
            schema,
            {"url": f"sqlite:///{path}", "schema": schema, "control_schema": unique("ctl")},
            sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool),
            sqlite_file=path,
        )
        try:
            yield backend
        finally:
            backend.close()
        return
    stack: LocalStack = request.getfixturevalue("local_stack")
    s = stack.settings
    if kind == "postgresql":
        database = request.getfixturevalue("databases").name
        settings = {
            "url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{database}",
            "password": "postgres",
            "schema": schema,
            "control_schema": unique("ctl"),
        }
        read = sa.engine.make_url(s.pg_dsn("target", database)).set(drivername="postgresql+psycopg")
        backend = Backend(kind, schema, settings, sa.create_engine(read, poolclass=sa.pool.NullPool))
        try:
            yield backend
        finally:
            backend.close()
        return
    control = f"{schema}_ctl"
    settings = {
        "url": f"mariadb+pymysql://{MARIADB_USER}@{s.host}:{s.mariadb_port}/",
        "password": MARIADB_PASSWORD,
        "schema": schema,
        "control_schema": control,
    }
    backend = Backend(kind, schema, settings, sa.create_engine(s.mariadb_url(), poolclass=sa.pool.NullPool))
    try:
        yield backend
    finally:
        backend.close()
        drop_mariadb_databases(stack, schema)


def drop_mariadb_databases(stack: LocalStack, prefix: str) -> None:
    """Drop every MariaDB database whose name starts with ``prefix`` (a test's schemas)."""
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            for (name,) in cur.fetchall():
                if str(name).startswith(prefix):
                    cur.execute("DROP DATABASE IF EXISTS `" + str(name).replace("`", "``") + "`")
    finally:
        conn.close()


def run_bounded(call: Callable[[], object], timeout_s: float) -> tuple[bool, BaseException | None, float]:
    """Run ``call`` in a daemon thread for up to ``timeout_s`` seconds: ``(finished, error, elapsed_s)``.

    A call still blocked when the time is up is left running (the caller then releases what
    blocks it), so a missing stall guard fails the test instead of hanging the session.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    elapsed = time.monotonic() - started
    return (not thread.is_alive(), outcome[0] if outcome else None, elapsed)
