"""The bulk-load part of the ``Target`` seam on PostgreSQL (:class:`sinks.base.TargetBulkLoad`):
the load state in ``<control_schema>.bulk_loads``, target tables created through the sink's own
DDL (:mod:`sinks.postgres.ddl`, with their ``known_columns`` rows, so the streaming path later
finds each table as its own), ``COPY ... FROM STDIN`` and the truncation of a partial load.

One session of its own. The COPY transactions run with ``synchronous_commit = off``: a load
interrupted by a crash is redone from scratch anyway (see ``pipeline.control.bulkload.run``),
so waiting for each chunk's WAL flush buys nothing (PostgreSQL docs, "Asynchronous Commit").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.core.events import Column, TableId
from sinks.base import CopyWriter, PreparedTable, TargetSchemaError, TransientSinkError
from sinks.evolution import KnownColumn
from sinks.postgres import ddl, evolution
from sinks.postgres.ddl import ROW_ID, VERSION_COLUMNS, qualified
from sinks.postgres.sink import is_transient
from sinks.postgres.types import pg_type

Conn = psycopg.Connection[tuple[Any, ...]]

STATE_TABLE = "bulk_loads"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PostgresBulkLoad:
    """:class:`sinks.base.TargetBulkLoad` on a PostgreSQL target (see there for the contract)."""

    supports_copy = True

    def __init__(self, conninfo: str, application_name: str, control_schema: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._control = control_schema
        self._conn: Conn | None = None
        self._ready = False

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._conninfo,
                    connect_timeout=10,
                    application_name=self._application_name,
                    # the input styles of a text COPY pinned as the source's output styles are
                    options="-c synchronous_commit=off -c DateStyle=ISO -c IntervalStyle=postgres",
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"cannot connect to the target: {_first_line(exc)}") from exc
            self._ready = False
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        conn = self._connection()
        try:
            with conn.transaction():
                if not self._ready:
                    for stmt in ddl.control_ddl(self._control):
                        conn.execute(stmt)
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} (pipeline text PRIMARY KEY, state jsonb NOT NULL,"
                            " updated_at timestamptz NOT NULL DEFAULT now())"
                        ).format(self._ctl(STATE_TABLE))
                    )
                yield conn
            self._ready = True
        except psycopg.Error as exc:
            if is_transient(exc):
                self.close()
                raise TransientSinkError(f"target bulk load failed: {_first_line(exc)}") from exc
            raise

    def _ctl(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._control), sql.Identifier(name))

    # ------------------------------------------------------------------ state

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored load state of ``pipeline``, or None."""
        with self._transaction() as conn:
            row = conn.execute(
                sql.SQL("SELECT state FROM {} WHERE pipeline = %s").format(self._ctl(STATE_TABLE)), (pipeline,)
            ).fetchone()
        return None if row is None else dict(row[0])

    def save_state(self, pipeline: str, state: Mapping[str, Any]) -> None:
        """Upsert ``pipeline``'s state document; committed when this returns."""
        with self._transaction() as conn:
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (pipeline, state) VALUES (%s, %s) ON CONFLICT (pipeline)"
                    " DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
                ).format(self._ctl(STATE_TABLE)),
                (pipeline, Jsonb(dict(state))),
            )

    def clear_state(self, pipeline: str) -> None:
        """Delete ``pipeline``'s state (none is fine)."""
        with self._transaction() as conn:
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(sql.SQL("DELETE FROM {} WHERE pipeline = %s").format(self._ctl(STATE_TABLE)), (pipeline,))

    # ------------------------------------------------------------------ tables

    def row_count(self, table: TableId) -> int:
        """Exact row count of ``table``; 0 when it is absent."""
        with self._transaction() as conn:
            if ddl.read_shape(conn, table) is None:
                return 0
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(table))).fetchone()
        return int(row[0]) if row else 0

    def truncate(self, tables: Sequence[TableId]) -> None:
        """``TRUNCATE`` the existing ones of ``tables`` and delete their tombstones, truncate
        watermarks and ``row_versions`` rows, in one committed transaction."""
        with self._transaction() as conn:
            conn.execute("SET LOCAL synchronous_commit = on")
            present = [t for t in tables if ddl.read_shape(conn, t) is not None]
            if present:
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(qualified(t) for t in present)))
            names = [str(t) for t in tables]
            for control in ("tombstones", "truncations", ddl.ROW_VERSIONS):
                conn.execute(sql.SQL("DELETE FROM {} WHERE table_name = ANY(%s)").format(self._ctl(control)), (names,))

    def prepare_table(self, table: TableId, columns: Sequence[Column], key_columns: Sequence[str]) -> PreparedTable:
        """Create ``table`` as the PostgreSQL sink would from these columns (``columns``
        versions mode), or add the columns it lacks, and record them in ``known_columns``.
        Raises TargetSchemaError when an existing table's key differs or it was written in
        ``table`` versions mode (no ``__cdc_*`` columns)."""
        cols, keys = tuple(columns), tuple(key_columns)
        with self._transaction() as conn:
            ddl.lock_table_ddl(conn, table)
            shape = ddl.read_shape(conn, table)
            if shape is None:
                for stmt in ddl.create_table_sql(table, cols, keys, "columns"):
                    conn.execute(stmt)
            else:
                missing = [c for c in cols if c.name not in shape.columns]
                for stmt in ddl.add_columns_sql(table, missing):
                    conn.execute(stmt)
            shape = ddl.read_shape(conn, table)
            assert shape is not None
            self._check(shape, keys)
            known = evolution.read_known(conn, self._ctl("known_columns"), table)
            rows = [KnownColumn(c.name, pg_type(c)) for c in cols if c.name not in known]
            if rows:
                evolution.write_known(conn, self._ctl("known_columns"), table, rows)
        extra = (*VERSION_COLUMNS, ROW_ID) if shape.keyless else VERSION_COLUMNS
        return PreparedTable(table, dict(shape.columns), shape.keyless, tuple(extra))

    @staticmethod
    def _check(shape: ddl.TableShape, keys: tuple[str, ...]) -> None:
        missing = [c for c in VERSION_COLUMNS if c not in shape.columns]
        if missing:
            raise TargetSchemaError(
                f"target table {shape.table} has no {', '.join(missing)}: a bulk load writes the version columns"
            )
        expected = keys or (ROW_ID,)
        if shape.key_columns != expected:
            raise TargetSchemaError(
                f"target table {shape.table} has primary key {list(shape.key_columns)}, the source {list(expected)}"
            )

    @contextmanager
    def copy_in(self, table: TableId, columns: Sequence[str], binary: bool) -> Iterator[CopyWriter]:
        """``COPY table (columns) FROM STDIN`` in one transaction, committed on a clean exit."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
            qualified(table),
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.SQL("binary" if binary else "text"),
        )
        with self._transaction() as conn, conn.cursor().copy(statement) as copy:
            yield copy

    def close(self) -> None:
        """Close the session."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
