"""Converters of Connect primitive and Debezium non-temporal semantic values (numbers, bytes,
decimals, UUIDs, PostGIS geometries) from what the JsonConverter or fastavro gives: each one
checks the value's type and returns the exact Python value, or raises an error that bad input
causes (:class:`WrongTypeError`, ValueError, KeyError, ArithmeticError); anything else it raises
is a bug."""

from __future__ import annotations

import binascii
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, TypeAlias

from pipeline.core.events import Geometry, Point

__all__ = [
    "AVRO_LOGICAL",
    "AVRO_PRIMITIVE",
    "BINARY_TEXT",
    "JSON_LOGICAL",
    "JSON_PRIMITIVE",
    "KEPT",
    "Converter",
    "Wire",
    "WrongTypeError",
    "as_int",
    "as_str",
    "bits_to_text",
    "decimal_converter",
    "decimal_text",
    "native_decimal_converter",
    "need",
]

Converter: TypeAlias = Callable[[Any], Any]

Wire: TypeAlias = Literal["json", "avro"]
"""How a Connect value is written: ``json`` (JsonConverter: BYTES as base64 text) or ``avro``
(Avro binary read by fastavro: BYTES as raw ``bytes``, FLOAT32 as a single-precision float)."""

_F32 = struct.Struct(">f")

_FLOAT_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class WrongTypeError(TypeError):
    """A message value has the wrong JSON/Avro type for its schema (bad input, not a bug)."""


def need(value: Any, kind: type) -> None:
    """Raise :class:`WrongTypeError` unless ``type(value) is kind``."""
    if type(value) is not kind:
        raise WrongTypeError(f"expected {kind.__name__}, got {type(value).__name__}")


def as_int(value: Any) -> int:
    """``value`` if it is an int (not a bool), else :class:`WrongTypeError`."""
    if type(value) is not int:
        raise WrongTypeError(f"expected an integer, got {type(value).__name__}")
    return value


