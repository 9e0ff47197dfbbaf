"""Decode Debezium PostgreSQL change messages (Kafka Connect ``JsonConverter``, or Avro in the
Confluent wire format) into events.

Input: what confluent-kafka hands the runner for one message: ``topic``, ``partition``,
``offset``, ``key: bytes | None``, ``value: bytes | None``. Output: a
:class:`~pipeline.core.events.ChangeEvent`, or a :class:`~pipeline.core.events.Skip` for messages that are
consumed but never applied. Anything else raises :class:`~pipeline.core.errors.PoisonMessageError`
with a precise ``reason`` (the runner sends those to the DLQ).

Both ``JsonConverter`` layouts are accepted:

- ``schemas.enable=true`` (the default): ``{"schema": {...}, "payload": {...}}``. Values are
  converted to exact Python types from the field schemas (see :func:`converter_for`).
- ``schemas.enable=false``: the bare payload. Nothing says which type a field has, so values
  stay as JSON gave them (``ChangeEvent.columns`` is None); the TOAST placeholder is still
  recognised in every form Debezium writes it (see :func:`toast_forms`).

Hot path: the schema part of a message is not parsed again for every message. The bytes
between ``{"schema":`` and ``,"payload":`` are looked up in a cache of precomputed conversion
plans (first against the topic's previous schema, in place, then in a map keyed by the schema
bytes); only the payload is parsed. This is exact, not heuristic: a cached key is a complete
JSON object, and a JSON object is self-delimiting, so a match proves the split point is the
real end of the schema. Messages that are not laid out the way the ``JsonConverter`` writes
them (whitespace, other key order) are parsed whole and still cached by their canonical schema.
TOAST placeholder checks run only when a placeholder form occurs in the payload bytes.

Avro (``Decoder(avro_values=..., avro_keys=...)``, built by :func:`make_decoder` from the
settings): the writer schema comes from the Schema Registry by id (``pipeline.decode.registry``),
is turned back into the Connect schema (``pipeline.decode.avro.connect_schema``) and goes through the
same plans as JSON with ``wire="avro"`` (BYTES as raw bytes, FLOAT32 single precision): the
same exact values, column schemas and TOAST handling. A schema id the registry does not know is
poison; an unreachable registry raises ``RegistryUnavailableError``, a transient error (a
``sinks.base.TransientSinkError``) that is never turned into poison.

Positions: ``source.sequence``/``source.lsn`` are validated here and turned into a
:class:`~pipeline.core.events.Position` by :func:`~pipeline.core.events.position_from_source` (its
docstring holds the rule and the observed Debezium values it rests on).

Values Python cannot hold keep PostgreSQL's text form, which PostgreSQL reads back unchanged:
``infinity``/``-infinity`` dates and timestamps, ``24:00:00``, dates and timestamps BC or after
9999 (e.g. ``4713-01-01 BC``). A sink writes them as text into the typed column.

Debezium facts this module relies on were checked against Debezium 3.6 (the
PostgreSQL connector docs section named in each docstring) and against real messages captured
from the local stack (``tests/integration/test_decode_real_types.py``).
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import math
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeAlias

import orjson

from connectors.debezium import build_connector_config
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Column, Geometry, Op, Point, Position, Skip, TableId, position_from_source
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.decode.avro import AvroReader, WireFormatError
from pipeline.decode.registry import RegistryUnavailableError, SchemaRegistryClient, UnknownSchemaError

__all__ = [
    "DEFAULT_UNAVAILABLE_PLACEHOLDER",
    "BinaryHandlingMode",
    "Decoder",
    "DecoderConfig",
    "KafkaMessage",
    "bits_to_text",
    "converter_for",
    "make_decoder",
    "make_event",
    "toast_forms",
]

DEFAULT_UNAVAILABLE_PLACEHOLDER = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder`` (PostgreSQL docs, "Toasted values")."""

BinaryHandlingMode: TypeAlias = Literal["bytes", "base64", "base64-url-safe", "hex"]

Converter: TypeAlias = Callable[[Any], Any]

Wire: TypeAlias = Literal["json", "avro"]
"""How a Connect value is written: ``json`` (JsonConverter: BYTES as base64 text) or ``avro``
(Avro binary read by fastavro: BYTES as raw ``bytes``, FLOAT32 as a single-precision float)."""

# Debezium topic naming defaults (debezium-core AbstractTopicNamingStrategy, 3.x):
# heartbeat topic = "<topic.heartbeat.prefix>.<topic.prefix>" unless topic.heartbeat.name is set,
# transaction topic = "<topic.prefix>.<topic.transaction>".
_DEFAULT_HEARTBEAT_PREFIX = "__debezium-heartbeat"
_DEFAULT_TRANSACTION_TOPIC = "transaction"

# Value schema names of Debezium's non-change records (debezium SchemaFactory).
_HEARTBEAT_SCHEMA = "io.debezium.connector.common.Heartbeat"
_TRANSACTION_SCHEMA = "io.debezium.connector.common.TransactionMetadataValue"
_NOTIFICATION_SCHEMA = "io.debezium.connector.common.Notification"

_OPS: dict[str, Op] = {op.value: op for op in Op}
_NOT_SNAPSHOT = (None, "false", False)

_HEAD = b'{"schema":'
_SEP = b',"payload":'
_HEAD_LEN = len(_HEAD)
_SEP_LEN = len(_SEP)

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

_F32 = struct.Struct(">f")

