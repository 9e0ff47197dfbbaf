"""Column types and value adaptation of the SQLAlchemy sink (MariaDB/MySQL and SQLite).

A Debezium field schema (:class:`pipeline.core.events.Column`) is first classified into a
:class:`Kind` (from ``__debezium.source.column.type`` when the connector propagates source
types, else the Connect semantic name, else the Connect type: Debezium PostgreSQL connector
docs, "Data type mappings"), then mapped per dialect by :func:`column_type`. The full table is
in ``docs/targets.md``. Rules worth knowing:

- exact decimals: MariaDB/MySQL ``DECIMAL(p,s)`` when ``p <= 65`` and ``s <= 30`` (MariaDB
  "DECIMAL"); unconstrained ``numeric`` (``VariableScaleDecimal``) and larger ones are stored as
  their exact decimal *text* (``LONGTEXT``); SQLite has no exact decimal type, so decimals are
  always ``TEXT`` (a ``NUMERIC``/``REAL`` column would round them to 8-byte floats);
- time: ``DATETIME(6)``/``TIME(6)`` (microseconds) on MariaDB; ISO-8601 text on SQLite;
  ``timestamptz``/``timetz`` are normalised to UTC and stored without a zone;
- ``interval``: ``MicroDuration`` (``interval.handling.mode=numeric``) as a ``BIGINT`` of
  microseconds; ``Interval`` (``string`` mode, ISO-8601 text such as ``P0Y1M3DT4H5M6.789S``)
  as text, exact;
- JSON, arrays, structs and maps as JSON text (``JSON`` on MariaDB, an alias of ``LONGTEXT``
  with a validity check; ``TEXT`` on SQLite); UUIDs as ``CHAR(36)``/``TEXT``;
- key columns must be indexable on MariaDB: unbounded text becomes ``VARCHAR(768)`` and
  bytes ``VARBINARY(3072)`` (InnoDB's 3072-byte key limit at 4 bytes per utf8mb4 character);
- floats: MariaDB/MySQL ``DOUBLE`` cannot hold NaN or +/-Infinity and SQLite stores NaN as
  NULL, so such a value is refused (:class:`UnsupportedValueError`: the event goes to the DLQ)
  rather than silently changed.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from pipeline.core.events import Column, Geometry, Point

MYSQL = "mysql"
SQLITE = "sqlite"

# MariaDB "DECIMAL": precision up to 65 digits, scale up to 30.
MYSQL_MAX_DECIMAL_PRECISION = 65
MYSQL_MAX_DECIMAL_SCALE = 30
# InnoDB index key prefix limit is 3072 bytes; utf8mb4 takes up to 4 bytes per character.
MYSQL_KEY_VARCHAR = 768
MYSQL_KEY_VARBINARY = 3072
# Bounded text up to this length stays VARCHAR(n); longer becomes LONGTEXT (row size limit).
MYSQL_MAX_VARCHAR = 1024


class UnsupportedValueError(ValueError):
    """A value the target column cannot hold exactly (e.g. NaN in a MariaDB DOUBLE)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """The target-independent meaning of a column: ``name`` plus optional ``length``
    (characters), ``precision``/``scale`` (decimals; fractional-second digits for times)."""

    name: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None


