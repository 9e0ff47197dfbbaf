"""Row conversion: :func:`converter_for` maps a Connect field schema (as the JsonConverter writes
it) to the function that turns its JSON or Avro value into the exact Python value, and a
:class:`RowPlan` applies those functions to a struct. Errors that bad input causes become
:class:`BadMessageError` naming the column; any other exception is a bug and propagates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.decode.config import BinaryHandlingMode
from pipeline.decode.temporal import TEMPORAL
from pipeline.decode.values import (
    AVRO_LOGICAL,
    AVRO_PRIMITIVE,
    BINARY_TEXT,
    JSON_LOGICAL,
    JSON_PRIMITIVE,
    KEPT,
    Converter,
    Wire,
    WrongTypeError,
    decimal_converter,
    decimal_text,
    native_decimal_converter,
    need,
)

__all__ = ["CONVERSION_ERRORS", "BadMessageError", "RowPlan", "apply_row", "converter_for", "preview", "row_plan"]

CONVERSION_ERRORS = (ValueError, KeyError, ArithmeticError, WrongTypeError, RecursionError)
"""What a converter raises for a value it cannot convert (bad input). A plain TypeError or an
AttributeError is not among them: the converters check types themselves, so those are bugs."""

_LOGICAL: dict[str, Converter] = {**JSON_LOGICAL, **TEMPORAL}
_LOGICAL_AVRO: dict[str, Converter] = {**AVRO_LOGICAL, **TEMPORAL}


class BadMessageError(Exception):
    """The message is malformed; ``str(exc)`` is the reason (the decoder makes it poison)."""


def preview(value: Any) -> str:
    """``repr(value)``, cut to 60 characters, for error reasons."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class RowPlan:
    """Precomputed conversion of one struct: converters, type checks of values kept as they
    are (int, str, bool, bytes), and TOAST placeholder forms per column."""

    converters: tuple[tuple[str, Converter], ...]
    checks: tuple[tuple[str, type], ...]
    toast: tuple[tuple[str, tuple[Any, ...]], ...]


EMPTY_ROW_PLAN = RowPlan((), (), ())


def apply_row(row: dict[str, Any], plan: RowPlan) -> None:
    """Convert ``row`` in place. Raises BadMessageError naming the column for a value that
    cannot be converted (:data:`CONVERSION_ERRORS`) or has the wrong type."""
    name = ""
    try:
        for name, conv in plan.converters:
            v = row.get(name)
            if v is not None:
                row[name] = conv(v)
    except CONVERSION_ERRORS as exc:
        raise BadMessageError(f"{name}: cannot convert {preview(row.get(name))}: {exc}") from None
    for name, kind in plan.checks:
        v = row.get(name)
        if v is not None and type(v) is not kind:
            raise BadMessageError(f"{name}: expected {kind.__name__}, got {type(v).__name__} {preview(v)}")


def row_plan(
    fields: Any,
    binary_mode: BinaryHandlingMode,
    wire: Wire = "json",
    toast_forms: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None,
) -> RowPlan:
    """The :class:`RowPlan` of a struct with the field schemas ``fields``; ``toast_forms`` gives
    the TOAST placeholder forms of a field (None: no placeholder checks, e.g. for keys).

    Raises BadMessageError for fields that are not named objects and ValueError (from
    :func:`converter_for`) for a field schema it cannot convert."""
    if type(fields) is not list:
        raise BadMessageError("schema: struct fields are not a list")
    converters: list[tuple[str, Converter]] = []
    checks: list[tuple[str, type]] = []
    toast: list[tuple[str, tuple[Any, ...]]] = []
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("field"), str):
            raise BadMessageError("schema: a struct field without a 'field' name")
        name = field["field"]
        conv = converter_for(field, binary_mode, wire)
        kept = KEPT.get(conv)
        if kept is not None:
            checks.append((name, kept))
        else:
            converters.append((name, conv))
        if toast_forms is not None:
            forms = toast_forms(field)
            if forms:
                toast.append((name, forms))
    return RowPlan(tuple(converters), tuple(checks), tuple(toast))


