"""Source tables from the PostgreSQL catalog, described the way Debezium describes them.

The target DDL (:func:`sinks.postgres.types.pg_type`, the SQLAlchemy sink's types) reads a
:class:`~pipeline.core.events.Column` built from Debezium's JSON schema with
``column.propagate.source.type``: the Connect type, the logical name, and the parameters
``__debezium.source.column.type`` (the type name in upper case, ``_TEXT`` for ``text[]``),
``...length`` and ``...scale`` (Debezium PostgreSQL connector docs, "Data type mappings" and
"column.propagate.source.type"). A bulk load builds the same :class:`Column` from
``pg_attribute`` so the target table it creates is the one the streaming path would create:
observed on Debezium 3.6 (tests/unit/fixtures/debezium/real_all_types.json), e.g. ``NUMERIC``
length 38 scale 10, unconstrained ``NUMERIC`` length 0 without scale, ``VARCHAR`` length 40,
``TIMESTAMP`` scale 6 (fractional digits), an enum ``MOOD`` as ``string`` /
``io.debezium.data.Enum``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from pipeline.control.bulkload.model import BulkLoadError, SourceTable
from pipeline.core.events import Column, TableId

# pg type name -> (Connect type, logical name), for the connector settings connectors.debezium
# uses (decimal.handling.mode=precise, time.precision.mode=adaptive_time_microseconds,
# interval.handling.mode=string).
_CONNECT: dict[str, tuple[str, str | None]] = {
    "int2": ("int16", None),
    "int4": ("int32", None),
    "int8": ("int64", None),
    "oid": ("int64", None),
    "float4": ("float", None),
    "float8": ("double", None),
    "bool": ("boolean", None),
    "text": ("string", None),
    "varchar": ("string", None),
    "bpchar": ("string", None),
    "name": ("string", None),
    "citext": ("string", None),
    "ltree": ("string", "io.debezium.data.Ltree"),
    "bytea": ("bytes", None),
    "uuid": ("string", "io.debezium.data.Uuid"),
    "json": ("string", "io.debezium.data.Json"),
    "jsonb": ("string", "io.debezium.data.Json"),
    "xml": ("string", "io.debezium.data.Xml"),
    "date": ("int32", "io.debezium.time.Date"),
    "time": ("int64", "io.debezium.time.MicroTime"),
    "timetz": ("string", "io.debezium.time.ZonedTime"),
    "timestamp": ("int64", "io.debezium.time.MicroTimestamp"),
    "timestamptz": ("string", "io.debezium.time.ZonedTimestamp"),
    "interval": ("string", None),
    "money": ("bytes", "org.apache.kafka.connect.data.Decimal"),
    "inet": ("string", None),
    "cidr": ("string", None),
    "macaddr": ("string", None),
    "macaddr8": ("string", None),
    "tsvector": ("string", None),
    "bit": ("boolean", None),
    "varbit": ("bytes", "io.debezium.data.Bits"),
}

_COLUMNS_SQL = """
SELECT a.attname, a.attnotnull, t.typname, t.typtype, t.typcategory, a.atttypmod,
       e.typname AS elem, b.typname AS base, format_type(a.atttypid, a.atttypmod) AS formatted
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_type b ON b.oid = t.typbasetype AND t.typtype = 'd'
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_KEY_SQL = """
SELECT a.attname FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::regclass AND (i.indisprimary OR (i.indisreplident AND NOT EXISTS (
    SELECT 1 FROM pg_index p WHERE p.indrelid = i.indrelid AND p.indisprimary)))
ORDER BY i.indisprimary DESC, k.ord
"""

_SIZE_SQL = """
SELECT c.oid, GREATEST(c.reltuples, -1)::bigint, c.relpages,
       pg_relation_size(c.oid) / current_setting('block_size')::bigint, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s
"""


def _modifiers(typname: str, typmod: int) -> dict[str, str]:
    """Debezium's ``length``/``scale`` parameters for a type modifier (``atttypmod``, -1 = none)."""
    if typname in ("varchar", "bpchar"):
        return {"length": str(typmod - 4)} if typmod >= 4 else {"length": "2147483647"}
    if typname in ("bit", "varbit"):
        return {"length": str(typmod)} if typmod >= 0 else {}
    if typname == "numeric":
        if typmod < 4:
            return {"length": "0"}
        return {"length": str(((typmod - 4) >> 16) & 0xFFFF), "scale": str((typmod - 4) & 0xFFFF)}
    if typname in ("timestamp", "timestamptz", "time", "timetz"):
        return {"scale": str(typmod if typmod >= 0 else 6)}
    return {}


