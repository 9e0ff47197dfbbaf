"""PostgreSQL SQL of verification, for any PostgreSQL database: the source (always PostgreSQL)
and a PostgreSQL target. One copy of the canonical row text, the key ranges and the catalog
reads, so the two sides of a server-side comparison cannot drift (rules: docs/design/verify.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from pipeline.core.events import TableId
from sinks.base import CatalogColumn, Checksum, ChecksumPlan, KeyRange

SESSION_SETTINGS = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)
"""Session settings the canonical text is computed under (PostgreSQL "Client Connection Defaults")."""


def pin_session(conn: psycopg.Connection[Any], statement_timeout_s: float | None = None) -> None:
    """Set :data:`SESSION_SETTINGS` (and ``statement_timeout``, seconds, when given) on ``conn``."""
    for name, value in SESSION_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    if statement_timeout_s is not None:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(int(statement_timeout_s * 1000)),))


class Kind(StrEnum):
    """How a column's value is turned into canonical text (docs/design/verify.md)."""

    TEXT = "text"
    NUMERIC = "numeric"
    JSON = "json"
    TIMETZ = "timetz"
    BYTEA = "bytea"


_KINDS = {"numeric": Kind.NUMERIC, "json": Kind.JSON, "jsonb": Kind.JSON, "timetz": Kind.TIMETZ, "bytea": Kind.BYTEA}
_CASTS = {Kind.NUMERIC: "numeric", Kind.JSON: "jsonb", Kind.TIMETZ: "timetz", Kind.BYTEA: "bytea"}


def canonical_kind(typname: str) -> Kind:
    """The :class:`Kind` of a column from its ``pg_type.typname`` (arrays, ``_numeric`` etc., are TEXT)."""
    return _KINDS.get(typname, Kind.TEXT)


def canonical_expr(column: sql.Composable, kind: Kind, native: bool = True, exact: bool = False) -> sql.Composable:
    """SQL giving the canonical text of ``column`` (an identifier).

    ``native`` is True when the column has the kind's own type on this side; False when it
    holds the value in another type (e.g. the target stored it as text): it is then cast
    through ``text`` first. ``exact``: a numeric keeps its display scale (``1.50``, not
    ``trim_scale``'s ``1.5``).
    """
    value: sql.Composable = column
    if kind is Kind.TEXT:
        return sql.SQL("({})::text").format(value)
    if not native:
        value = sql.SQL("({})::text::{}").format(value, sql.SQL(_CASTS[kind]))
    if kind is Kind.NUMERIC:
        return sql.SQL("({})::text" if exact else "trim_scale({})::text").format(value)
    if kind is Kind.JSON:
        return sql.SQL("({})::jsonb::text").format(value)
    if kind is Kind.TIMETZ:
        return sql.SQL("(({}) AT TIME ZONE 'UTC')::text").format(value)
    return sql.SQL("encode({}, 'hex')").format(value)


def values(row: Any) -> list[Any]:
    """The values of a dict or tuple row, in column order."""
    return list(row.values()) if isinstance(row, dict) else list(row)


def qualified(table: TableId) -> sql.Composed:
    """``"schema"."table"``."""
    return sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.table))


def side_table(plan: ChecksumPlan, side: str) -> TableId:
    """The plan's table on ``side`` (``source`` or ``target``)."""
    return plan.table if side == "source" else plan.target


def key_idents(plan: ChecksumPlan, side: str) -> list[sql.Composable]:
    """The key columns of ``side``, under ``COLLATE "C"`` when the plan says so."""
    out: list[sql.Composable] = []
    for column in plan.key:
        ident: sql.Composable = sql.Identifier(column.source if side == "source" else column.target)
        if plan.collate_c:
            ident = sql.SQL("{} COLLATE {}").format(ident, sql.Identifier("C"))
        out.append(ident)
    return out


def row_text(plan: ChecksumPlan, side: str) -> sql.Composable:
    """``ROW(<canonical c1>, ...)::text`` of the compared columns on ``side`` (source|target)."""
    parts = [
        canonical_expr(
            sql.Identifier(c.source if side == "source" else c.target),
            canonical_kind(c.typname),
            native=(side == "source" or c.same_type),
            exact=plan.numeric_text_exact,
        )
        for c in plan.columns
    ]
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(parts))


