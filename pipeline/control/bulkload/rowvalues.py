"""Source rows read by the bulk load's rows path, as the exact Python values the Debezium decoder
gives for the same columns, so transforms, hooks and sinks cannot tell a bulk read from a
Debezium snapshot read.

Rows are read in PostgreSQL's binary format (independent of the session's ``DateStyle``,
``TimeZone``, ``IntervalStyle`` and ``extra_float_digits``), with loaders registered on the
reading cursor only. Where the binary value needs Debezium's treatment, the loader builds it;
temporal values go through the decoder's own converters (:data:`pipeline.decode.temporal.TEMPORAL`)
from the number Debezium would have sent. Types Debezium sends as PostgreSQL's text (enums, inet,
xml, json, ranges...) are selected with ``::text``.

Mappings (Debezium PostgreSQL connector docs, "Data type mappings", with the connector settings
of :mod:`connectors.debezium`: ``decimal.handling.mode=precise``,
``time.precision.mode=adaptive_time_microseconds``, ``interval.handling.mode=string``,
``binary.handling.mode=bytes``):

- ``date`` -> date (``infinity``/``-infinity`` -> those strings; BC / after 9999 -> PostgreSQL's text);
- ``time`` -> time (``24:00:00`` stays a string); ``timetz`` -> aware time in UTC (ZonedTime);
- ``timestamp`` -> naive datetime; ``timestamptz`` -> aware datetime in UTC (ZonedTimestamp);
- ``interval`` (and ``interval[]``) -> ``P<y>Y<m>M<d>DT<h>H<m>M<s>S`` (``io.debezium.time.Interval.
  toIsoString``) or, for a ``MicroDuration`` column, a timedelta with months of 365.25/12 days;
- ``numeric`` -> Decimal with the stored scale, NaN/Infinity -> None (precise mode has no value
  for them); ``money`` -> Decimal with 2 decimals;
- ``real`` -> the shortest decimal that rounds to the same single-precision value (what Java's
  ``Float.toString`` writes); ``double precision`` -> float;
- ``point`` -> :class:`~pipeline.core.events.Point` with Debezium's little-endian WKB;
- ``bit(1)`` -> bool; ``bit(n)``/``varbit`` -> bytes, little-endian (``io.debezium.data.Bits``);
- ``uuid`` -> UUID; ``bytea`` -> bytes; integers, bool, text, varchar, char (padded) as psycopg loads them;
  arrays element by element with the same loaders.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, time
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.numeric import NumericBinaryLoader

from pipeline.core.events import Column, Point
from pipeline.decode.temporal import TEMPORAL

__all__ = ["ColumnRead", "Interval", "interval_iso", "plan_columns", "register_loaders"]

# PostgreSQL's binary epoch is 2000-01-01; Debezium counts from 1970-01-01.
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
_DAY_US = 86_400_000_000
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_MONTH_US = 2_629_800_000_000  # 365.25 / 12 days, Debezium's MicroDuration.DAYS_PER_MONTH_AVG

_I = struct.Struct("!i")
_Q = struct.Struct("!q")
_QI = struct.Struct("!qi")
_QII = struct.Struct("!qii")
_DD = struct.Struct("!dd")
_F = struct.Struct("!f")
_F32 = struct.Struct(">f")

_MICRO_DURATION = "io.debezium.time.MicroDuration"
_date = TEMPORAL["io.debezium.time.Date"]
_micro_time = TEMPORAL["io.debezium.time.MicroTime"]
_micro_timestamp = TEMPORAL["io.debezium.time.MicroTimestamp"]

# Source types whose binary form psycopg already loads as the decoder's value (str, UUID,
# bytes...), or that a loader below handles; every other STRING-typed column is read as ::text.
_BINARY_OK = frozenset({"TEXT", "VARCHAR", "BPCHAR", "CHAR", "NAME", "UUID", "TIMESTAMPTZ", "TIMETZ", "INTERVAL"})


@dataclass(frozen=True, slots=True)
class Interval:
    """A PostgreSQL interval as stored: ``months``, ``days`` and ``micros`` (PostgreSQL docs,
    "Interval Input": the three fields are kept apart)."""

    months: int
    days: int
    micros: int


def interval_iso(value: Interval) -> str:
    """Debezium's ``io.debezium.time.Interval`` text of ``value``: ``P<y>Y<m>M<d>DT<h>H<m>M<s>S``,
    each field with the sign PostgreSQL (and pgjdbc's ``PGInterval``) gives it, seconds a plain
    decimal without trailing zeros (``P0Y0M3DT4H5M6.789S``)."""
    years = int(value.months / 12)
    months = value.months - years * 12
    sign = -1 if value.micros < 0 else 1
    rest = abs(value.micros)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds = (Decimal(rest) / Decimal(1_000_000)).normalize()
    text = format(seconds, "f")
    if sign < 0 and rest:
        text = "-" + text
    return f"P{years}Y{months}M{value.days}DT{sign * hours}H{sign * minutes}M{text}S"


def _micro_duration(value: Interval) -> Any:
    return TEMPORAL["io.debezium.time.MicroDuration"](value.months * _MONTH_US + value.days * _DAY_US + value.micros)


def _float32(single: float) -> float:
    """The shortest decimal that rounds to the same single-precision value (Java ``Float.toString``)."""
    if not math.isfinite(single):
        return single
    for digits in range(6, 10):
        candidate = float(f"{single:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == single:
            return candidate
    return single


class _DateLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        days = _I.unpack(data)[0]
        if days == _INT32_MAX:
            return "infinity"
        if days == _INT32_MIN:
            return "-infinity"
        return _date(days + _PG_EPOCH_DAYS)


class _TimeLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        return _micro_time(_Q.unpack(data)[0])


class _TimeTzLoader(Loader):
    """``timetz``: microseconds and the zone's offset in seconds *west* of UTC (PostgreSQL's
    ``timetz_send``); Debezium moves it to UTC (``ZonedTime``), wrapping around midnight."""

    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        micros, west = _QI.unpack(data)
        if micros == _DAY_US and west == 0:
            return "24:00:00Z"
        utc = (micros + west * 1_000_000) % _DAY_US
        seconds, us = divmod(utc, 1_000_000)
        return time(seconds // 3600, seconds // 60 % 60, seconds % 60, us, tzinfo=UTC)


class _TimestampLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        micros = _Q.unpack(data)[0]
        if micros == _INT64_MAX:
            return "infinity"
        if micros == _INT64_MIN:
            return "-infinity"
        return _micro_timestamp(micros + _PG_EPOCH_US)


class _TimestampTzLoader(_TimestampLoader):
    def load(self, data: Buffer) -> Any:
        value = super().load(data)
        if isinstance(value, str):
            # infinity, or a year Python cannot hold: PostgreSQL text of the UTC time
            return value if value.endswith("infinity") else _zoned_text(value)
        return value.replace(tzinfo=UTC)


def _zoned_text(naive: str) -> str:
    """``0044-03-15 12:00:00.000000 BC`` -> ``0044-03-15T12:00:00+00 BC`` (what the decoder
    makes of Java's ISO text of a year it cannot hold, fraction dropped when zero)."""
    bc = naive.endswith(" BC")
    stamp = naive.removesuffix(" BC")
    day, _, clock = stamp.partition(" ")
    clock = clock.rstrip("0").rstrip(".") if "." in clock else clock
    return f"{day}T{clock}+00" + (" BC" if bc else "")


class _IntervalLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        micros, days, months = _QII.unpack(data)
        return Interval(months, days, micros)


class _Float4Loader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        return _float32(_F.unpack(data)[0])


class _NumericLoader(NumericBinaryLoader):
    def load(self, data: Buffer) -> Any:
        value = super().load(data)
        return None if not value.is_finite() else value


class _MoneyLoader(Loader):
    """``money``: a 64-bit count of cents (``cash_send``) -> Decimal with 2 decimals, like
    Debezium's ``money.fraction.digits`` default."""

    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        return Decimal(_Q.unpack(data)[0]).scaleb(-2)


class _PointLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        x, y = _DD.unpack(data)
        return Point(x, y, wkb=b"\x01" + struct.pack("<Idd", 1, x, y), srid=None)


_LOADERS: dict[str, type[Loader]] = {
    "date": _DateLoader,
    "time": _TimeLoader,
    "timetz": _TimeTzLoader,
    "timestamp": _TimestampLoader,
    "timestamptz": _TimestampTzLoader,
    "interval": _IntervalLoader,
    "float4": _Float4Loader,
    "numeric": _NumericLoader,
    "money": _MoneyLoader,
    "point": _PointLoader,
}


def register_loaders(cursor: psycopg.ServerCursor[Any] | psycopg.Cursor[Any]) -> None:
    """Register this module's binary loaders on ``cursor`` only (the connection is untouched)."""
    for name, loader in _LOADERS.items():
        cursor.adapters.register_loader(name, loader)


@dataclass(frozen=True, slots=True)
class ColumnRead:
    """How one source column is selected and finished: ``expr`` in the SELECT list and
    ``finish`` applied to each non-null value (None: the loaded value is final)."""

    name: str
    expr: sql.Composable
    finish: Callable[[Any], Any] | None


def _bits(text: str) -> bytes:
    """``'1010'`` (PostgreSQL bit text, first bit first) -> Debezium Bits bytes: the bit string
    as a number, little-endian, in as many bytes as the length needs."""
    if not text:
        return b""
    return int(text, 2).to_bytes((len(text) + 7) // 8, "little")


def _source_type(column: Column) -> str:
    return (column.source_type or "").upper()


def _read(column: Column) -> ColumnRead:
    ident = sql.Identifier(column.name)
    source = _source_type(column)
    logical = column.logical
    if source == "BIT" and column.type == "boolean":
        return ColumnRead(column.name, sql.SQL("{}::text").format(ident), lambda v: v == "1")
    if logical == "io.debezium.data.Bits":
        return ColumnRead(column.name, sql.SQL("{}::text").format(ident), _bits)
    if source == "INTERVAL" or logical in ("io.debezium.time.Interval", "io.debezium.time.MicroDuration"):
        return ColumnRead(column.name, ident, _micro_duration if logical == _MICRO_DURATION else interval_iso)
    if source == "_INTERVAL":
        finish = (
            _micro_duration if column.items is not None and column.items.logical == _MICRO_DURATION else interval_iso
        )
        return ColumnRead(column.name, ident, lambda v: [None if e is None else finish(e) for e in v])
    if column.type == "string" and source not in _BINARY_OK:
        return ColumnRead(column.name, sql.SQL("{}::text").format(ident), None)
    items = column.items
    if column.type == "array" and items is not None and items.type == "string" and source.lstrip("_") not in _BINARY_OK:
        return ColumnRead(column.name, sql.SQL("{}::text[]").format(ident), None)
    return ColumnRead(column.name, ident, None)


def plan_columns(columns: Sequence[Column]) -> tuple[ColumnRead, ...]:
    """The SELECT expression and finishing step of every column, in order."""
    return tuple(_read(c) for c in columns)
