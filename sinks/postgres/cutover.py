"""The cutover part of the ``Target`` seam on PostgreSQL: the durable cutover state in
``<control_schema>.cutover_state`` and the target's sequences (``setval``).

A session of its own, autocommit: every save is durable when it returns, which is what lets
``cutover status`` and ``cutover abort`` see a ``cutover run`` that was killed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pipeline.core.events import TableId
from sinks.base import SequenceSpec, TransientSinkError

Conn = psycopg.Connection[dict[str, Any]]

STATEMENT_TIMEOUT_MS = 30_000
"""``statement_timeout`` of the cutover session (ms): a frozen target fails a save instead of hanging."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PostgresCutover:
    """:class:`sinks.base.TargetCutover` on a PostgreSQL target (see there for the contract)."""

    def __init__(self, conninfo: str, application_name: str, control_schema: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._control = control_schema
        self._conn: Conn | None = None
        self._table_ready = False

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=self._application_name,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                    row_factory=dict_row,
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"cannot connect to the target: {_first_line(exc)}") from exc
        return self._conn

    def _execute(self, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            cur = self._connection().execute(query, params)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.OperationalError as exc:
            self.close()
            raise TransientSinkError(f"target cutover query failed: {_first_line(exc)}") from exc

    def _table(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._control), sql.Identifier("cutover_state"))

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        self._execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._control)))
        self._execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (pipeline text PRIMARY KEY, phase text NOT NULL,"
                " state jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(self._table())
        )
        self._table_ready = True

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored document of ``pipeline`` or None (also when the table does not exist yet)."""
        try:
            rows = self._execute(sql.SQL("SELECT state FROM {} WHERE pipeline = %s").format(self._table()), (pipeline,))
        except psycopg.errors.UndefinedTable:
            return None
        if not rows:
            return None
        state = rows[0]["state"]
        return dict(state) if isinstance(state, Mapping) else dict(json.loads(state))

    def save_state(self, pipeline: str, phase: str, state: Mapping[str, Any]) -> None:
        """Upsert ``pipeline``'s row (autocommit: durable on return)."""
        self._ensure_table()
        self._execute(
            sql.SQL(
                "INSERT INTO {} (pipeline, phase, state, updated_at) VALUES (%s, %s, %s, now())"
                " ON CONFLICT (pipeline) DO UPDATE SET phase = EXCLUDED.phase, state = EXCLUDED.state,"
                " updated_at = EXCLUDED.updated_at"
            ).format(self._table()),
            (pipeline, phase, Jsonb(dict(state))),
        )

    def _sequence_of(self, spec: SequenceSpec) -> TableId:
        """The target sequence feeding ``spec``'s table column (``pg_get_serial_sequence``: serial
        and identity columns), else the source sequence's own name."""
        if spec.table is None or spec.column is None or not self._exists(spec.table):
            return spec.name
        rows = self._execute(
            sql.SQL(
                "SELECT n.nspname AS schema, c.relname AS name FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)::regclass"
            ),
            (spec.table.schema, spec.table.table, spec.column),
        )
        return TableId(rows[0]["schema"], rows[0]["name"]) if rows else spec.name

    def _exists(self, table: TableId) -> bool:
        rows = self._execute(
            sql.SQL("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL AS present"),
            (table.schema, table.table),
        )
        return bool(rows and rows[0]["present"])

    def read_sequence(self, spec: SequenceSpec) -> int | None:
        """The target sequence's ``last_value`` (None when it does not exist or was never used)."""
        seq = self._sequence_of(spec)
        if not self._exists(seq):
            return None
        rows = self._execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq.schema, seq.table))
        )
        if not rows or not rows[0]["is_called"]:
            return None
        return int(rows[0]["last_value"])

    def set_sequence(self, spec: SequenceSpec, value: int) -> str:
        """``setval(seq, value, true)``; a missing sequence is created first (``CREATE SEQUENCE IF
        NOT EXISTS``, its schema too). Table defaults are left alone. Returns ``schema.sequence``."""
        seq = self._sequence_of(spec)
        ident = sql.Identifier(seq.schema, seq.table)
        if not self._exists(seq):
            self._execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(seq.schema)))
            self._execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(ident))
        self._execute(
            sql.SQL("SELECT setval(format('%%I.%%I', %s::text, %s::text)::regclass, %s, true)"),
            (seq.schema, seq.table, value),
        )
        return str(seq)

    def close(self) -> None:
        """Close the session."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
