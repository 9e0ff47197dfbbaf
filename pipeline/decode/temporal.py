"""Converters of Debezium's and Connect's temporal types (PostgreSQL docs, "Temporal types"):
dates, times, timestamps and durations as exact Python values. Values Python cannot hold keep
PostgreSQL's text form, which PostgreSQL reads back unchanged: ``infinity``/``-infinity``,
``24:00:00``, and dates and timestamps BC or after 9999 (e.g. ``4713-01-01 BC``)."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any

from pipeline.decode.values import Converter, WrongTypeError, as_int, as_str

__all__ = ["TEMPORAL"]

_EPOCH = datetime(1970, 1, 1)  # timestamp without time zone: naive by design
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000

# PostgreSQL 'infinity'/'-infinity' as Debezium writes them (PostgreSQL docs, "TIMESTAMP type":
# 9223372036825200000 / -9223372036832400000, the pgjdbc PGStatement constants, in the unit of
# the semantic type; "Temporal types", nanoseconds: Long.MAX_VALUE / Long.MIN_VALUE). DATE infinity
# is written as the epoch day of LocalDate -5877611-06-21 / -22 (verified on Debezium 3.6.3).
_INFINITY = "infinity"
_NEG_INFINITY = "-infinity"
_TS_INFINITY_MS = {9223372036825200: _INFINITY, -9223372036832400: _NEG_INFINITY}
_TS_INFINITY_US = {9223372036825200000: _INFINITY, -9223372036832400000: _NEG_INFINITY}
_TS_INFINITY_NS = {2**63 - 1: _INFINITY, -(2**63): _NEG_INFINITY}
_DATE_INFINITY = {-2147472692: _INFINITY, -2147472691: _NEG_INFINITY}

_WIDE_ISO = re.compile(r"(?P<year>[+-]?\d{4,})(?P<rest>-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?)Z")


def _civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count from 1970-01-01, any range
    (H. Hinnant's days_from_civil inverse); year 0 is 1 BC."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def _pg_date_text(days: int) -> str:
    """PostgreSQL's text form of a date Python cannot hold (BC or after 9999), e.g.
    ``4713-01-01 BC``; PostgreSQL reads it back unchanged."""
    year, month, day = _civil(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _pg_timestamp_text(micros: int) -> str:
    days, rest = divmod(micros, _DAY_US)
    year, month, day = _civil(days)
    seconds, us = divmod(rest, 1_000_000)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{us:06d}"
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} {clock} BC"
    return f"{year:04d}-{month:02d}-{day:02d} {clock}"


def _date(value: Any) -> date | str:
    """``io.debezium.time.Date`` / ``org.apache.kafka.connect.data.Date``: days since the epoch
    (PostgreSQL docs, "Temporal types"). PostgreSQL ``infinity``/``-infinity`` -> that string;
    dates outside Python's range (BC, after 9999) -> PostgreSQL's text form (``4713-01-01 BC``)."""
    if type(value) is not int:
        raise WrongTypeError(f"expected an integer, got {type(value).__name__}")
    try:
        return date.fromordinal(_EPOCH_ORDINAL + value)
    except (ValueError, OverflowError):
        return _DATE_INFINITY.get(value) or _pg_date_text(value)


def _time_from_us(micros: int) -> time | str:
    if micros == _DAY_US:
        return "24:00:00"  # PostgreSQL allows 24:00:00, Python's time does not
    seconds, us = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return time(hour, minute, second, us)


def _time_ms(value: Any) -> time | str:
    """``io.debezium.time.Time`` / ``org.apache.kafka.connect.data.Time``: ms past midnight."""
    return _time_from_us(as_int(value) * 1000)


def _time_us(value: Any) -> time | str:
    """``io.debezium.time.MicroTime``: microseconds past midnight."""
    return _time_from_us(as_int(value))


def _time_ns(value: Any) -> time | str:
    """``io.debezium.time.NanoTime``: nanoseconds past midnight (PostgreSQL has microseconds,
    so the last three digits are always 0; anything below a microsecond is truncated)."""
    return _time_from_us(as_int(value) // 1000)


def _timestamp_converter(per_second: int, infinities: dict[int, str]) -> Converter:
    """Naive :class:`~datetime.datetime` (timestamp without time zone) from an epoch count in
    units of ``1/per_second`` s: ``io.debezium.time.Timestamp`` (ms), ``MicroTimestamp`` (µs),
    ``NanoTimestamp`` (ns), ``org.apache.kafka.connect.data.Timestamp`` (ms). PostgreSQL docs,
    "Temporal types" and "TIMESTAMP type" (+/-infinity -> the strings ``infinity``/``-infinity``;
    BC or after 9999 -> PostgreSQL's text form, e.g. ``0044-03-15 12:00:00.000000 BC``)."""
    to_us = 1_000_000 // per_second if per_second <= 1_000_000 else 0
    div = per_second // 1_000_000 if per_second > 1_000_000 else 1

    def convert(value: Any) -> datetime | str:
        if type(value) is not int:
            raise WrongTypeError(f"expected an integer, got {type(value).__name__}")
        special = infinities.get(value)  # NanoTimestamp's Long.MAX_VALUE is a valid datetime
        if special is not None:
            return special
        micros = value * to_us if to_us else value // div
        try:
            return _EPOCH + timedelta(0, 0, micros)
        except OverflowError:
            return _pg_timestamp_text(micros)

    return convert


def _zoned_timestamp(value: Any) -> datetime | str:
    """``io.debezium.time.ZonedTimestamp``: ISO-8601 in UTC, e.g. ``2024-02-29T11:14:15.123456Z``
    (PostgreSQL docs, "Basic types", TIMESTAMPTZ). Aware datetime, microseconds exact
    (``fromisoformat`` keeps 6 digits exactly). ``infinity``/``-infinity`` stay strings."""
    text = as_str(value)
    if text in (_INFINITY, _NEG_INFINITY):
        return text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        wide = _pg_zoned_text(text)
        if wide is None:
            raise
        return wide
    if parsed.tzinfo is None:
        raise ValueError(f"zoned timestamp without offset: {text[:40]!r}")
    return parsed


def _pg_zoned_text(text: str) -> str | None:
    """PostgreSQL text of an ISO-8601 UTC timestamp whose year Python cannot hold: Java writes
    ``+10000-01-01T00:00:00Z`` or proleptic years ``0000``/``-0044`` (year 0 = 1 BC)."""
    match = _WIDE_ISO.fullmatch(text)
    if match is None:
        return None
    year = int(match["year"])
    rest = match["rest"]
    if year <= 0:
        return f"{1 - year:04d}{rest}+00 BC"
    return f"{year:04d}{rest}+00"


def _zoned_time(value: Any) -> time | str:
    """``io.debezium.time.ZonedTime``: ISO-8601 time in UTC, e.g. ``11:14:15.654321Z``
    (PostgreSQL docs, "Basic types", TIMETZ). Aware time; ``24:00:00Z`` stays a string."""
    text = as_str(value)
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        if text.startswith("24:00:00"):
            return text
        raise
    if parsed.tzinfo is None:
        raise ValueError(f"zoned time without offset: {text[:40]!r}")
    return parsed


def _strip_z(text: str) -> str:
    return text[:-1] if text.endswith(("Z", "z")) else text


def _iso_date(value: Any) -> date:
    """``io.debezium.time.IsoDate`` (``time.precision.mode=isostring``): ``2017-09-15Z``."""
    return date.fromisoformat(_strip_z(as_str(value)))


def _iso_time(value: Any) -> time:
    """``io.debezium.time.IsoTime``: ``04:05:11.789Z`` -> naive time (time without time zone)."""
    return time.fromisoformat(_strip_z(as_str(value)))


def _iso_timestamp(value: Any) -> datetime:
    """``io.debezium.time.IsoTimestamp``: ``2019-07-09T02:28:57.123456Z`` -> naive datetime."""
    return datetime.fromisoformat(_strip_z(as_str(value)))


def _micro_duration(value: Any) -> timedelta:
    """``io.debezium.time.MicroDuration`` (INTERVAL, default ``interval.handling.mode=numeric``):
    microseconds, months counted as 365.25/12 days by Debezium (PostgreSQL docs, "Basic
    types"); exact for intervals without months/years. Use ``interval.handling.mode=string``
    (``io.debezium.time.Interval``, kept as the ISO-8601 string) when months must stay exact."""
    return timedelta(microseconds=as_int(value))


TEMPORAL: dict[str, Converter] = {
    "io.debezium.time.Date": _date,
    "org.apache.kafka.connect.data.Date": _date,
    "io.debezium.time.Time": _time_ms,
    "org.apache.kafka.connect.data.Time": _time_ms,
    "io.debezium.time.MicroTime": _time_us,
    "io.debezium.time.NanoTime": _time_ns,
    "io.debezium.time.Timestamp": _timestamp_converter(1000, _TS_INFINITY_MS),
    "org.apache.kafka.connect.data.Timestamp": _timestamp_converter(1000, _TS_INFINITY_MS),
    "io.debezium.time.MicroTimestamp": _timestamp_converter(1_000_000, _TS_INFINITY_US),
    "io.debezium.time.NanoTimestamp": _timestamp_converter(1_000_000_000, _TS_INFINITY_NS),
    "io.debezium.time.ZonedTimestamp": _zoned_timestamp,
    "io.debezium.time.ZonedTime": _zoned_time,
    "io.debezium.time.IsoDate": _iso_date,
    "io.debezium.time.IsoTime": _iso_time,
    "io.debezium.time.IsoTimestamp": _iso_timestamp,
    "io.debezium.time.MicroDuration": _micro_duration,
}
"""Temporal semantic types by schema ``name`` (the same for JSON and Avro: ints and strings)."""
