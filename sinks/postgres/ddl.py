"""DDL of the PostgreSQL sink: control tables, target tables and their evolution.

Control tables live in the target's control schema (default ``cdc_control``):

- ``offsets(consumer_group, topic, kafka_partition) -> next_offset``: the source of truth of
  consumer positions (design invariant 1);
- ``tombstones(table_name, row_key) -> (commit_lsn, lsn)``: versioned deletes, so a replayed
  older insert cannot resurrect a deleted row;
- ``truncations(table_name) -> (commit_lsn, lsn)``: the newest truncate of a table; older
  changes arriving later (from other partitions or replays) are ignored;
- ``known_columns(table_name, column_name)``: every column the sink has seen in a target table
  it writes. A column (or table) listed here but gone from the catalog was dropped by hand; the
  sink then stops with :class:`TargetSchemaError` instead of silently re-creating it empty.
  It also records the source type last seen (``source_type``, at ``commit_lsn``/``lsn``) and
  ``dropped_at_source`` (when the column left the source's events; see :mod:`sinks.evolution`);
- ``schema_changes``: every source schema change applied (table, column, change, old and new
  type, source position, time).

- ``row_versions(table_name, row_key) -> (commit_lsn, lsn)``: each row's source position in
  ``target.versions: table`` mode (:mod:`sinks.postgres.versions`).

In ``columns`` mode (the default) every target table gets two version columns,
``__cdc_commit_lsn`` and ``__cdc_lsn`` (the :class:`pipeline.core.events.Position` of the
change that wrote the row), and keyless tables get ``__cdc_row_id`` as their primary key; in
``table`` mode a created table holds the source's columns only (keyless ones no primary key).
All identifiers go through ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from pipeline.core.events import Column, TableId
from sinks.postgres.types import pg_type

VERSION_COLUMNS = ("__cdc_commit_lsn", "__cdc_lsn")
ROW_ID = "__cdc_row_id"
OWN_PREFIX = "__cdc_"
ROW_VERSIONS = "row_versions"


def control_ddl(schema: str) -> list[sql.Composed]:
    """Statements creating the control schema and tables (idempotent)."""
    s = sql.Identifier(schema)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.offsets ("
            " consumer_group text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,"
            " next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (consumer_group, topic, kafka_partition))"
        ).format(s),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.tombstones ("
            " table_name text NOT NULL, row_key text NOT NULL, commit_lsn bigint NOT NULL, lsn bigint NOT NULL,"
            " deleted_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, row_key))"
        ).format(s),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.truncations ("
            " table_name text PRIMARY KEY, commit_lsn bigint NOT NULL, lsn bigint NOT NULL,"
            " truncated_at timestamptz NOT NULL DEFAULT now())"
        ).format(s),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.known_columns ("
            " table_name text NOT NULL, column_name text NOT NULL, seen_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (table_name, column_name))"
        ).format(s),
        *[
            sql.SQL("ALTER TABLE {}.known_columns ADD COLUMN IF NOT EXISTS {} {}").format(
                s, sql.Identifier(name), sql.SQL(kind)
            )
            for name, kind in KNOWN_COLUMN_FIELDS
        ],
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_changes ("
            " id bigserial PRIMARY KEY, table_name text NOT NULL, column_name text NOT NULL, change text NOT NULL,"
            " old_type text, new_type text, commit_lsn bigint, lsn bigint,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(s),
        row_versions_ddl(schema),
    ]


def row_versions_ddl(schema: str) -> sql.Composed:
    """``CREATE TABLE IF NOT EXISTS <schema>.row_versions`` (primary key ``(table_name, row_key)``)."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} (table_name text NOT NULL, row_key text NOT NULL,"
        " commit_lsn bigint NOT NULL, lsn bigint NOT NULL, PRIMARY KEY (table_name, row_key))"
    ).format(sql.Identifier(schema), sql.Identifier(ROW_VERSIONS))


# Columns added to known_columns for schema evolution (sinks.evolution.KnownColumn).
KNOWN_COLUMN_FIELDS = (
    ("source_type", "text"),
    ("commit_lsn", "bigint"),
    ("lsn", "bigint"),
    ("dropped_at_source", "timestamptz"),
)


@dataclass
class TableShape:
    """Columns a target table has (name -> SQL type as PostgreSQL reports it) and its key."""

    table: TableId
    columns: dict[str, str]
    key_columns: tuple[str, ...]

    @property
    def keyless(self) -> bool:
        """True when the table is keyed by ``__cdc_row_id`` (``columns`` mode) or has no primary
        key (``table`` mode)."""
        return self.key_columns in ((ROW_ID,), ())


def qualified(table: TableId) -> sql.Composed:
    """``"schema"."table"``."""
    return sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.table))


def lock_table_ddl(conn: psycopg.Connection[tuple[object, ...]], table: TableId) -> None:
    """Serialise DDL on ``table`` across workers for the current transaction (advisory lock)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdc-ddl:{table}",))


def read_shape(conn: psycopg.Connection[tuple[object, ...]], table: TableId) -> TableShape | None:
    """The table's columns and primary key, or None when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table.schema, table.table),
    ).fetchall()
    if not rows:
        return None
    keys = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
        (table.schema, table.table),
    ).fetchall()
    return TableShape(table, {str(r[0]): str(r[1]) for r in rows}, tuple(str(k[0]) for k in keys))


def create_table_sql(
    table: TableId, columns: tuple[Column, ...], key_columns: tuple[str, ...], versions: str = "columns"
) -> list[sql.Composed]:
    """CREATE SCHEMA/TABLE statements for a new target table.

    Key columns are NOT NULL and form the primary key. ``versions="columns"`` adds the version
    columns and gives a keyless table ``__cdc_row_id``; ``"table"`` adds nothing (a keyless table
    then has no primary key and gets ``REPLICA IDENTITY FULL``). Raises ValueError when a key
    column is not among ``columns``.
    """
    names = {c.name for c in columns}
    missing = [k for k in key_columns if k not in names]
    if missing:
        raise ValueError(f"{table}: key column(s) {missing} not in the row schema")
    defs = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name), sql.SQL(pg_type(c)), sql.SQL(" NOT NULL" if c.name in key_columns else "")
        )
        for c in columns
    ]
    if versions == "columns":
        defs += [sql.SQL("{} bigint NOT NULL").format(sql.Identifier(v)) for v in VERSION_COLUMNS]
    pk: sql.Composable | None = None
    if key_columns:
        pk = sql.SQL(", ").join(sql.Identifier(k) for k in key_columns)
    elif versions == "columns":
        defs.append(sql.SQL("{} text NOT NULL").format(sql.Identifier(ROW_ID)))
        pk = sql.Identifier(ROW_ID)
    if pk is not None:
        defs.append(sql.SQL("PRIMARY KEY ({})").format(pk))
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(qualified(table), sql.SQL(", ").join(defs)),
    ]
    if pk is None:
        # A table mode target may become a source (the cutover's reverse pipeline): without a
        # key, pgoutput publishes its updates and deletes only with REPLICA IDENTITY FULL
        # (PostgreSQL docs, "Logical Replication" > "Publication").
        statements.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(qualified(table)))
    return statements


def add_columns_sql(table: TableId, columns: list[Column]) -> list[sql.Composed]:
    """ALTER TABLE ... ADD COLUMN IF NOT EXISTS for columns new in the source (nullable)."""
    return [
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            qualified(table), sql.Identifier(c.name), sql.SQL(pg_type(c))
        )
        for c in columns
    ]
