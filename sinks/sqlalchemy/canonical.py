"""Canonical text of row values read back from any target, computed in Python.

The verifier compares a PostgreSQL source with a MariaDB/MySQL or SQLite target by turning
both sides' fetched values into the same text. What a value means is decided by the *source*
column's ``pg_type.typname`` (the target stores many types differently: decimals as text,
timestamps without zone, JSON and arrays as text, booleans as 0/1), and the rules undo what
:func:`sinks.sqlalchemy.types.adapt` did:

- ``numeric``: the decimal without trailing zeros, in positional notation (Debezium drops
  trailing zeros of unconstrained NUMERIC); ``NaN`` stays ``NaN``; with the exact option
  (typname :data:`NUMERIC_TEXT`) the decimal with its scale as stored (``1.50``);
- ``timestamptz``/``timetz``: moved to UTC, no zone; all times with 6 fractional digits;
- ``json``/``jsonb``: parsed and re-serialised with sorted keys; arrays (``_<type>``): the
  JSON list the sink wrote (source values serialised the way the sink serialises them);
- ``bool``: ``true``/``false``; ``bytea``: hex; ``uuid``: lower-case with dashes;
- ``interval``: microseconds with Debezium's month of 365.25/12 days (``MicroDuration``, or
  the ISO-8601 text of ``interval.handling.mode=string`` converted), so the source side must
  read intervals through :func:`interval_micros_sql`;
- everything else: ``str()``.

A row's text is the JSON array of its column texts (``null`` for NULL), so NULL and the empty
string differ. Pure code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

from sinks.sqlalchemy.types import json_text, utc_naive_time

_INTS = frozenset({"int2", "int4", "int8", "oid"})
_FLOATS = frozenset({"float4", "float8"})


def interval_micros_sql(column: str) -> str:
    """SQL (PostgreSQL) for an interval column's microseconds as Debezium's ``MicroDuration``
    computes them (months of 365.25/12 days). ``column`` must be an already-quoted identifier."""
    c = column
    return (
        f"round(((extract(year from {c}) * 12 + extract(month from {c})) * 30.4375"
        f" + extract(day from {c})) * 86400000000 + extract(hour from {c}) * 3600000000"
        f" + extract(minute from {c}) * 60000000 + extract(second from {c}) * 1000000)::bigint"
    )


_ISO_DURATION = re.compile(
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<d>-?\d+)D)?"
    r"(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?\d+(?:\.\d+)?)S)?)?$"
)


def iso_duration_micros(text: str) -> int:
    """Microseconds of a Debezium ``io.debezium.time.Interval`` string (ISO-8601 duration such
    as ``P1Y2M3DT4H5M6.78S``, components may be negative) with months of 365.25/12 days, the
    way ``MicroDuration`` counts them. Raises ValueError on other text."""
    m = _ISO_DURATION.match(text)
    if m is None:
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    g = {k: Decimal(v) if v else Decimal(0) for k, v in m.groupdict().items()}
    days = (g["y"] * 12 + g["mo"]) * Decimal("30.4375") + g["d"]
    micros = days * 86_400_000_000 + g["h"] * 3_600_000_000 + g["mi"] * 60_000_000 + g["s"] * 1_000_000
    return int(micros.to_integral_value(rounding=ROUND_HALF_UP))  # like PostgreSQL's round()


def _decimal(value: Any) -> Decimal | None:
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None


def _datetime(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    assert isinstance(value, dt.datetime)
    return value


def _time(value: Any) -> dt.time:
    if isinstance(value, str):
        value = dt.time.fromisoformat(value)
    if isinstance(value, dt.timedelta):  # MySQL TIME columns come back as timedelta
        value = (dt.datetime(2000, 1, 1) + value).time()
    if isinstance(value, dt.time) and value.tzinfo is not None:
        value = utc_naive_time(value)
    assert isinstance(value, dt.time)
    return value


def _array(value: Any) -> str:
    return json_text(json.loads(value) if isinstance(value, str | bytes) else value)


def _numeric(value: Any) -> str:
    d = _decimal(value)
    if d is None or not d.is_finite():
        return str(value)
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _numeric_text(value: Any) -> str:
    d = _decimal(value)
    return str(value) if d is None or not d.is_finite() else format(d, "f")


def _bool(value: Any) -> str:
    truth = value in ("1", "t", "true") if isinstance(value, str) else bool(value)
    return "true" if truth else "false"


def _date(value: Any) -> str:
    return (dt.date.fromisoformat(value) if isinstance(value, str) else value).isoformat()


def _json(value: Any) -> str:
    parsed = json.loads(value) if isinstance(value, str | bytes) else value
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()


def _interval(value: Any) -> str:
    if isinstance(value, dt.timedelta):
        return str((value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds)
    if isinstance(value, str) and value.lstrip("-").startswith("P"):
        return str(iso_duration_micros(value))
    return str(int(value))


def _other(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


_BY_TYPE: dict[str, Callable[[Any], str]] = {
    "numeric": _numeric,
    "numeric:text": _numeric_text,
    **dict.fromkeys(_INTS, lambda v: str(int(v))),
    **dict.fromkeys(_FLOATS, lambda v: repr(float(v))),
    "bool": _bool,
    **dict.fromkeys(("timestamp", "timestamptz"), lambda v: _datetime(v).isoformat(sep=" ", timespec="microseconds")),
    **dict.fromkeys(("time", "timetz"), lambda v: _time(v).isoformat(timespec="microseconds")),
    "date": _date,
    "json": _json,
    "jsonb": _json,
    "bytea": lambda v: bytes(v).hex(),
    "uuid": lambda v: str(uuid.UUID(str(v))),
    "interval": _interval,
}


NUMERIC_TEXT = "numeric:text"
"""The pseudo type name that compares a ``numeric`` column by its text (display scale kept)."""


def compared_types(typnames: Iterable[str], numeric_text_exact: bool) -> list[str]:
    """The type names :func:`row_text` is given: ``numeric`` becomes :data:`NUMERIC_TEXT` when
    ``numeric_text_exact``."""
    return [NUMERIC_TEXT if numeric_text_exact and t == "numeric" else t for t in typnames]


def canonical_value(value: Any, typname: str) -> str | None:
    """Canonical text of one value of a source column of type ``typname`` (see module docstring)."""
    if value is None:
        return None
    if typname.startswith("_"):
        return _array(value)
    return _BY_TYPE.get(typname, _other)(value)


def row_text(values: Sequence[Any], typnames: Sequence[str]) -> str:
    """Canonical text of a row: the JSON array of :func:`canonical_value` of each column."""
    return orjson.dumps([canonical_value(v, t) for v, t in zip(values, typnames, strict=True)]).decode()


def checksum(texts: Iterable[str]) -> tuple[int, str | None]:
    """``(count, md5 hex of the sorted texts joined by newlines)``; ``(0, None)`` when empty."""
    ordered = sorted(texts)
    if not ordered:
        return (0, None)
    return (len(ordered), hashlib.md5("\n".join(ordered).encode(), usedforsecurity=False).hexdigest())


def bucket_of(text: str, buckets: int) -> int:
    """Bucket of a row text: the first two bytes of its md5, modulo ``buckets``."""
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return ((digest[0] << 8) | digest[1]) % buckets