def describe_column(
    name: str, not_null: bool, typname: str, typtype: str, typmod: int, elem: str | None, base: str | None
) -> Column:
    """One source column as Debezium describes it (see the module docstring). ``typtype`` is
    ``pg_type.typtype`` (``e`` enum, ``d`` domain), ``elem`` the element type name of an array,
    ``base`` the base type name of a domain."""
    params = {"__debezium.source.column.type": typname.upper(), "__debezium.source.column.name": name}
    own = base if typtype == "d" and base is not None else typname
    params.update({f"__debezium.source.column.{k}": v for k, v in _modifiers(own, typmod).items()})
    optional = not not_null
    if elem is not None:
        element = describe_column("", False, elem, "b", -1, None, None)
        items = Column("", element.type, True, element.logical)
        return Column(name, "array", optional, None, params, items)
    if typtype == "e":
        return Column(name, "string", optional, "io.debezium.data.Enum", params)
    if own == "numeric":
        free = typmod < 4
        decimal = "io.debezium.data.VariableScaleDecimal" if free else "org.apache.kafka.connect.data.Decimal"
        return Column(name, "struct" if free else "bytes", optional, decimal, params)
    kind, logical = _CONNECT.get(own, ("string", None))
    return Column(name, kind, optional, logical, params)


@dataclass(frozen=True, slots=True)
class CatalogTable:
    """A source table with, per column, its ``format_type`` text and its type name for the
    fast path's checks (``pg_type.typname``; ``enum`` for enums, the element's name for arrays,
    the base type's for domains)."""

    table: SourceTable
    formatted: dict[str, str]
    typnames: dict[str, str]


def _typname(typname: str, typtype: str, elem: str | None, base: str | None) -> str:
    if typtype == "e":
        return "enum"
    if elem is not None:
        return elem
    return base if typtype == "d" and base is not None else typname


def read_source_table(conn: psycopg.Connection[Any], table: TableId) -> CatalogTable:
    """The table from the catalog. Raises LookupError when the table does not exist,
    BulkLoadError for a partitioned table (its rows live in the partitions, which the ctid
    ranges of ``FROM ONLY`` would never read; the Debezium snapshot path reads them).
    Rows and pages: ``reltuples`` (-1 before the first ANALYZE, then 0 is reported) and the heap
    size in blocks (``pg_relation_size / block_size``)."""
    cur = conn.cursor(row_factory=tuple_row)
    size = cur.execute(_SIZE_SQL, (table.schema, table.table)).fetchone()
    if size is None:
        raise LookupError(f"source table {table} does not exist")
    if size[4] == "p":
        raise BulkLoadError(
            f"source table {table} is partitioned: the bulk load copies plain tables only"
            " (list its partitions in sources[].tables, or use initial_load: snapshot)"
        )
    oid, reltuples, relpages, pages = (int(v) for v in size[:4])
    rows = cur.execute(_COLUMNS_SQL, (table.schema, table.table)).fetchall()
    columns = tuple(describe_column(str(r[0]), bool(r[1]), str(r[2]), str(r[3]), int(r[5]), r[6], r[7]) for r in rows)
    formatted = {str(r[0]): str(r[8]) for r in rows}
    typnames = {str(r[0]): _typname(str(r[2]), str(r[3]), r[6], r[7]) for r in rows}
    keys = tuple(str(r[0]) for r in cur.execute(_KEY_SQL, (oid,)).fetchall())
    if reltuples < 0 and relpages == 0:
        estimated = pages * 100  # never analyzed: a guess, only for progress and chunk sizes
    elif relpages > 0 and reltuples >= 0:
        estimated = round(reltuples / relpages * pages)
    else:
        estimated = max(reltuples, 0)
    return CatalogTable(SourceTable(table, columns, keys, max(estimated, 0), pages), formatted, typnames)