def as_str(value: Any) -> str:
    """``value`` if it is a str, else :class:`WrongTypeError`."""
    if type(value) is not str:
        raise WrongTypeError(f"expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise WrongTypeError(f"expected a boolean, got {type(value).__name__}")
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
    raise WrongTypeError(f"expected a number, got {kind.__name__}")


def _base64(value: Any) -> bytes:
    """Connect BYTES: the JsonConverter writes base64 (standard alphabet, padded)."""
    if type(value) is not str:
        raise WrongTypeError(f"expected a base64 string, got {type(value).__name__}")
    return binascii.a2b_base64(value, strict_mode=True)


def _hex_bytes(value: Any) -> bytes:
    return bytes.fromhex(as_str(value))


def _base64_url(value: Any) -> bytes:
    text = as_str(value)
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/"), strict_mode=True)


def _native_bytes(value: Any) -> bytes:
    """Connect BYTES read from Avro: already ``bytes``."""
    if type(value) is not bytes:
        raise WrongTypeError(f"expected bytes, got {type(value).__name__}")
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
    raise WrongTypeError(f"expected a base64 string or a number, got {kind.__name__}")


def decimal_converter(scale: int) -> Converter:
    """``org.apache.kafka.connect.data.Decimal`` (PostgreSQL docs, "Decimal types", precise mode):
    big-endian two's-complement unscaled integer bytes; the ``scale`` schema parameter places
    the decimal point. Result: an exact :class:`~decimal.Decimal` with that scale."""

    def convert(value: Any) -> Decimal:
        return _decimal_from_json(value, scale)

    return convert


def native_decimal_converter(scale: int) -> Converter:
    """``Decimal`` read from Avro: the unscaled two's-complement bytes (Avro ``bytes`` with
    ``logicalType: decimal``, read raw) -> exact Decimal with ``scale``."""

    def convert(value: Any) -> Decimal:
        return _unscaled_decimal(_native_bytes(value), scale)

    return convert


def _variable_scale_decimal(value: Any) -> Decimal:
    """``io.debezium.data.VariableScaleDecimal`` (PostgreSQL docs, "Decimal types", NUMERIC
    without scale): struct ``{scale: INT32, value: BYTES}`` with the unscaled value."""
    need(value, dict)
    scale = as_int(value["scale"])
    return _unscaled_decimal(_base64(value["value"]), scale)


def _native_variable_scale_decimal(value: Any) -> Decimal:
    """:func:`_variable_scale_decimal` read from Avro (``value`` is raw bytes)."""
    need(value, dict)
    return _unscaled_decimal(_native_bytes(value["value"]), as_int(value["scale"]))


def decimal_text(value: Any) -> Decimal:
    """``decimal.handling.mode=string``: the formatted number (``NAN`` for NaN)."""
    return Decimal(as_str(value))


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
    return uuid.UUID(as_str(value))


def _point_converter(wkb_bytes: Converter) -> Converter:
    """``io.debezium.data.geometry.Point`` (PostgreSQL docs, "Basic types", POINT)."""

    def convert(value: Any) -> Point:
        need(value, dict)
        wkb = value.get("wkb")
        srid = value.get("srid")
        return Point(
            x=_float(value["x"]),
            y=_float(value["y"]),
            wkb=None if wkb is None else wkb_bytes(wkb),
            srid=None if srid is None else as_int(srid),
        )

    return convert


def _geometry_converter(geography: bool, wkb_bytes: Converter = _base64) -> Converter:
    """``io.debezium.data.geometry.Geometry``/``Geography`` (PostgreSQL docs, "PostGIS types")."""

    def convert(value: Any) -> Geometry:
        need(value, dict)
        srid = value.get("srid")
        return Geometry(wkb=wkb_bytes(value["wkb"]), srid=None if srid is None else as_int(srid), geography=geography)

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


_LOGICAL_BOTH: dict[str, Converter] = {"io.debezium.data.Uuid": _uuid}

JSON_LOGICAL: dict[str, Converter] = {
    **_LOGICAL_BOTH,
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
    "io.debezium.data.geometry.Point": _point_converter(_base64),
    "io.debezium.data.geometry.Geometry": _geometry_converter(geography=False),
    "io.debezium.data.geometry.Geography": _geometry_converter(geography=True),
}
"""Non-temporal Debezium semantic types (by schema ``name``) read from JSON."""

AVRO_LOGICAL: dict[str, Converter] = {
    **_LOGICAL_BOTH,
    "io.debezium.data.VariableScaleDecimal": _native_variable_scale_decimal,
    "io.debezium.data.geometry.Point": _point_converter(_native_bytes),
    "io.debezium.data.geometry.Geometry": _geometry_converter(geography=False, wkb_bytes=_native_bytes),
    "io.debezium.data.geometry.Geography": _geometry_converter(geography=True, wkb_bytes=_native_bytes),
}
"""The same semantic types read from Avro, where BYTES are raw bytes."""

JSON_PRIMITIVE: dict[str, Converter] = {
    "int8": as_int,
    "int16": as_int,
    "int32": as_int,
    "int64": as_int,
    "float": _float,
    "float32": _float,
    "double": _float,
    "float64": _float,
    "boolean": _bool,
    "string": as_str,
    "bytes": _base64,
}
"""Connect primitive types (by schema ``type``) read from JSON. Kept as str (exact text): Json
(the sink casts to jsonb), Xml, Enum, Ltree, Interval (interval.handling.mode=string), Tsvector,
and any other string-typed semantic type."""

AVRO_PRIMITIVE: dict[str, Converter] = {
    **JSON_PRIMITIVE,
    "bytes": _native_bytes,
    "float32": _float32,
    "float": _float32,
}
"""Connect primitive types read from Avro."""

KEPT: dict[Converter | None, type] = {as_int: int, as_str: str, _bool: bool, _native_bytes: bytes}
"""Converters that only check the value's type and return it unchanged, with that type."""

BINARY_TEXT: dict[str, Converter] = {"base64": _base64, "base64-url-safe": _base64_url, "hex": _hex_bytes}
"""``bytea`` written as text, by ``binary.handling.mode``."""
