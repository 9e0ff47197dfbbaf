"""Per-schema plans: what a value or key schema says (change event, heartbeat, transaction,
notification), how its row is converted, and which raw values of each column are Debezium's
TOAST placeholder (``unavailable.value.placeholder``: unchanged TOASTed value, not sent). Plans
are built once per schema and cached by the wire paths; applying one is the per-message work."""

from __future__ import annotations

import binascii
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pipeline.core.events import Column
from pipeline.decode.config import DEFAULT_UNAVAILABLE_PLACEHOLDER, DecoderConfig
from pipeline.decode.converters import EMPTY_ROW_PLAN, BadMessageError, RowPlan, apply_row, row_plan
from pipeline.decode.values import Wire

__all__ = [
    "KeyPlan",
    "Placeholders",
    "ValuePlan",
    "convert_row",
    "key_plan",
    "strip_toast_generic",
    "toast_forms",
    "value_plan",
]

# Value schema names of Debezium's non-change records (debezium SchemaFactory).
_HEARTBEAT_SCHEMA = "io.debezium.connector.common.Heartbeat"
_TRANSACTION_SCHEMA = "io.debezium.connector.common.TransactionMetadataValue"
_NOTIFICATION_SCHEMA = "io.debezium.connector.common.Notification"


# --------------------------------------------------------------------------- TOAST placeholder


@dataclass(frozen=True, slots=True)
class Placeholders:
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
    def of(cls, raw: bytes) -> Placeholders:
        """The forms of the placeholder octets ``raw`` (:attr:`DecoderConfig.placeholder_bytes`)."""
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
    forms = Placeholders.of(placeholder)
    return _forms_for(schema, forms)


def _forms_for(schema: Mapping[str, Any], ph: Placeholders, wire: Wire = "json") -> tuple[Any, ...]:
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


# --------------------------------------------------------------------------- schema plans


def _column(field: Mapping[str, Any], name: str, config: DecoderConfig | None = None, wire: Wire = "json") -> Column:
    params = field.get("parameters") or {}
    items = field.get("items")
    return Column(
        name=name,
        type=str(field.get("type")),
        optional=bool(field.get("optional", False)),
        logical=field.get("name"),
        parameters={str(k): str(v) for k, v in params.items()},
        items=_column(items, "") if isinstance(items, dict) else None,
        default=_default(field, name, config, wire) if config is not None else None,
    )


def _default(field: Mapping[str, Any], name: str, config: DecoderConfig, wire: Wire) -> Any:
    """The field schema's ``default`` converted like a row value (Connect JSON/Avro schemas carry
    it in the wire form of a value), or None when absent or not convertible."""
    raw = field.get("default")
    if raw is None:
        return None
    try:
        plan = row_plan([{**field, "field": name}], config.binary_handling_mode, wire)
        row: dict[str, Any] = {name: raw}
        apply_row(row, plan)
    except (BadMessageError, ValueError, TypeError):
        return None
    return row[name]


@dataclass(frozen=True, slots=True)
class ValuePlan:
    """What a value schema says: the kind of record and, for change events, the row plan and
    the row's columns (``ChangeEvent.columns``)."""

    kind: Literal["change", "heartbeat", "transaction", "notification", "other"]
    row: RowPlan | None = None
    columns: tuple[Column, ...] | None = None


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """A key schema's row plan and its field names (``ChangeEvent.key_columns``)."""

    row: RowPlan
    key_columns: tuple[str, ...]


def value_plan(schema: Any, config: DecoderConfig, placeholders: Placeholders, wire: Wire = "json") -> ValuePlan:
    """The plan of a value schema (a Connect schema in the JsonConverter's JSON form, or
    converted from Avro by ``pipeline.decode.avro.connect_schema``).

    Raises BadMessageError for a schema that is not a struct of named fields or that has a
    field no converter fits (the message is poison)."""
    try:
        return _value_plan(schema, config, placeholders, wire)
    except ValueError as exc:
        raise BadMessageError(f"value schema: {exc}") from None
    except RecursionError:
        raise BadMessageError("value schema: nested too deeply") from None


def key_plan(schema: Any, config: DecoderConfig, wire: Wire = "json") -> KeyPlan:
    """The plan of a key schema (a struct). Raises BadMessageError as :func:`value_plan`."""
    if not isinstance(schema, dict) or schema.get("type") != "struct" or not isinstance(schema.get("fields"), list):
        raise BadMessageError("key schema is not a struct")
    fields = schema["fields"]
    try:
        plan = row_plan(fields, config.binary_handling_mode, wire)
    except ValueError as exc:
        raise BadMessageError(f"key schema: {exc}") from None
    except RecursionError:
        raise BadMessageError("key schema: nested too deeply") from None
    return KeyPlan(plan, tuple(f["field"] for f in fields))


def _value_plan(schema: Any, config: DecoderConfig, placeholders: Placeholders, wire: Wire) -> ValuePlan:
    if not isinstance(schema, dict):
        raise BadMessageError("value schema is not an object")
    name = schema.get("name")
    if name == _HEARTBEAT_SCHEMA:
        return ValuePlan("heartbeat")
    if name == _TRANSACTION_SCHEMA:
        return ValuePlan("transaction")
    if name == _NOTIFICATION_SCHEMA:
        return ValuePlan("notification")
    fields = schema.get("fields")
    if schema.get("type") != "struct" or not isinstance(fields, list):
        return ValuePlan("other")
    by_name = {f["field"]: f for f in fields if isinstance(f, dict) and type(f.get("field")) is str}
    if "op" not in by_name:
        return ValuePlan("other")
    row_schema = by_name.get("after") or by_name.get("before")
    if not isinstance(row_schema, dict) or row_schema.get("type") != "struct":
        # Truncate-only topics still carry before/after; absent means no row shape to convert.
        return ValuePlan("change", EMPTY_ROW_PLAN, None)
    row_fields = row_schema.get("fields")
    if not isinstance(row_fields, list):
        raise BadMessageError("value schema: 'after' struct without fields")

    def forms(field: Mapping[str, Any]) -> tuple[Any, ...]:
        return _forms_for(field, placeholders, wire)

    plan = row_plan(row_fields, config.binary_handling_mode, wire, forms)
    columns = tuple(_column(f, f["field"], config, wire) for f in row_fields)
    return ValuePlan("change", plan, columns)


def convert_row(where: str, row: dict[str, Any], plan: RowPlan, toast: bool) -> frozenset[str]:
    """Convert ``row`` (the ``where`` image: ``after``, ``before``, ``key``) in place; with
    ``toast``, TOAST placeholders are removed first and their column names returned. Raises
    BadMessageError naming ``where`` and the column."""
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
        apply_row(row, plan)
    except BadMessageError as exc:
        raise BadMessageError(f"{where}.{exc}") from None
    return frozenset(unavailable) if unavailable else frozenset()


def strip_toast_generic(row: dict[str, Any], forms: tuple[Any, ...]) -> frozenset[str]:
    """Remove the columns of a schemaless ``row`` whose value is one of the placeholder
    ``forms`` (:meth:`Placeholders.generic`); return their names."""
    found = [name for name, v in row.items() if type(v) in (str, list, dict) and v in forms]
    for name in found:
        del row[name]
    return frozenset(found)
