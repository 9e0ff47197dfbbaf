"""PostgreSQL side of source schema evolution: the DDL of each
:class:`~sinks.evolution.ColumnChange`, and the control rows that record them (``known_columns``,
``schema_changes``; type texts are parsed by :func:`sinks.postgres.types.parse_pg_type`).

``ALTER COLUMN ... TYPE`` rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock
unless the change is binary-coercible: ``varchar(n)`` -> ``varchar(m>n)``/``text`` and
``numeric(p,s)`` -> unconstrained ``numeric`` are catalog-only; ``int`` -> ``bigint``,
``real`` -> ``double precision``, numeric precision/scale changes and timestamp precision
changes rewrite every row (PostgreSQL docs, "ALTER TABLE", Notes). ``ADD COLUMN ... DEFAULT``
with a constant is catalog-only (the "fast default", PostgreSQL 11+). All identifiers go
through ``psycopg.sql.Identifier``; type texts come only from :func:`sinks.postgres.types.pg_type`.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import sql

from pipeline.core.events import Position, TableId
from sinks.evolution import ColumnChange, KnownColumn
from sinks.postgres.ddl import qualified
from sinks.postgres.types import pg_type


def _default_literal(value: Any) -> sql.Composable:
    if isinstance(value, dict | list):
        return sql.Literal(orjson.dumps(value).decode())
    return sql.Literal(value)


def change_sql(table: TableId, change: ColumnChange) -> list[sql.Composed]:
    """The statements applying ``change`` on the target (empty for record-only kinds)."""
    t, c = qualified(table), sql.Identifier(change.name)
    if change.kind in ("added", "renamed") and change.column is not None:
        default = change.column.default
        stmt = sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(t, c, sql.SQL(pg_type(change.column)))
        if default is not None:
            stmt = stmt + sql.SQL(" DEFAULT {}").format(_default_literal(default))
        out = [stmt]
        if change.kind == "renamed" and change.renamed_from is not None:
            out.append(sql.SQL("UPDATE {} SET {} = {}").format(t, c, sql.Identifier(change.renamed_from)))
        return out
    if change.kind == "widened" and change.new_type is not None:
        return [sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(t, c, sql.SQL(change.new_type))]
    if change.kind == "dropped":
        return [sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(t, c)]
    if change.kind == "dropped_at_source":
        return [sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(t, c)]
    return []


Conn = psycopg.Connection[tuple[Any, ...]]


def read_known(conn: Conn, known_table: sql.Composable, table: TableId) -> dict[str, KnownColumn]:
    """The ``known_columns`` rows of ``table`` (``known_table``: the qualified control table)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT column_name, source_type, commit_lsn, lsn, dropped_at_source IS NOT NULL FROM {}"
            " WHERE table_name = %s"
        ).format(known_table),
        (str(table),),
    ).fetchall()
    return {
        str(r[0]): KnownColumn(
            str(r[0]),
            r[1],
            Position(int(r[2]), int(r[3])) if r[2] is not None and r[3] is not None else None,
            bool(r[4]),
        )
        for r in rows
    }


def write_known(conn: Conn, known_table: sql.Composable, table: TableId, rows: list[KnownColumn]) -> None:
    """Upsert ``rows`` into ``known_columns`` (``dropped_at_source`` set to now() when dropped)."""
    conn.cursor().executemany(
        sql.SQL(
            "INSERT INTO {} (table_name, column_name, source_type, commit_lsn, lsn, dropped_at_source)"
            " VALUES (%s, %s, %s, %s, %s, CASE WHEN %s THEN now() END) ON CONFLICT (table_name, column_name)"
            " DO UPDATE SET source_type = EXCLUDED.source_type, commit_lsn = EXCLUDED.commit_lsn,"
            " lsn = EXCLUDED.lsn, dropped_at_source = EXCLUDED.dropped_at_source"
        ).format(known_table),
        [
            (
                str(table),
                r.name,
                r.source_type,
                r.position.commit_lsn if r.position else None,
                r.position.lsn if r.position else None,
                r.dropped,
            )
            for r in rows
        ],
    )


def record_changes(
    conn: Conn, changes_table: sql.Composable, applied: list[ColumnChange], position: Position | None
) -> None:
    """One ``schema_changes`` row per applied change, at the batch's source ``position``."""
    conn.cursor().executemany(
        sql.SQL(
            "INSERT INTO {} (table_name, column_name, change, old_type, new_type, commit_lsn, lsn)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(changes_table),
        [
            (
                str(c.table),
                c.name,
                c.kind,
                c.old_type,
                c.new_type,
                position.commit_lsn if position else None,
                position.lsn if position else None,
            )
            for c in applied
        ],
    )
