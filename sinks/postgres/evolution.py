"""PostgreSQL side of source schema evolution: type text -> :class:`~sinks.evolution.SqlType`,
the DDL of each :class:`~sinks.evolution.ColumnChange`, and the control rows that record them.

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
from psycopg import sql

from pipeline.core.events import TableId
from sinks.evolution import ColumnChange
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