def range_where(plan: ChecksumPlan, side: str, key_range: KeyRange) -> tuple[sql.Composable, list[Any]]:
    """``WHERE`` text and parameters selecting ``low < key <= high`` (row-value comparison)."""
    keys = sql.SQL("ROW({})").format(sql.SQL(", ").join(key_idents(plan, side)))
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    low, high = key_range
    if low is not None:
        conditions.append(sql.SQL("{} > ROW({})").format(keys, sql.SQL(", ").join(sql.Placeholder() for _ in low)))
        params.extend(low)
    if high is not None:
        conditions.append(sql.SQL("{} <= ROW({})").format(keys, sql.SQL(", ").join(sql.Placeholder() for _ in high)))
        params.extend(high)
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


def read_columns(conn: psycopg.Connection[Any], table: TableId) -> list[CatalogColumn]:
    """Columns of ``table`` in order (empty when it does not exist); the collation ``default``
    is resolved to the database's ``datcollate``."""
    rows = conn.execute(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,"
        " CASE WHEN a.attcollation = 0 THEN NULL WHEN co.collname = 'default'"
        "  THEN (SELECT datcollate::text FROM pg_database WHERE datname = current_database())"
        "  ELSE co.collname::text END"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_collation co ON co.oid = a.attcollation"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table.schema, table.table),
    ).fetchall()
    return [CatalogColumn(*values(r)) for r in rows]


def read_primary_key(conn: psycopg.Connection[Any], table: TableId) -> list[str]:
    """Primary-key columns of ``table`` in key order (empty when none)."""
    rows = conn.execute(
        "SELECT a.attname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
        (table.schema, table.table),
    ).fetchall()
    return [str(values(r)[0]) for r in rows]


def count_rows(conn: psycopg.Connection[Any], table: TableId) -> int:
    """``count(*)`` of ``table``."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified(table))).fetchone()
    return int(values(row)[0])


def chunk_checksum(conn: psycopg.Connection[Any], plan: ChecksumPlan, side: str, key_range: KeyRange) -> Checksum:
    """Row count and ``md5(string_agg(<row text>, E'\\n' ORDER BY <row text> COLLATE "C"))`` of
    ``key_range`` on ``side``, in one statement (0/None when the target table is absent)."""
    if side == "target" and not plan.target_exists:
        return (0, None)
    where, params = range_where(plan, side, key_range)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), md5(string_agg(rt, E'\\n' ORDER BY rt COLLATE {c}))"
            " FROM (SELECT {rt} AS rt FROM {t}{w}) s"
        ).format(c=sql.Identifier("C"), rt=row_text(plan, side), t=qualified(side_table(plan, side)), w=where),
        params,
    ).fetchone()
    got = values(row)
    return (int(got[0]), got[1])


def bucket_checksums(conn: psycopg.Connection[Any], plan: ChecksumPlan, side: str, buckets: int) -> dict[int, Checksum]:
    """Per hash bucket (``0..buckets-1``, by the first two bytes of ``md5(row text)``): count and
    checksum of the sorted multiset of row texts (empty buckets are absent)."""
    if side == "target" and not plan.target_exists:
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT b, count(*), md5(string_agg(rt, E'\\n' ORDER BY rt COLLATE {c})) FROM ("
            " SELECT rt, ((get_byte(d, 0) << 8) | get_byte(d, 1)) %% %s AS b FROM ("
            "  SELECT rt, decode(md5(rt), 'hex') AS d FROM (SELECT {rt} AS rt FROM {t}) s0) s1) s GROUP BY b"
        ).format(c=sql.Identifier("C"), rt=row_text(plan, side), t=qualified(side_table(plan, side))),
        (buckets,),
    ).fetchall()
    return {int(v[0]): (int(v[1]), v[2]) for v in (values(r) for r in rows)}


class PgSide:
    """One PostgreSQL side of a server-side comparison (:class:`sinks.base.ChecksumSide`)."""

    def __init__(self, conn: psycopg.Connection[Any], plan: ChecksumPlan, side: str) -> None:
        self.conn = conn
        self.plan = plan
        self.side = side  # "source" or "target"

    def chunk(self, key_range: KeyRange) -> Checksum:
        """See :func:`chunk_checksum`."""
        return chunk_checksum(self.conn, self.plan, self.side, key_range)

    def buckets(self, buckets: int) -> dict[int, Checksum]:
        """See :func:`bucket_checksums`."""
        return bucket_checksums(self.conn, self.plan, self.side, buckets)

    def count(self) -> int:
        """See :func:`count_rows` (0 when the target table is absent)."""
        if self.side == "target" and not self.plan.target_exists:
            return 0
        return count_rows(self.conn, side_table(self.plan, self.side))