_SOURCE: dict[str, str] = {
    "INT2": "int16",
    "SMALLSERIAL": "int16",
    "INT4": "int32",
    "SERIAL": "int32",
    "INT8": "int64",
    "BIGSERIAL": "int64",
    "OID": "int64",
    "FLOAT4": "float32",
    "FLOAT8": "float64",
    "BOOL": "bool",
    "TEXT": "text",
    "NAME": "text",
    "CITEXT": "text",
    "LTREE": "text",
    "XML": "text",
    "INET": "text",
    "CIDR": "text",
    "MACADDR": "text",
    "MACADDR8": "text",
    "TSVECTOR": "text",
    "VARCHAR": "text",
    "BPCHAR": "text",
    "BYTEA": "bytes",
    "UUID": "uuid",
    "JSON": "json",
    "JSONB": "json",
    "DATE": "date",
    "TIME": "time",
    "TIMETZ": "time",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamp",
    "INTERVAL": "interval",
    "NUMERIC": "decimal",
    "DECIMAL": "decimal",
    "MONEY": "decimal",
}
_LOGICAL: dict[str, str] = {
    "org.apache.kafka.connect.data.Decimal": "decimal",
    "io.debezium.data.VariableScaleDecimal": "decimal",
    "io.debezium.time.Date": "date",
    "org.apache.kafka.connect.data.Date": "date",
    "io.debezium.time.Time": "time",
    "io.debezium.time.MicroTime": "time",
    "io.debezium.time.NanoTime": "time",
    "org.apache.kafka.connect.data.Time": "time",
    "io.debezium.time.ZonedTime": "time",
    "io.debezium.time.Timestamp": "timestamp",
    "io.debezium.time.MicroTimestamp": "timestamp",
    "io.debezium.time.NanoTimestamp": "timestamp",
    "org.apache.kafka.connect.data.Timestamp": "timestamp",
    "io.debezium.time.ZonedTimestamp": "timestamp",
    "io.debezium.time.MicroDuration": "interval",
    "io.debezium.data.Json": "json",
    "io.debezium.data.Uuid": "uuid",
    "io.debezium.data.Bits": "bytes",
}
_CONNECT: dict[str, str] = {
    "int8": "int16",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "float32": "float32",
    "float64": "float64",
    "boolean": "bool",
    "string": "text",
    "bytes": "bytes",
    "struct": "json",
    "map": "json",
    "array": "json",
}


def _int_param(col: Column, name: str) -> int | None:
    raw = col.parameters.get(f"__debezium.source.column.{name}")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def classify(col: Column) -> Kind:
    """The :class:`Kind` of ``col``: source type first, then semantic name, then Connect type.

    Arrays (source type names starting with ``_`` or Connect ``array``) are ``json``.
    """
    source = (col.source_type or "").upper()
    if source.startswith("_") or col.type == "array":
        return Kind("json")
    if col.logical == "io.debezium.time.Interval":
        return Kind("text")  # interval.handling.mode=string: the exact ISO-8601 duration text
    name = _SOURCE.get(source) if source else None
    if name is None and col.logical is not None:
        name = _LOGICAL.get(col.logical)
    if name is None:
        name = _CONNECT.get(col.type, "text")
    length = _int_param(col, "length")
    scale = _int_param(col, "scale")
    if name == "decimal":
        if source == "MONEY":
            return Kind("decimal", precision=19, scale=2)
        if col.logical == "org.apache.kafka.connect.data.Decimal" and source == "":
            # Connect Decimal schema parameters (Kafka Connect "Decimal" logical type).
            p, s = col.parameters.get("connect.decimal.precision"), col.parameters.get("scale")
            return Kind(
                "decimal",
                precision=int(p) if p and p.isdigit() else None,
                scale=int(s) if s and s.isdigit() else None,
            )
        return Kind("decimal", precision=length if length and length > 0 else None, scale=scale)
    if name in ("time", "timestamp"):
        return Kind(name, scale=scale if scale is not None and 0 <= scale <= 6 else 6)
    if name == "text" and source in ("VARCHAR", "BPCHAR") and length and length > 0:
        return Kind("text", length=length)
    return Kind(name)