_FLOAT_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class KafkaMessage(Protocol):
    """What :meth:`Decoder.decode_message` reads from a message (``confluent_kafka.Message``)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class _BadMessageError(Exception):
    """Internal: the message is malformed; ``str(exc)`` is the reason."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """What the decoder must know about the connector that produced the topics.

    Field names mirror Debezium connector properties (PostgreSQL connector docs, "Connector
    properties"); :meth:`from_connector_config` reads them from a connector configuration.

    - ``topic_prefix`` (``topic.prefix``): enables exact recognition of the transaction topic
      ``<prefix>.<transaction_topic>`` and of the default heartbeat topic. Without it, those
      records are still recognised by their shape.
    - ``heartbeat_topic_prefix`` (``topic.heartbeat.prefix``, default ``__debezium-heartbeat``):
      every topic ``<heartbeat_topic_prefix><delimiter>...`` is a heartbeat topic.
    - ``heartbeat_topic_name`` (``topic.heartbeat.name``): full heartbeat topic name override.
    - ``transaction_topic`` (``topic.transaction``, default ``transaction``).
    - ``topic_delimiter`` (``topic.delimiter``, default ``.``).
    - ``notification_topics``: topics of the ``sink`` notification channel
      (``notification.sink.topic.name``).
    - ``unavailable_value_placeholder`` (``unavailable.value.placeholder``): a ``hex:`` prefix
      means hex-encoded octets, as in Debezium.
    - ``binary_handling_mode`` (``binary.handling.mode``): how ``bytea`` is written when not as
      raw bytes; used to decode string ``bytea`` columns back to ``bytes`` (needs
      ``column.propagate.source.type`` so the decoder knows the column is ``BYTEA``).
    - ``max_cached_schemas``: bound of each schema-plan cache (cleared when full).
    """

    topic_prefix: str | None = None
    heartbeat_topic_prefix: str = _DEFAULT_HEARTBEAT_PREFIX
    heartbeat_topic_name: str | None = None
    transaction_topic: str = _DEFAULT_TRANSACTION_TOPIC
    topic_delimiter: str = "."
    notification_topics: frozenset[str] = frozenset()
    unavailable_value_placeholder: str = DEFAULT_UNAVAILABLE_PLACEHOLDER
    binary_handling_mode: BinaryHandlingMode = "bytes"
    max_cached_schemas: int = 4096

    @classmethod
    def from_connector_config(cls, props: Mapping[str, object]) -> DecoderConfig:
        """Build from a Debezium connector configuration (property name -> value).

        Reads ``topic.prefix``, ``topic.delimiter``, ``topic.heartbeat.prefix``,
        ``topic.heartbeat.name``, ``topic.transaction``, ``notification.sink.topic.name``,
        ``unavailable.value.placeholder`` and ``binary.handling.mode``; absent keys keep
        Debezium's defaults. Raises ValueError for an unknown ``binary.handling.mode``.
        """

        def get(name: str, default: str) -> str:
            value = props.get(name)
            return default if value is None else str(value)

        mode = get("binary.handling.mode", "bytes")
        if mode not in ("bytes", "base64", "base64-url-safe", "hex"):
            raise ValueError(f"binary.handling.mode: unknown mode {mode!r}")
        notification = props.get("notification.sink.topic.name")
        prefix = props.get("topic.prefix")
        heartbeat_name = props.get("topic.heartbeat.name")
        return cls(
            topic_prefix=None if prefix is None else str(prefix),
            heartbeat_topic_prefix=get("topic.heartbeat.prefix", _DEFAULT_HEARTBEAT_PREFIX),
            heartbeat_topic_name=None if heartbeat_name in (None, "") else str(heartbeat_name),
            transaction_topic=get("topic.transaction", _DEFAULT_TRANSACTION_TOPIC),
            topic_delimiter=get("topic.delimiter", "."),
            notification_topics=frozenset() if notification is None else frozenset({str(notification)}),
            unavailable_value_placeholder=get("unavailable.value.placeholder", DEFAULT_UNAVAILABLE_PLACEHOLDER),
            binary_handling_mode=mode,  # type: ignore[arg-type]  # checked just above
        )

    @property
    def placeholder_bytes(self) -> bytes:
        """The placeholder octets, as Debezium derives them (``hex:`` prefix = hex octets)."""
        text = self.unavailable_value_placeholder
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        return text.encode("utf-8")


# --------------------------------------------------------------------------- value converters


def _need(value: Any, kind: type) -> None:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _float(value: Any) -> float:
    """FLOAT32/FLOAT64. The JsonConverter (Jackson) writes NaN and the infinities as the JSON
    strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (verified on Debezium 3.6.3 / Kafka 4)."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if kind is str:
        try:
            return _FLOAT_SPECIAL[value]
        except KeyError:
            raise ValueError(f"not a number: {value[:40]!r}") from None
    raise TypeError(f"expected a number, got {kind.__name__}")


def _base64(value: Any) -> bytes:
    """Connect BYTES: the JsonConverter writes base64 (standard alphabet, padded)."""
    if type(value) is not str:
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    return binascii.a2b_base64(value, strict_mode=True)


def _hex_bytes(value: Any) -> bytes:
    return bytes.fromhex(_str(value))


def _base64_url(value: Any) -> bytes:
    text = _str(value)
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/"), strict_mode=True)


def _native_bytes(value: Any) -> bytes:
    """Connect BYTES read from Avro: already ``bytes``."""
    if type(value) is not bytes:
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def _float32(value: Any) -> float:
    """FLOAT32 read from Avro: the shortest decimal that rounds to the same single-precision
    value, as Java's ``Float.toString`` (hence the JsonConverter) writes it; so ``REAL 1.1`` is
    ``1.1`` in both formats, not ``1.100000023841858``."""
    if type(value) is not float:
        return _float(value)
    if not math.isfinite(value):
        return value
    single: float = _F32.unpack(_F32.pack(value))[0]
    for digits in range(6, 10):
        candidate = float(f"{single:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == single:
            return candidate
    return single


def _unscaled_decimal(raw: bytes, scale: int) -> Decimal:
    unscaled = int.from_bytes(raw, "big", signed=True)
    if scale == 0:
        return Decimal(unscaled)
    # Construction from a string is exact whatever the decimal context precision is.
    return Decimal(f"{unscaled}E{-scale}")


def _decimal_from_json(value: Any, scale: int) -> Decimal:
    kind = type(value)
    if kind is str:
        return _unscaled_decimal(binascii.a2b_base64(value, strict_mode=True), scale)
    # Kafka JsonConverter with decimal.format=NUMERIC writes the decimal value as a JSON number;
    # orjson reads it as int (exact) or float (exact only up to ~15 significant digits).
    if kind is int:
        return Decimal(value)
    if kind is float:
        return Decimal(repr(value))
    raise TypeError(f"expected a base64 string or a number, got {kind.__name__}")


def _decimal_converter(scale: int) -> Converter:
    """``org.apache.kafka.connect.data.Decimal`` (PostgreSQL docs, "Decimal types", precise mode):
    big-endian two's-complement unscaled integer bytes; the ``scale`` schema parameter places
    the decimal point. Result: an exact :class:`~decimal.Decimal` with that scale."""

    def convert(value: Any) -> Decimal:
        return _decimal_from_json(value, scale)

    return convert


def _native_decimal_converter(scale: int) -> Converter:
    """``Decimal`` read from Avro: the unscaled two's-complement bytes (Avro ``bytes`` with
    ``logicalType: decimal``, read raw) -> exact Decimal with ``scale``."""

    def convert(value: Any) -> Decimal:
        return _unscaled_decimal(_native_bytes(value), scale)

    return convert


def _variable_scale_decimal(value: Any) -> Decimal:
    """``io.debezium.data.VariableScaleDecimal`` (PostgreSQL docs, "Decimal types", NUMERIC
    without scale): struct ``{scale: INT32, value: BYTES}`` with the unscaled value."""
    _need(value, dict)
    scale = _int(value["scale"])
    return _unscaled_decimal(_base64(value["value"]), scale)


def _native_variable_scale_decimal(value: Any) -> Decimal:
    """:func:`_variable_scale_decimal` read from Avro (``value`` is raw bytes)."""
    _need(value, dict)
    return _unscaled_decimal(_native_bytes(value["value"]), _int(value["scale"]))


def _decimal_text(value: Any) -> Decimal:
    """``decimal.handling.mode=string``: the formatted number (``NAN`` for NaN)."""
    return Decimal(_str(value))


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
        raise TypeError(f"expected an integer, got {type(value).__name__}")
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
    return _time_from_us(_int(value) * 1000)


def _time_us(value: Any) -> time | str:
    """``io.debezium.time.MicroTime``: microseconds past midnight."""
    return _time_from_us(_int(value))


def _time_ns(value: Any) -> time | str:
    """``io.debezium.time.NanoTime``: nanoseconds past midnight (PostgreSQL has microseconds,
    so the last three digits are always 0; anything below a microsecond is truncated)."""
    return _time_from_us(_int(value) // 1000)


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
            raise TypeError(f"expected an integer, got {type(value).__name__}")
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
    text = _str(value)
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
    text = _str(value)
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
    return date.fromisoformat(_strip_z(_str(value)))


def _iso_time(value: Any) -> time:
    """``io.debezium.time.IsoTime``: ``04:05:11.789Z`` -> naive time (time without time zone)."""
    return time.fromisoformat(_strip_z(_str(value)))


def _iso_timestamp(value: Any) -> datetime:
    """``io.debezium.time.IsoTimestamp``: ``2019-07-09T02:28:57.123456Z`` -> naive datetime."""
    return datetime.fromisoformat(_strip_z(_str(value)))


def _micro_duration(value: Any) -> timedelta:
    """``io.debezium.time.MicroDuration`` (INTERVAL, default ``interval.handling.mode=numeric``):
    microseconds, months counted as 365.25/12 days by Debezium (PostgreSQL docs, "Basic
    types"); exact for intervals without months/years. Use ``interval.handling.mode=string``
    (``io.debezium.time.Interval``, kept as the ISO-8601 string) when months must stay exact."""
    return timedelta(microseconds=_int(value))


_UUID_NEW = uuid.UUID.__new__
_SET = object.__setattr__
_UUID_SAFE = uuid.SafeUUID.unknown


def _uuid(value: Any) -> uuid.UUID:
    """``io.debezium.data.Uuid``: the canonical text form -> :class:`uuid.UUID`.

    The canonical 36-character form is built directly (the same two slots ``UUID.__init__``
    sets, at a third of its cost); anything else goes through ``uuid.UUID()``."""
    if type(value) is str and len(value) == 36:
        digits = value.replace("-", "")
        if len(digits) == 32 and digits.isascii() and digits.isalnum() and value[8] == "-" and value[23] == "-":
            result = _UUID_NEW(uuid.UUID)
            _SET(result, "int", int(digits, 16))
            _SET(result, "is_safe", _UUID_SAFE)
            return result
    return uuid.UUID(_str(value))


def _point_converter(wkb_bytes: Converter) -> Converter:
    """``io.debezium.data.geometry.Point`` (PostgreSQL docs, "Basic types", POINT)."""

    def convert(value: Any) -> Point:
        _need(value, dict)
        wkb = value.get("wkb")
        srid = value.get("srid")
        return Point(
            x=_float(value["x"]),
            y=_float(value["y"]),
            wkb=None if wkb is None else wkb_bytes(wkb),
            srid=None if srid is None else _int(srid),
        )

    return convert


def _geometry_converter(geography: bool, wkb_bytes: Converter = _base64) -> Converter:
    """``io.debezium.data.geometry.Geometry``/``Geography`` (PostgreSQL docs, "PostGIS types")."""

    def convert(value: Any) -> Geometry:
        _need(value, dict)
        srid = value.get("srid")
        return Geometry(wkb=wkb_bytes(value["wkb"]), srid=None if srid is None else _int(srid), geography=geography)

    return convert


def bits_to_text(value: bytes, length: int) -> str:
    """PostgreSQL text form (``'1010'``) of an ``io.debezium.data.Bits`` value.

    Debezium writes the bits little-endian (bit 0 = lowest bit of byte 0, PostgreSQL docs,
    "Basic types", BIT); ``length`` is the bit count (the ``length`` schema parameter for
    ``BIT(n)``; ``BIT VARYING`` values carry no exact length, so trailing zero bits of the last
    byte cannot be told apart). Raises ValueError if ``length`` needs more bytes than given.
    """
    if length > len(value) * 8:
        raise ValueError(f"{length} bits need {(length + 7) // 8} bytes, got {len(value)}")
    number = int.from_bytes(value, "little")
    return "".join("1" if number >> (length - 1 - i) & 1 else "0" for i in range(length))


def _array_converter(item: Converter | None) -> Converter:
    if item in _KEPT:
        item = None  # elements kept as JSON gave them; the list itself is still checked

    def convert(value: Any) -> list[Any]:
        _need(value, list)
        if item is None:
            return value  # type: ignore[no-any-return]
        return [None if element is None else item(element) for element in value]

    return convert


def _map_converter(key: Converter | None, val: Converter | None) -> Converter:
    """Connect MAP: a JSON object when keys are strings, else an array of ``[key, value]``."""

    def convert(value: Any) -> dict[Any, Any]:
        if type(value) is dict:
            pairs = value.items()
        else:
            _need(value, list)
            pairs = value
        out: dict[Any, Any] = {}
        for pair in pairs:
            # JSON: [key, value] pairs; Avro (non-string keys): MapEntry records {key, value}.
            k, v = (pair["key"], pair["value"]) if isinstance(pair, dict) else pair
            out[k if key is None or k is None else key(k)] = v if val is None or v is None else val(v)
        return out

    return convert


@dataclass(frozen=True, slots=True)
class _RowPlan:
    """Precomputed conversion of one struct: converters, type checks of values kept as they
    are (int, str, bool), and TOAST placeholder forms per column."""

    converters: tuple[tuple[str, Converter], ...]
    checks: tuple[tuple[str, type], ...]
    toast: tuple[tuple[str, tuple[Any, ...]], ...]


def _struct_converter(plan: _RowPlan) -> Converter:
    def convert(value: Any) -> dict[str, Any]:
        _need(value, dict)
        out = dict(value)
        _apply(out, plan)
        return out

    return convert


def _apply(row: dict[str, Any], plan: _RowPlan) -> None:
    """Convert ``row`` in place. Raises _BadMessageError naming the column."""
    name = ""
    try:
        for name, conv in plan.converters:
            v = row.get(name)
            if v is not None:
                row[name] = conv(v)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
        raise _BadMessageError(f"{name}: cannot convert {_preview(row.get(name))}: {exc}") from None
    for name, kind in plan.checks:
        v = row.get(name)
        if v is not None and type(v) is not kind:
            raise _BadMessageError(f"{name}: expected {kind.__name__}, got {type(v).__name__} {_preview(v)}")


_LOGICAL: dict[str, Converter] = {
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
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
    "io.debezium.data.Uuid": _uuid,
    "io.debezium.data.geometry.Point": _point_converter(_base64),
    "io.debezium.data.geometry.Geometry": _geometry_converter(geography=False),
    "io.debezium.data.geometry.Geography": _geometry_converter(geography=True),
}

# The same semantic types read from Avro, where BYTES are raw bytes.
_LOGICAL_AVRO: dict[str, Converter] = {
    **_LOGICAL,
    "io.debezium.data.VariableScaleDecimal": _native_variable_scale_decimal,
    "io.debezium.data.geometry.Point": _point_converter(_native_bytes),
    "io.debezium.data.geometry.Geometry": _geometry_converter(geography=False, wkb_bytes=_native_bytes),
    "io.debezium.data.geometry.Geography": _geometry_converter(geography=True, wkb_bytes=_native_bytes),
}

# Kept as str (exact text): Json (the sink casts to jsonb), Xml, Enum, Ltree, Interval
# (interval.handling.mode=string), Tsvector, and any other string-typed semantic type.
_PRIMITIVE: dict[str, Converter] = {
    "int8": _int,
    "int16": _int,
    "int32": _int,
    "int64": _int,
    "float": _float,
    "float32": _float,
    "double": _float,
    "float64": _float,
    "boolean": _bool,
    "string": _str,
    "bytes": _base64,
}

_PRIMITIVE_AVRO: dict[str, Converter] = {**_PRIMITIVE, "bytes": _native_bytes, "float32": _float32, "float": _float32}

# Converters that only check the value's type and return it unchanged.
_KEPT: dict[Converter | None, type] = {_int: int, _str: str, _bool: bool, _native_bytes: bytes}

_BINARY_TEXT: dict[str, Converter] = {"base64": _base64, "base64-url-safe": _base64_url, "hex": _hex_bytes}


def converter_for(
    schema: Mapping[str, Any], binary_mode: BinaryHandlingMode = "bytes", wire: Wire = "json"
) -> Converter:
    """The function turning one JSON value of the field ``schema`` into its exact Python value.

    With ``wire="avro"`` the value is one read from Avro by fastavro (without logical types:
    see :mod:`pipeline.decode.avro`), where BYTES (and so ``Decimal``, ``VariableScaleDecimal``
    values, WKB) are raw ``bytes`` and FLOAT32 is single precision; the results are the same
    Python values as from JSON.

    ``schema`` is a Connect field schema as the JsonConverter writes it (``type``, optional
    ``name``, ``parameters``, ``items``, ``fields``...). The converter is never called with None
    (null stays None) and raises ValueError/TypeError/KeyError/OverflowError on malformed input.
    Mappings (Debezium PostgreSQL connector docs, "Data type mappings"):

    - ints -> int; BOOLEAN -> bool; FLOAT32/64 -> float (``"NaN"``/``"Infinity"``/``"-Infinity"``
      -> ``nan``/``inf``/``-inf``); STRING -> str; BYTES -> bytes (base64 in JSON).
    - ``Decimal`` / ``VariableScaleDecimal`` -> exact Decimal ("Decimal types"; PostgreSQL
      ``NaN``/``Infinity`` numerics arrive as null in ``precise`` mode). With
      ``decimal.handling.mode=string`` a STRING whose propagated source type is NUMERIC/DECIMAL
      -> Decimal; ``double`` mode -> float.
    - ``Date`` -> date; ``Time``/``MicroTime``/``NanoTime`` -> time; ``Timestamp``/
      ``MicroTimestamp``/``NanoTimestamp`` and Connect ``Timestamp`` -> naive datetime;
      ``ZonedTimestamp`` -> aware datetime (UTC); ``ZonedTime`` -> aware time; ``Iso*`` ->
      naive date/time/datetime ("Temporal types"). ``infinity``/``-infinity`` and ``24:00:00``
      have no Python value and stay strings; other out-of-range values raise ValueError.
    - ``MicroDuration`` -> timedelta; ``Uuid`` -> UUID; ``Json``/``Xml``/``Enum``/``Ltree``/
      ``Interval`` -> str unchanged; ``Bits`` -> bytes (little-endian, see :func:`bits_to_text`).
    - ``geometry.Point`` -> :class:`~pipeline.core.events.Point`; ``Geometry``/``Geography`` ->
      :class:`~pipeline.core.events.Geometry` ("PostGIS types"). Other structs -> dict of converted
      fields. ARRAY -> list of converted items; MAP -> dict.
    - BYTEA written as text (``binary.handling.mode`` ``base64``/``base64-url-safe``/``hex``) ->
      bytes when the propagated source type is ``BYTEA``; otherwise the text stays a str.
    """
    kind = schema.get("type")
    logical = schema.get("name")
    params = schema.get("parameters") or {}
    avro = wire == "avro"
    if logical == "org.apache.kafka.connect.data.Decimal":
        scale = int(params.get("scale", 0))
        return _native_decimal_converter(scale) if avro else _decimal_converter(scale)
    if logical is not None:
        found = (_LOGICAL_AVRO if avro else _LOGICAL).get(logical)
        if found is not None:
            return found
    if kind == "array":
        items = schema.get("items")
        item = converter_for(items, binary_mode, wire) if isinstance(items, dict) else None
        return _array_converter(item)
    if kind == "map":
        keys, values = schema.get("keys"), schema.get("values")
        return _map_converter(
            converter_for(keys, binary_mode, wire) if isinstance(keys, dict) else None,
            converter_for(values, binary_mode, wire) if isinstance(values, dict) else None,
        )
    if kind == "struct":
        return _struct_converter(_row_plan(schema.get("fields") or [], binary_mode, None, wire))
    source_type = str(params.get("__debezium.source.column.type", "")).upper()
    if kind == "string":
        if source_type in ("NUMERIC", "DECIMAL"):
            return _decimal_text
        if source_type == "BYTEA" and binary_mode in _BINARY_TEXT:
            return _BINARY_TEXT[binary_mode]
    found = (_PRIMITIVE_AVRO if avro else _PRIMITIVE).get(str(kind))
    if found is None:
        raise ValueError(f"unsupported Connect schema type {kind!r}")
    return found


# --------------------------------------------------------------------------- TOAST placeholder


@dataclass(frozen=True, slots=True)
class _Placeholders:
    """Every JSON form of ``unavailable.value.placeholder`` (debezium UnchangedToastedPlaceholder)."""

    text: str
    raw: bytes
    base64: str
    octets: list[int]  # Java bytes widened to int: signed
    text_list: list[str]
    base64_list: list[str]
    uuid_list: list[str]
    hstore_json: str
    hstore_map: dict[str, str]

    @classmethod
    def of(cls, raw: bytes) -> _Placeholders:
        text = raw.decode("utf-8", errors="replace")
        b64 = binascii.b2a_base64(raw, newline=False).decode("ascii")
        digest = bytearray(hashlib.md5(raw).digest())  # noqa: S324 - Java UUID.nameUUIDFromBytes is MD5-based
        digest[6] = (digest[6] & 0x0F) | 0x30
        digest[8] = (digest[8] & 0x3F) | 0x80
        return cls(
            text=text,
            raw=raw,
            base64=b64,
            octets=[b - 256 if b > 127 else b for b in raw],
            text_list=[text],
            base64_list=[b64],
            uuid_list=[str(uuid.UUID(bytes=bytes(digest)))],
            hstore_json=orjson.dumps({text: text}).decode("utf-8"),
            hstore_map={text: text},
        )

    def needles(self) -> tuple[bytes, ...]:
        """Byte strings of which at least one occurs in any JSON text holding a placeholder
        form (compact, as the JsonConverter writes, or with ", " between array numbers)."""
        numbers = [str(b) for b in self.octets[:4]]
        return (
            orjson.dumps(self.text)[1:-1],
            self.base64.encode("ascii"),
            self.uuid_list[0].encode("ascii"),
            ",".join(numbers).encode("ascii"),
            ", ".join(numbers).encode("ascii"),
        )

    def generic(self) -> tuple[Any, ...]:
        """All forms, for payloads without schemas."""
        return (
            self.text,
            self.base64,
            self.hstore_json,
            self.text_list,
            self.base64_list,
            self.octets,
            self.uuid_list,
            self.hstore_map,
        )


def toast_forms(
    schema: Mapping[str, Any], placeholder: bytes = DEFAULT_UNAVAILABLE_PLACEHOLDER.encode()
) -> tuple[Any, ...]:
    """The raw JSON values that mean "unchanged TOASTed value, not sent" for a field ``schema``.

    Debezium PostgreSQL docs, "Toasted values" and ``unavailable.value.placeholder``; forms
    verified on Debezium 3.6.3 with ``binary.handling.mode=bytes``:

    - text-like (STRING: text, varchar, json/jsonb, xml...) -> the placeholder string;
      ``hstore`` -> ``{"<p>":"<p>"}`` (JSON text, or a MAP in ``hstore.handling.mode=map``);
    - BYTES (bytea) -> the placeholder octets, i.e. base64 of them in JSON; with
      ``binary.handling.mode=hex`` the plain placeholder string. With ``base64`` (and ``hex``
      for ``bytea[]``) Debezium 3.6.3 writes **null** instead, indistinguishable from NULL;
    - ``text[]``/``varchar[]``/``json[]`` -> ``["<p>"]``; ``bytea[]`` -> ``["<base64 p>"]``;
      ``int[]``/``bigint[]``/``date[]`` -> the placeholder octets as a list of numbers;
      ``uuid[]`` -> ``[UUID.nameUUIDFromBytes(p)]``.
    """
    forms = _Placeholders.of(placeholder)
    return _forms_for(schema, forms)


def _forms_for(schema: Mapping[str, Any], ph: _Placeholders, wire: Wire = "json") -> tuple[Any, ...]:
    kind = schema.get("type")
    if kind == "string":
        if schema.get("name") == "io.debezium.data.Json":
            return (ph.text, ph.hstore_json)
        return (ph.text,)
    if kind == "bytes":
        return (ph.raw,) if wire == "avro" else (ph.base64, ph.text)
    if kind == "map":
        return (ph.hstore_map,)
    if kind == "array":
        items = schema.get("items") or {}
        item_kind = items.get("type") if isinstance(items, dict) else None
        if item_kind in ("int32", "int64", "int16", "int8"):
            return (ph.octets,)
        if item_kind == "bytes":
            return ([ph.raw],) if wire == "avro" else (ph.base64_list,)
        if isinstance(items, dict) and items.get("name") == "io.debezium.data.Uuid":
            return (ph.uuid_list, ph.text_list)
        return (ph.text_list,)
    return ()


def _row_plan(
    fields: list[Any], binary_mode: BinaryHandlingMode, placeholders: _Placeholders | None, wire: Wire = "json"
) -> _RowPlan:
    converters: list[tuple[str, Converter]] = []
    checks: list[tuple[str, type]] = []
    toast: list[tuple[str, tuple[Any, ...]]] = []
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("field"), str):
            raise _BadMessageError("schema: a struct field without a 'field' name")
        name = field["field"]
        conv = converter_for(field, binary_mode, wire)
        kept = _KEPT.get(conv)
        if kept is not None:
            checks.append((name, kept))
        else:
            converters.append((name, conv))
        if placeholders is not None:
            forms = _forms_for(field, placeholders, wire)
            if forms:
                toast.append((name, forms))
    return _RowPlan(tuple(converters), tuple(checks), tuple(toast))


def _column(field: Mapping[str, Any], name: str) -> Column:
    params = field.get("parameters") or {}
    items = field.get("items")
    return Column(
        name=name,
        type=str(field.get("type")),
        optional=bool(field.get("optional", False)),
        logical=field.get("name"),
        parameters={str(k): str(v) for k, v in params.items()},
        items=_column(items, "") if isinstance(items, dict) else None,
    )


# --------------------------------------------------------------------------- schema plans


@dataclass(frozen=True, slots=True)
class _ValuePlan:
    """What a value schema says: the kind of record and, for change events, the row plan."""

    kind: Literal["change", "heartbeat", "transaction", "notification", "other"]
    row: _RowPlan | None = None
    columns: tuple[Column, ...] | None = None


@dataclass(frozen=True, slots=True)
class _KeyPlan:
    row: _RowPlan
    key_columns: tuple[str, ...]


def _value_plan(schema: Any, config: DecoderConfig, placeholders: _Placeholders, wire: Wire = "json") -> _ValuePlan:
    if not isinstance(schema, dict):
        raise _BadMessageError("value schema is not an object")
    name = schema.get("name")
    if name == _HEARTBEAT_SCHEMA:
        return _ValuePlan("heartbeat")
    if name == _TRANSACTION_SCHEMA:
        return _ValuePlan("transaction")
    if name == _NOTIFICATION_SCHEMA:
        return _ValuePlan("notification")
    fields = schema.get("fields")
    if schema.get("type") != "struct" or not isinstance(fields, list):
        return _ValuePlan("other")
    by_name = {f.get("field"): f for f in fields if isinstance(f, dict)}
    if "op" not in by_name:
        return _ValuePlan("other")
    row_schema = by_name.get("after") or by_name.get("before")
    if not isinstance(row_schema, dict) or row_schema.get("type") != "struct":
        # Truncate-only topics still carry before/after; absent means no row shape to convert.
        return _ValuePlan("change", _RowPlan((), (), ()), None)
    row_fields = row_schema.get("fields")
    if not isinstance(row_fields, list):
        raise _BadMessageError("value schema: 'after' struct without fields")
    plan = _row_plan(row_fields, config.binary_handling_mode, placeholders, wire)
    columns = tuple(_column(f, f["field"]) for f in row_fields)
    return _ValuePlan("change", plan, columns)


def _key_plan(schema: Any, config: DecoderConfig, wire: Wire = "json") -> _KeyPlan:
    if not isinstance(schema, dict) or schema.get("type") != "struct" or not isinstance(schema.get("fields"), list):
        raise _BadMessageError("key schema is not a struct")
    fields = schema["fields"]
    plan = _row_plan(fields, config.binary_handling_mode, None, wire)
    return _KeyPlan(plan, tuple(f["field"] for f in fields))


class _SchemaCache:
    """Schema JSON bytes -> plan, plus the last schema seen per topic.

    The per-topic entry makes the common case (a topic's schema did not change) a ``memcmp``
    of the schema bytes in place (``bytes.startswith`` at an offset: no copy, no hash). The
    map is bounded and cleared wholesale when full.
    """

    __slots__ = ("_items", "_limit", "recent")

    def __init__(self, limit: int) -> None:
        self._items: dict[bytes, Any] = {}
        self._limit = max(1, limit)
        self.recent: dict[str, tuple[bytes, Any]] = {}

    def get(self, key: bytes) -> Any:
        return self._items.get(key)

    def put(self, key: bytes, plan: Any) -> None:
        if len(self._items) >= self._limit:
            self._items.clear()
            self.recent.clear()
        self._items[key] = plan

    def __len__(self) -> int:
        return len(self._items)


_MISSING = object()


def _split_parse(data: bytes, topic: str, cache: _SchemaCache, build: Callable[[Any], Any]) -> tuple[Any, Any, int]:
    """Parse a JsonConverter message; return ``(plan or None, payload, payload offset)``.

    ``plan`` is None when the message has no schema (``schemas.enable=false`` or a null schema).
    The schema part is parsed only when its exact bytes are not cached (see module docstring).
    Raises orjson.JSONDecodeError for invalid JSON and _BadMessageError for a bad schema.
    """
    if data.startswith(_HEAD) and data.endswith(b"}"):
        recent = cache.recent.get(topic)
        if recent is not None:
            schema_bytes, plan = recent
            cut = _HEAD_LEN + len(schema_bytes)
            if data.startswith(schema_bytes, _HEAD_LEN) and data.startswith(_SEP, cut):
                return plan, orjson.loads(memoryview(data)[cut + _SEP_LEN : -1]), cut
        cut = data.find(_SEP, _HEAD_LEN)
        if cut > 0:
            schema_bytes = data[_HEAD_LEN:cut]
            plan = cache.get(schema_bytes)
            if plan is not None:
                cache.recent[topic] = (schema_bytes, plan)
                return plan, orjson.loads(memoryview(data)[cut + _SEP_LEN : -1]), cut
            try:
                schema = orjson.loads(schema_bytes)
                payload = orjson.loads(memoryview(data)[cut + _SEP_LEN : -1])
            except orjson.JSONDecodeError:
                pass  # not the JsonConverter's layout after all: parse the whole message below
            else:
                if schema is None:
                    return None, payload, cut
                plan = build(schema)
                cache.put(schema_bytes, plan)
                cache.recent[topic] = (schema_bytes, plan)
                return plan, payload, cut
    message = orjson.loads(data)
    if type(message) is dict and len(message) == 2 and "schema" in message and "payload" in message:
        schema = message["schema"]
        if schema is None:
            return None, message["payload"], 0
        canonical = orjson.dumps(schema)
        plan = cache.get(canonical)
        if plan is None:
            plan = build(schema)
            cache.put(canonical, plan)
        return plan, message["payload"], 0
    return None, message, 0


# --------------------------------------------------------------------------- fast construction

# ChangeEvent is a frozen slots dataclass: its generated __init__ sets each of its 18 fields with
# object.__setattr__ (~5 µs per event, a sixth of the decode time). On the hot path the slots are
# set through their member descriptors instead (~1.5 µs), which is what __init__ does minus the
# per-field lookups. This is only done while the field list is exactly the one below (checked at
# import); otherwise the regular constructor is used. tests/unit/test_decode.py checks both agree.
_EVENT_FIELDS = (
    "topic",
    "partition",
    "offset",
    "table",
    "op",
    "position",
    "ts_ms",
    "key",
    "before",
    "after",
    "tx_id",
    "snapshot",
    "columns",
    "key_columns",
    "unavailable",
    "target",
    "extra",
    "size",
)
FAST_EVENTS = tuple(f.name for f in dataclasses.fields(ChangeEvent)) == _EVENT_FIELDS and all(
    type(getattr(ChangeEvent, name, None)).__name__ == "member_descriptor" for name in _EVENT_FIELDS
)


def _slow_event(*values: Any) -> ChangeEvent:
    return ChangeEvent(**dict(zip(_EVENT_FIELDS, values, strict=True)))


def _fast_event_factory() -> Callable[..., ChangeEvent]:
    s = tuple(getattr(ChangeEvent, name).__set__ for name in _EVENT_FIELDS)
    new = object.__new__

    def make(
        topic: str,
        partition: int,
        offset: int,
        table: TableId,
        op: Op,
        position: Position,
        ts_ms: int,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        tx_id: int | None,
        snapshot: bool,
        columns: tuple[Column, ...] | None,
        key_columns: tuple[str, ...],
        unavailable: frozenset[str],
        target: TableId | None,
        extra: dict[str, Any],
        size: int,
    ) -> ChangeEvent:
        event: ChangeEvent = new(ChangeEvent)
        s[0](event, topic)
        s[1](event, partition)
        s[2](event, offset)
        s[3](event, table)
        s[4](event, op)
        s[5](event, position)
        s[6](event, ts_ms)
        s[7](event, key)
        s[8](event, before)
        s[9](event, after)
        s[10](event, tx_id)
        s[11](event, snapshot)
        s[12](event, columns)
        s[13](event, key_columns)
        s[14](event, unavailable)
        s[15](event, target)
        s[16](event, extra)
        s[17](event, size)
        return event

    return make


_new_event: Callable[..., ChangeEvent] = _fast_event_factory() if FAST_EVENTS else _slow_event


def make_event(
    topic: str,
    partition: int,
    offset: int,
    table: TableId,
    op: Op,
    position: Position,
    ts_ms: int,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tx_id: int | None,
    snapshot: bool,
    columns: tuple[Column, ...] | None,
    key_columns: tuple[str, ...],
    unavailable: frozenset[str],
    target: TableId | None,
    extra: dict[str, Any],
    size: int,
) -> ChangeEvent:
    """``ChangeEvent(...)`` with every field given positionally, in declaration order, about
    3x faster than the dataclass constructor (for hot paths: decoding, transforms). The result
    is an ordinary frozen ChangeEvent, equal to the one the constructor builds."""
    return _new_event(
        topic,
        partition,
        offset,
        table,
        op,
        position,
        ts_ms,
        key,
        before,
        after,
        tx_id,
        snapshot,
        columns,
        key_columns,
        unavailable,
        target,
        extra,
        size,
    )


# --------------------------------------------------------------------------- decoder


class Decoder:
    """Turns Debezium PostgreSQL change messages into :class:`ChangeEvent` or :class:`Skip`.

    One instance per consumer (not thread-safe: it owns the schema-plan caches). ``decode`` is
    pure apart from those caches.
    """

    def __init__(
        self,
        config: DecoderConfig | None = None,
        *,
        avro_values: AvroReader | None = None,
        avro_keys: AvroReader | None = None,
    ) -> None:
        """``avro_values``/``avro_keys``: read values/keys as Avro in the Confluent wire format
        with these readers (see :func:`make_decoder`); otherwise as JsonConverter JSON."""
        self.config = config or DecoderConfig()
        self._avro_values = avro_values
        self._avro_keys = avro_keys
        self._avro_value_plans: dict[int, _ValuePlan] = {}
        self._avro_key_plans: dict[int, _KeyPlan] = {}
        self._placeholders = _Placeholders.of(self.config.placeholder_bytes)
        self._generic_forms = self._placeholders.generic()
        self._needles = self._placeholders.needles()
        self._values = _SchemaCache(self.config.max_cached_schemas)
        self._keys = _SchemaCache(self.config.max_cached_schemas)
        self._topic_reasons: dict[str, str | None] = {}
        self._tables: dict[tuple[str, str], TableId] = {}
        exact: dict[str, str] = dict.fromkeys(self.config.notification_topics, "notification")
        cfg = self.config
        if cfg.heartbeat_topic_name:
            exact[cfg.heartbeat_topic_name] = "heartbeat"
        if cfg.topic_prefix is not None:
            exact[cfg.topic_delimiter.join((cfg.topic_prefix, cfg.transaction_topic))] = "transaction"
        self._exact_topics = exact
        self._heartbeat_prefix = cfg.heartbeat_topic_prefix + cfg.topic_delimiter

    def cached_schemas(self) -> int:
        """Number of value and key schema plans currently cached (for metrics), JSON and Avro."""
        return len(self._values) + len(self._keys) + len(self._avro_value_plans) + len(self._avro_key_plans)

    def _topic_reason(self, topic: str) -> str | None:
        reason = self._topic_reasons.get(topic, _MISSING)
        if reason is _MISSING:
            found = self._exact_topics.get(topic)
            if found is None and topic.startswith(self._heartbeat_prefix):
                found = "heartbeat"
            self._topic_reasons[topic] = found
            return found
        return reason  # type: ignore[return-value]

    def decode(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> ChangeEvent | Skip:
        """Decode one Kafka message.

        Returns :class:`Skip` with reason ``tombstone`` (value None), ``heartbeat``,
        ``transaction``, ``notification`` (by topic name from the config, else by the record's
        schema name or payload shape) or ``message`` (op ``m``); otherwise a
        :class:`ChangeEvent` whose ``position`` comes from ``source.sequence`` (a JSON string
        holding ``["<last commit LSN>", "<LSN>"]``) and ``source.lsn`` by
        :func:`~pipeline.core.events.position_from_source` (a null ``sequence[0]`` gives
        ``commit_lsn`` 0 for snapshot reads and ``lsn`` for streamed changes). Raises
        :class:`PoisonMessageError` for anything that is not a decodable Debezium message.
        """
        if value is None:
            return Skip(topic, partition, offset, "tombstone")
        reason = self._topic_reason(topic)
        if reason is not None:
            return Skip(topic, partition, offset, reason)
        try:
            return self._decode(topic, partition, offset, key, value)
        except PoisonMessageError:
            raise
        except UnknownSchemaError as exc:
            raise PoisonMessageError(topic, partition, offset, str(exc)) from None
        except _BadMessageError as exc:
            raise PoisonMessageError(topic, partition, offset, str(exc)) from None
        except orjson.JSONDecodeError as exc:
            raise PoisonMessageError(topic, partition, offset, f"invalid JSON: {exc}") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as exc:
            raise PoisonMessageError(
                topic, partition, offset, f"malformed Debezium message: {type(exc).__name__}: {exc}"
            ) from None

    def decode_message(self, message: KafkaMessage) -> ChangeEvent | Skip:
        """:meth:`decode` of a ``confluent_kafka.Message`` (topic, partition, offset, key, value).

        Same results and errors as :meth:`decode`; a message without topic, partition or offset
        (never the case for consumed messages) is poison.
        """
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            raise PoisonMessageError(topic or "", partition or 0, offset or 0, "message without topic/partition/offset")
        return self.decode(topic, partition, offset, message.key(), message.value())

    def _decode(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> ChangeEvent | Skip:
        avro = self._avro_values is not None
        if avro:
            plan, payload = self._read_avro_value(value)
            start = 0
        else:
            plan, payload, start = _split_parse(value, topic, self._values, self._build_value_plan)
        if plan is not None and plan.kind != "change":
            if plan.kind == "other":
                raise _BadMessageError("the value schema is not a Debezium change event envelope (no 'op' field)")
            return Skip(topic, partition, offset, plan.kind)
        if type(payload) is not dict:
            raise _BadMessageError(f"value payload is {type(payload).__name__}, not a Debezium envelope object")
        op_text = payload.get("op")
        if op_text is None:
            shape = _shape_reason(payload)
            if shape is not None:
                return Skip(topic, partition, offset, shape)
            raise _BadMessageError("not a Debezium change event: the payload has no 'op'")
        op = _OPS.get(op_text) if type(op_text) is str else None
        if op is None:
            if op_text == "m":
                return Skip(topic, partition, offset, "message")
            raise _BadMessageError(f"unknown op {op_text!r}")

        source = payload.get("source")
        if type(source) is not dict:
            raise _BadMessageError("payload.source is missing or not an object")
        position = _position(source, op is Op.READ)
        schema_name, table_name = source.get("schema"), source.get("table")
        if type(schema_name) is not str or type(table_name) is not str:
            raise _BadMessageError("payload.source.schema/table missing")
        ts_ms = source.get("ts_ms")
        if type(ts_ms) is not int:
            raise _BadMessageError("payload.source.ts_ms missing or not an integer")
        tx_id = source.get("txId")
        if tx_id is not None and type(tx_id) is not int:
            raise _BadMessageError("payload.source.txId is not an integer")

        before = payload.get("before")
        after = payload.get("after")
        unavailable: frozenset[str] = frozenset()
        if op is Op.TRUNCATE:
            before = after = None
        else:
            if op is not Op.DELETE and after is None:
                raise _BadMessageError(f"op {op.value!r} without 'after'")
            if op is Op.DELETE:
                after = None
                if before is None:
                    raise _BadMessageError("op 'd' without 'before'")
            row = plan.row if plan is not None else None
            # Placeholder checks only when one of its forms occurs in the payload bytes at all
            # (JSON); Avro values are always checked (ints of an int[] form are varints).
            toast = avro or any(value.find(needle, start) >= 0 for needle in self._needles)
            if after is not None:
                unavailable = self._convert("after", after, row, toast)
            if before is not None:
                self._convert("before", before, row, toast)

        key_row: dict[str, Any] | None = None
        key_columns: tuple[str, ...] = ()
        if key is not None:
            if self._avro_keys is not None:
                key_plan, key_payload = self._read_avro_key(key)
            else:
                key_plan, key_payload, _ = _split_parse(key, topic, self._keys, self._build_key_plan)
            if key_payload is not None:
                if type(key_payload) is not dict:
                    raise _BadMessageError(f"key payload is {type(key_payload).__name__}, not an object")
                if key_plan is not None:
                    _convert_row("key", key_payload, key_plan.row, toast=False)
                    key_columns = key_plan.key_columns
                else:
                    key_columns = tuple(key_payload)
                key_row = key_payload

        table = self._tables.get((schema_name, table_name))
        if table is None:
            table = self._tables[(schema_name, table_name)] = TableId(schema_name, table_name)
        return _new_event(
            topic,
            partition,
            offset,
            table,
            op,
            position,
            ts_ms,
            key_row,
            before,
            after,
            tx_id,
            source.get("snapshot") not in _NOT_SNAPSHOT,
            plan.columns if plan is not None else None,
            key_columns,
            unavailable,
            None,
            {},
            len(value) + (len(key) if key is not None else 0),
        )

    def _convert(self, where: str, row: Any, plan: _RowPlan | None, toast: bool) -> frozenset[str]:
        if type(row) is not dict:
            raise _BadMessageError(f"payload.{where} is {type(row).__name__}, not an object")
        if plan is None:
            return _strip_toast_generic(row, self._generic_forms) if toast else frozenset()
        return _convert_row(where, row, plan, toast)

    def _build_value_plan(self, schema: Any) -> _ValuePlan:
        return _value_plan(schema, self.config, self._placeholders)

    def _read_avro_value(self, data: bytes) -> tuple[_ValuePlan, Any]:
        assert self._avro_values is not None
        schema_id, connect, payload = _read_avro(self._avro_values, data, "value")
        plan = self._avro_value_plans.get(schema_id)
        if plan is None:
            if len(self._avro_value_plans) >= self.config.max_cached_schemas:
                self._avro_value_plans.clear()
            plan = self._avro_value_plans[schema_id] = _value_plan(connect, self.config, self._placeholders, "avro")
        return plan, payload

    def _read_avro_key(self, data: bytes) -> tuple[_KeyPlan, Any]:
        assert self._avro_keys is not None
        schema_id, connect, payload = _read_avro(self._avro_keys, data, "key")
        plan = self._avro_key_plans.get(schema_id)
        if plan is None:
            if len(self._avro_key_plans) >= self.config.max_cached_schemas:
                self._avro_key_plans.clear()
            plan = self._avro_key_plans[schema_id] = _key_plan(connect, self.config, "avro")
        return plan, payload

    def _build_key_plan(self, schema: Any) -> _KeyPlan:
        return _key_plan(schema, self.config)


def _read_avro(reader: AvroReader, data: bytes, what: str) -> tuple[int, dict[str, Any], Any]:
    """``reader.read(data)`` with decoding failures as _BadMessageError naming ``what``;
    registry errors (unknown id, registry down) pass through."""
    try:
        return reader.read(data)
    except (UnknownSchemaError, RegistryUnavailableError):
        raise
    except WireFormatError as exc:
        raise _BadMessageError(f"{what}: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, EOFError, OverflowError, struct.error) as exc:
        raise _BadMessageError(f"{what}: not decodable Avro: {type(exc).__name__}: {exc}") from None


def _convert_row(where: str, row: dict[str, Any], plan: _RowPlan, toast: bool) -> frozenset[str]:
    """Convert ``row`` in place; with ``toast``, TOAST placeholders are removed first and their
    column names returned."""
    unavailable: list[str] | None = None
    if toast:
        for name, forms in plan.toast:
            v = row.get(name)
            if v is not None:
                for form in forms:
                    if v == form:
                        del row[name]
                        if unavailable is None:
                            unavailable = [name]
                        else:
                            unavailable.append(name)
                        break
    try:
        _apply(row, plan)
    except _BadMessageError as exc:
        raise _BadMessageError(f"{where}.{exc}") from None
    return frozenset(unavailable) if unavailable else frozenset()


def _strip_toast_generic(row: dict[str, Any], forms: tuple[Any, ...]) -> frozenset[str]:
    found = [name for name, v in row.items() if type(v) in (str, list, dict) and v in forms]
    for name in found:
        del row[name]
    return frozenset(found)


def _position(source: dict[str, Any], is_read: bool) -> Position:
    """Validate ``source.sequence``/``source.lsn`` and apply :func:`position_from_source`."""
    lsn = source.get("lsn")
    if lsn is not None and (type(lsn) is not int or lsn < 0):
        raise _BadMessageError(f"payload.source.lsn is not an unsigned integer: {lsn!r}")
    sequence = source.get("sequence")
    pair: tuple[int | None, int | None] | None = None
    if sequence is not None:
        if type(sequence) is not str:
            raise _BadMessageError("payload.source.sequence is not a string")
        try:
            items = orjson.loads(sequence)
        except orjson.JSONDecodeError:
            raise _BadMessageError(f"payload.source.sequence is not a JSON array: {sequence[:60]!r}") from None
        if type(items) is not list or len(items) != 2:
            raise _BadMessageError(f"payload.source.sequence is not a pair: {sequence[:60]!r}")
        pair = (
            None if items[0] is None else _lsn_int(items[0], "sequence[0]"),
            None if items[1] is None else _lsn_int(items[1], "sequence[1]"),
        )
    if lsn is None and (pair is None or pair[1] is None):
        raise _BadMessageError("payload.source.lsn is missing (and sequence gives no LSN)")
    return position_from_source(pair, lsn, is_read)


def _lsn_int(text: Any, what: str) -> int:
    if type(text) is not str or not (text.isascii() and text.isdigit()):
        raise _BadMessageError(f"payload.source.{what} is not a decimal LSN string: {text!r}")
    return int(text)


def _shape_reason(payload: dict[str, Any]) -> str | None:
    """Recognise Debezium's non-change records without schemas by their payload keys."""
    keys = payload.keys()
    if keys == {"ts_ms"}:
        return "heartbeat"
    if payload.get("status") in ("BEGIN", "END") and "id" in keys and "data_collections" in keys:
        return "transaction"
    if {"id", "aggregate_type", "type"} <= keys:
        return "notification"
    return None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


REGISTRY_CLIENT_BUDGET_S = 5.0
"""Seconds the registry client itself retries an unavailable registry before raising."""


def make_decoder(source: SourceSettings, pipeline: PipelineSettings | None = None) -> Decoder:
    """The decoder of ``pipeline``'s messages from ``source``: JSON or Avro per key and value
    (``pipeline.value_format``/``key_format``, which default to and must agree with the source's
    ``format``/``key_format``), with a Schema Registry client (``source.schema_registry``)
    when either is Avro. The registry client retries an unavailable registry with the
    pipeline's ``retry`` backoff for ``REGISTRY_CLIENT_BUDGET_S`` seconds, then raises
    RegistryUnavailableError (transient), which the runner retries with the consumer paused.

    Raises ValueError when a format is Avro and the source has no ``schema_registry``.
    """
    value_format = (pipeline.value_format if pipeline else None) or source.format
    key_format = (pipeline.key_format if pipeline else None) or source.resolved_key_format
    config = DecoderConfig.from_connector_config(build_connector_config(source))
    if "avro" not in (value_format, key_format):
        return Decoder(config)
    registry = source.schema_registry
    if registry is None:
        raise ValueError(f"source {source.name!r}: avro messages need schema_registry")
    # A short in-client budget: longer outages are retried by the runner, which keeps the
    # consumer served (paused) while it backs off.
    client = SchemaRegistryClient(
        registry, pipeline.retry if pipeline else None, retry_budget_s=REGISTRY_CLIENT_BUDGET_S
    )
    reader = AvroReader(client.schema, registry.cache_size)
    return Decoder(
        config,
        avro_values=reader if value_format == "avro" else None,
        avro_keys=reader if key_format == "avro" else None,
    )