def _array_converter(item: Converter | None) -> Converter:
    if item in KEPT:
        item = None  # elements kept as JSON gave them; the list itself is still checked

    def convert(value: Any) -> list[Any]:
        need(value, list)
        if item is None:
            return value  # type: ignore[no-any-return]
        return [None if element is None else item(element) for element in value]

    return convert


def _map_converter(key: Converter | None, val: Converter | None) -> Converter:
    """Connect MAP: a JSON object when keys are strings, else an array of ``[key, value]``
    (JSON) or of MapEntry records ``{key, value}`` (Avro, non-string keys)."""

    def convert(value: Any) -> dict[Any, Any]:
        if type(value) is dict:
            pairs = value.items()
        else:
            need(value, list)
            pairs = value
        out: dict[Any, Any] = {}
        for pair in pairs:
            k, v = _map_pair(pair)
            k = k if key is None or k is None else key(k)
            v = v if val is None or v is None else val(v)
            try:
                out[k] = v
            except TypeError:  # a list or dict as key: the map's key schema does not fit Python
                raise WrongTypeError(f"map key {preview(k)} is not hashable") from None
        return out

    return convert


def _map_pair(pair: Any) -> tuple[Any, Any]:
    kind = type(pair)
    if kind is tuple:  # from dict.items()
        return pair  # type: ignore[no-any-return]
    if kind is dict:
        return pair["key"], pair["value"]
    if kind is list and len(pair) == 2:
        return pair[0], pair[1]
    raise WrongTypeError(f"map entry {preview(pair)} is not a [key, value] pair")


def _struct_converter(plan: RowPlan) -> Converter:
    def convert(value: Any) -> dict[str, Any]:
        need(value, dict)
        out = dict(value)
        apply_row(out, plan)
        return out

    return convert


def _parameters(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    params = schema.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"schema parameters are {type(params).__name__}, not an object")
    return params


def _scale(params: Mapping[str, Any]) -> int:
    scale = params.get("scale", 0)
    if type(scale) not in (int, str):
        raise ValueError(f"decimal scale {preview(scale)} is not an integer")
    return int(scale)


def _container_converter(schema: Mapping[str, Any], binary_mode: BinaryHandlingMode, wire: Wire) -> Converter | None:
    """ARRAY, MAP and STRUCT converters; None for other types."""
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return _array_converter(converter_for(items, binary_mode, wire) if isinstance(items, dict) else None)
    if kind == "map":
        keys, values = schema.get("keys"), schema.get("values")
        return _map_converter(
            converter_for(keys, binary_mode, wire) if isinstance(keys, dict) else None,
            converter_for(values, binary_mode, wire) if isinstance(values, dict) else None,
        )
    if kind == "struct":
        return _struct_converter(row_plan(schema.get("fields") or [], binary_mode, wire))
    return None


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
    (null stays None) and raises one of :data:`CONVERSION_ERRORS` on malformed input; ``converter_for``
    itself raises ValueError (or BadMessageError for a struct field without a name) for a schema
    it cannot convert.
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
    logical = schema.get("name")
    if logical is not None and type(logical) is not str:
        raise ValueError(f"schema name {preview(logical)} is not a string")
    params = _parameters(schema)
    avro = wire == "avro"
    if logical == "org.apache.kafka.connect.data.Decimal":
        scale = _scale(params)
        return native_decimal_converter(scale) if avro else decimal_converter(scale)
    if logical is not None:
        found = (_LOGICAL_AVRO if avro else _LOGICAL).get(logical)
        if found is not None:
            return found
    container = _container_converter(schema, binary_mode, wire)
    if container is not None:
        return container
    kind = schema.get("type")
    source_type = str(params.get("__debezium.source.column.type", "")).upper()
    if kind == "string":
        if source_type in ("NUMERIC", "DECIMAL"):
            return decimal_text
        if source_type == "BYTEA" and binary_mode in BINARY_TEXT:
            return BINARY_TEXT[binary_mode]
    found = (AVRO_PRIMITIVE if avro else JSON_PRIMITIVE).get(str(kind))
    if found is None:
        raise ValueError(f"unsupported Connect schema type {preview(kind)}")
    return found