def column_type(kind: Kind, dialect: str, key: bool = False) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type of a target column of ``kind`` on ``dialect`` (``mysql`` covers
    MariaDB); ``key`` is True for primary-key columns (must be indexable on MariaDB)."""
    if dialect == SQLITE:
        return _sqlite_type(kind)
    return _mysql_type(kind, key)


def _sqlite_type(kind: Kind) -> sa.types.TypeEngine[Any]:
    # SQLite type affinity (sqlite.org "Datatypes In SQLite" 3.1): names with INT -> INTEGER,
    # CHAR/CLOB/TEXT -> TEXT, BLOB -> BLOB, REAL/FLOA/DOUB -> REAL, else NUMERIC. Exact values
    # (decimals, JSON) must not get NUMERIC affinity, so they are TEXT.
    simple: dict[str, sa.types.TypeEngine[Any]] = {
        "int16": sa.SmallInteger(),
        "int32": sa.Integer(),
        "int64": sa.BigInteger(),
        "interval": sa.BigInteger(),
        "float32": sa.REAL(),
        "float64": sa.Double(),
        "bool": sa.Boolean(create_constraint=False),
        "bytes": sa.LargeBinary(),
        "date": sa.Date(),
        "time": sa.Time(),
        "timestamp": sa.DateTime(),
    }
    if kind.name in simple:
        return simple[kind.name]
    if kind.name == "text" and kind.length:
        return sa.String(kind.length)
    return sa.Text()


def _mysql_type(kind: Kind, key: bool) -> sa.types.TypeEngine[Any]:
    fsp = kind.scale if kind.scale is not None else 6
    simple: dict[str, sa.types.TypeEngine[Any]] = {
        "int16": mysql.SMALLINT(),
        "int32": mysql.INTEGER(),
        "int64": mysql.BIGINT(),
        "interval": mysql.BIGINT(),
        "float32": mysql.FLOAT(),
        "float64": mysql.DOUBLE(),
        "bool": mysql.BOOLEAN(),
        "date": mysql.DATE(),
        "time": mysql.TIME(fsp=fsp),
        "timestamp": mysql.DATETIME(fsp=fsp),
        "uuid": mysql.CHAR(36),
    }
    if kind.name in simple:
        return simple[kind.name]
    if kind.name == "decimal":
        p, s = kind.precision, kind.scale or 0
        if p is not None and p <= MYSQL_MAX_DECIMAL_PRECISION and s <= MYSQL_MAX_DECIMAL_SCALE and s <= p:
            return mysql.DECIMAL(precision=p, scale=s)
        return mysql.VARCHAR(MYSQL_KEY_VARCHAR) if key else mysql.LONGTEXT()
    if kind.name == "bytes":
        return mysql.VARBINARY(MYSQL_KEY_VARBINARY) if key else mysql.LONGBLOB()
    if kind.name == "json" and not key:
        return mysql.JSON()
    if kind.name == "text" and kind.length and kind.length <= (MYSQL_KEY_VARCHAR if key else MYSQL_MAX_VARCHAR):
        return mysql.VARCHAR(kind.length)
    return mysql.VARCHAR(MYSQL_KEY_VARCHAR) if key else mysql.LONGTEXT()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Point):
        return {"x": value.x, "y": value.y, "srid": value.srid}
    if isinstance(value, Geometry):
        return {"wkb": value.wkb.hex(), "srid": value.srid}
    if isinstance(value, dt.timedelta):
        return _micros(value)
    return str(value)


def json_text(value: Any) -> str:
    """JSON text of a list/dict/struct value (decimals, UUIDs and times as strings, bytes hex)."""
    return orjson.dumps(value, default=_json_default).decode()


def _micros(value: dt.timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds


def utc_naive_time(value: dt.time) -> dt.time:
    """A zoned time moved to UTC, without zone (Debezium sends ``timetz`` in UTC already)."""
    offset = value.utcoffset() or dt.timedelta()
    moved = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(tzinfo=None)) - offset
    return moved.time()


def _adapt_temporal(value: dt.date | dt.time, dialect: str) -> Any:
    """Datetimes, dates and times: aware ones moved to UTC without zone; ISO-8601 text on SQLite."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds") if dialect == SQLITE else value
    if isinstance(value, dt.date):
        return value.isoformat() if dialect == SQLITE else value
    if value.tzinfo is not None:
        value = utc_naive_time(value)
    return value.isoformat(timespec="microseconds") if dialect == SQLITE else value


def _adapt_float(value: float, dialect: str) -> float:
    if math.isnan(value) or (math.isinf(value) and dialect != SQLITE):
        raise UnsupportedValueError(f"{value!r} cannot be stored in a {dialect} floating-point column")
    return value


def adapt(value: Any, dialect: str) -> Any:
    """The driver value of an event value for ``dialect``.

    Aware datetimes/times -> UTC without zone; decimals -> exact text (MariaDB parses it into
    DECIMAL columns exactly); UUIDs -> text; timedelta -> microseconds; lists, dicts and
    geometry structs -> JSON text; SQLite dates and times -> ISO-8601 text (microseconds).
    Raises UnsupportedValueError for NaN (both) and +/-Infinity floats (MariaDB/MySQL).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _adapt_float(value, dialect)
    if isinstance(value, dt.date | dt.time):
        return _adapt_temporal(value, dialect)
    if isinstance(value, dt.timedelta):
        return _micros(value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple | dict | Point | Geometry):
        return json_text(value)
    return str(value)
