"""PostgreSQL column types for target tables, from the Debezium event schema.

With ``column.propagate.source.type`` set on the connector, each field's schema carries
``__debezium.source.column.type`` (the source type name, e.g. ``NUMERIC``, ``VARCHAR``,
``_TEXT`` for ``text[]``), ``__debezium.source.column.length`` and
``__debezium.source.column.scale`` (Debezium connector docs, "column.propagate.source.type").
We use those for an exact target type when the name is a built-in PostgreSQL type we know.
Anything else (enums, domains, extension types) falls back to the Connect schema type
(Debezium PostgreSQL connector docs, "Data type mappings"): an enum becomes ``text``.

Type names from events never reach SQL unchecked: only names from the tables below are used,
and lengths and scales are integers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import orjson
from psycopg import sql

from pipeline.core.events import Column
from sinks.sqltypes import SqlType

# Built-in PostgreSQL types without modifiers, by the name Debezium reports (upper case).
_SIMPLE: dict[str, str] = {
    "INT2": "smallint",
    "SMALLSERIAL": "smallint",
    "INT4": "integer",
    "SERIAL": "integer",
    "INT8": "bigint",
    "BIGSERIAL": "bigint",
    "OID": "bigint",
    "FLOAT4": "real",
    "FLOAT8": "double precision",
    "BOOL": "boolean",
    "TEXT": "text",
    "NAME": "text",
    "BYTEA": "bytea",
    "UUID": "uuid",
    "JSON": "json",
    "JSONB": "jsonb",
    "DATE": "date",
    "INTERVAL": "interval",
    "XML": "xml",
    "INET": "inet",
    "CIDR": "cidr",
    "MACADDR": "macaddr",
    "MACADDR8": "macaddr8",
    "MONEY": "numeric(19,2)",
    "TSVECTOR": "tsvector",
    "LTREE": "text",
    "CITEXT": "text",
}
_WITH_LENGTH: dict[str, str] = {"VARCHAR": "varchar", "BPCHAR": "char", "BIT": "bit", "VARBIT": "varbit"}
_WITH_PRECISION: dict[str, str] = {
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "TIME": "time",
    "TIMETZ": "timetz",
}
# PostgreSQL's NUMERIC limits (docs, "Arbitrary Precision Numbers"): precision 1..1000.
_MAX_NUMERIC_PRECISION = 1000

# Fallbacks by Connect logical name, then by Connect type.
_BY_LOGICAL: dict[str, str] = {
    "org.apache.kafka.connect.data.Decimal": "numeric",
    "io.debezium.data.VariableScaleDecimal": "numeric",
    "io.debezium.time.Date": "date",
    "org.apache.kafka.connect.data.Date": "date",
    "io.debezium.time.Time": "time",
    "io.debezium.time.MicroTime": "time",
    "io.debezium.time.NanoTime": "time",
    "org.apache.kafka.connect.data.Time": "time",
    "io.debezium.time.ZonedTime": "timetz",
    "io.debezium.time.Timestamp": "timestamp",
    "io.debezium.time.MicroTimestamp": "timestamp",
    "io.debezium.time.NanoTimestamp": "timestamp",
    "org.apache.kafka.connect.data.Timestamp": "timestamp",
    "io.debezium.time.ZonedTimestamp": "timestamptz",
    "io.debezium.time.MicroDuration": "interval",
    "io.debezium.time.Interval": "interval",
    "io.debezium.data.Json": "jsonb",
    "io.debezium.data.Uuid": "uuid",
    "io.debezium.data.Xml": "xml",
    "io.debezium.data.Enum": "text",
    "io.debezium.data.EnumSet": "text",
    "io.debezium.data.Bits": "bytea",
    "io.debezium.data.Ltree": "text",
}
_BY_TYPE: dict[str, str] = {
    "int8": "smallint",
    "int16": "smallint",
    "int32": "integer",
    "int64": "bigint",
    "float32": "real",
    "float64": "double precision",
    "boolean": "boolean",
    "string": "text",
    "bytes": "bytea",
    "struct": "jsonb",
    "map": "jsonb",
}


def pg_type(col: Column) -> str:
    """SQL type text for ``col`` (built only from the tables in this module and integers)."""
    exact = _from_source_type(col)
    if exact is not None:
        return exact
    if col.type == "array":
        element = pg_type(col.items) if col.items is not None else "text"
        return f"{element}[]"
    if col.logical is not None and col.logical in _BY_LOGICAL:
        return _BY_LOGICAL[col.logical]
    return _BY_TYPE.get(col.type, "text")


def _int_param(col: Column, name: str) -> int | None:
    raw = col.parameters.get(f"__debezium.source.column.{name}")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _from_source_type(col: Column) -> str | None:
    name = (col.source_type or "").upper()
    if not name:
        return None
    if name.startswith("_"):
        element = _from_source_type(
            Column(
                col.name,
                col.items.type if col.items else "string",
                parameters={"__debezium.source.column.type": name[1:]},
            )
        )
        return f"{element}[]" if element is not None else None
    if name in _SIMPLE:
        return _SIMPLE[name]
    length = _int_param(col, "length")
    scale = _int_param(col, "scale")
    if name in _WITH_LENGTH:
        return f"{_WITH_LENGTH[name]}({length})" if length and 0 < length < 10_485_760 else _WITH_LENGTH[name]
    if name in _WITH_PRECISION:
        # 6 (microseconds) is PostgreSQL's maximum and default: write the plain type.
        if scale is not None and 0 <= scale < 6:
            return f"{_WITH_PRECISION[name]}({scale})"
        return _WITH_PRECISION[name]
    if name in ("NUMERIC", "DECIMAL"):
        if length and 0 < length <= _MAX_NUMERIC_PRECISION:
            return f"numeric({length},{scale or 0})"
        return "numeric"
    return None


_ALIASES = {
    "int2": ("int", 2),
    "smallint": ("int", 2),
    "int4": ("int", 4),
    "integer": ("int", 4),
    "int": ("int", 4),
    "int8": ("int", 8),
    "bigint": ("int", 8),
    "real": ("float", 4),
    "float4": ("float", 4),
    "double precision": ("float", 8),
    "float8": ("float", 8),
    "text": ("string", math.inf),
    "character varying": ("string", math.inf),
    "varchar": ("string", math.inf),
    "character": ("char", 1),
    "char": ("char", 1),
    "bpchar": ("char", 1),
    "numeric": ("numeric", math.inf),
    "decimal": ("numeric", math.inf),
}
_TIMES = {
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "time": "time",
    "time without time zone": "time",
    "timetz": "timetz",
    "time with time zone": "timetz",
}
_MODIFIED = re.compile(r"^([a-z ]+?)\s*\((\d+)(?:\s*,\s*(\d+))?\)\s*([a-z ]*)$")


def parse_pg_type(text: str) -> SqlType:
    """A ``format_type`` text (``character varying(50)``, ``timestamp(3) without time zone``,
    ``numeric(12,2)``, ``integer[]``) or a :func:`pg_type` text (``varchar(50)``,
    ``timestamptz``) as a :class:`SqlType`; unknown names keep their own name as family."""
    t = text.strip().lower()
    array = t.endswith("[]")
    if array:
        t = t.removesuffix("[]").strip()
    base, size, scale = t, None, None
    m = _MODIFIED.match(t)
    if m:
        base = (m.group(1) + (" " + m.group(4) if m.group(4) else "")).strip()
        size, scale = int(m.group(2)), int(m.group(3)) if m.group(3) else None
    if base in _TIMES:
        return SqlType(_TIMES[base], float(size) if size is not None else 6.0, 0, array)
    family, default_size = _ALIASES.get(base, (base, math.inf))
    if family == "numeric":
        return SqlType("numeric", float(size) if size is not None else math.inf, scale or 0, array)
    if family in ("string", "char"):
        return SqlType(family, float(size) if size is not None else default_size, 0, array)
    return SqlType(family, default_size, 0, array)


def adapt_value(value: Any, interval: bool) -> Any:
    """A decoded value in the form PostgreSQL's COPY and literals need: an ``interval`` column's
    int (microseconds, Debezium ``MicroDuration``) as a ``timedelta``, a JSON object as its text."""
    if interval and isinstance(value, int):
        return timedelta(microseconds=value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return value


def whole_row_match(columns: Mapping[str, str], values: Mapping[str, Any]) -> sql.Composed:
    """``c1 IS NOT DISTINCT FROM v1 AND ...`` over the ``values`` (column -> value) of the columns
    the table has (``columns``: column -> type text): how a keyless table's delete finds one equal
    row. ``json`` columns compare as text (json has no equality operator). Values are literals,
    not parameters, so a ``%`` in a column name cannot read as a placeholder."""
    as_text = sql.SQL("{}::text IS NOT DISTINCT FROM {}::text")
    equal = sql.SQL("{} IS NOT DISTINCT FROM {}")
    return sql.SQL(" AND ").join(
        (as_text if columns[c] == "json" else equal).format(
            sql.Identifier(c), sql.Literal(adapt_value(values[c], columns[c] == "interval"))
        )
        for c in values
        if c in columns
    )
