"""Avro change messages in the Confluent wire format, read with fastavro.

Wire format (Confluent Schema Registry docs, "Wire format"): byte 0 is the magic byte ``0``,
bytes 1-4 the schema id (big-endian, unsigned 32-bit), the rest the Avro binary encoding of
the record with that writer schema. Kafka Connect's Apicurio ``AvroConverter`` writes it
with ``apicurio.registry.as-confluent=true`` (see ``connectors/debezium.py``).

The Avro schema is the one Kafka Connect's ``AvroData`` derives from the Connect schema
(Apicurio's port of Confluent's ``AvroData``): records for structs, ``["null", T]`` unions
for optional fields, ``connect.name``/``connect.parameters``/``connect.type`` properties
carrying the Connect semantic name (``io.debezium.time.MicroTimestamp``...), its parameters
(``scale``, ``__debezium.source.column.type``...) and INT8/INT16. :func:`connect_schema`
turns it back into the Connect schema as the ``JsonConverter`` writes it, so the JSON
decoder's conversion plans (``pipeline.decode.plans``) apply unchanged, with ``wire="avro"`` for
the values fastavro returns (BYTES as raw bytes).

fastavro reads with a copy of the writer schema stripped of ``logicalType``
(:func:`raw_reader_schema`): values come back as Avro's primitives (days, microseconds,
unscaled decimal bytes) and the conversion to Python values is the one of the JSON path, to
the same exact results.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from fastavro import parse_schema, schemaless_reader

__all__ = ["AvroReader", "WireFormatError", "connect_schema", "raw_reader_schema", "split_wire"]

MAGIC = 0
HEADER_LEN = 5

_CONNECT_PRIMITIVE = {
    "int": "int32",
    "long": "int64",
    "float": "float",  # the JsonConverter's names of FLOAT32/FLOAT64
    "double": "double",
    "boolean": "boolean",
    "string": "string",
    "bytes": "bytes",
}
# Connect's own logical types written as Avro logical types by AvroData (when the schema has no
# connect.name, e.g. a registry schema written by hand).
_AVRO_LOGICAL_TO_CONNECT = {
    "decimal": "org.apache.kafka.connect.data.Decimal",
    "date": "org.apache.kafka.connect.data.Date",
    "time-millis": "org.apache.kafka.connect.data.Time",
    "timestamp-millis": "org.apache.kafka.connect.data.Timestamp",
}


class WireFormatError(ValueError):
    """The bytes are not a Confluent wire-format message."""


def split_wire(data: bytes) -> tuple[int, int]:
    """``(schema id, offset of the Avro body)`` of a Confluent wire-format message.

    Raises WireFormatError when ``data`` is shorter than the 5-byte header or its magic byte
    is not 0 (e.g. a JSON message: ``{`` is 0x7b).
    """
    if len(data) < HEADER_LEN:
        raise WireFormatError(f"{len(data)} bytes: too short for the Confluent wire format (5-byte header)")
    if data[0] != MAGIC:
        raise WireFormatError(f"magic byte is 0x{data[0]:02x}, not 0x00: not the Confluent Avro wire format")
    return int.from_bytes(data[1:HEADER_LEN], "big"), HEADER_LEN


def raw_reader_schema(schema: Any) -> Any:
    """A copy of an Avro schema (JSON value) without ``logicalType`` attributes, so that fastavro
    returns the underlying primitives (ints, longs, raw bytes)."""
    if isinstance(schema, dict):
        return {k: raw_reader_schema(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [raw_reader_schema(v) for v in schema]
    return schema


def connect_schema(schema: Any) -> dict[str, Any]:
    """The Connect schema, in the ``JsonConverter``'s JSON form (``type``, ``optional``,
    ``name``, ``parameters``, ``fields``/``items``/``keys``/``values``), of an Avro schema
    written by Kafka Connect's ``AvroData``.

    Mapping (Confluent/Apicurio ``AvroData.toConnectSchema``): ``["null", T]`` -> T optional;
    record -> struct (name from ``connect.name``, else the Avro full name); array of
    ``MapEntry`` records -> map; map -> map with string keys; int with ``connect.type``
    int8/int16 -> that, else int32; long -> int64; float/double -> float/double (FLOAT32/FLOAT64); enum ->
    string; fixed -> bytes. Named-type references are resolved. Raises ValueError for a union
    of several non-null types (Debezium does not produce them).
    """
    return _to_connect(schema, {}, "", False)


def _full_name(schema: dict[str, Any], namespace: str) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace) or ""
    return f"{ns}.{name}" if ns else name


def _to_connect(schema: Any, named: dict[str, dict[str, Any]], namespace: str, optional: bool) -> dict[str, Any]:
    if isinstance(schema, str):
        ref = named.get(schema) or named.get(f"{namespace}.{schema}")
        if ref is not None:
            return {**ref, "optional": optional}
        schema = {"type": schema}
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null" and not (isinstance(b, dict) and b.get("type") == "null")]
        if len(branches) != 1:
            raise ValueError(f"unsupported Avro union of {len(branches)} non-null types")
        return _to_connect(branches[0], named, namespace, optional or len(branches) < len(schema))
    if not isinstance(schema, dict):
        raise ValueError(f"not an Avro schema: {schema!r:.60}")
    kind = schema.get("type")
    if isinstance(kind, (dict, list)):
        return _to_connect(kind, named, namespace, optional)
    return _from_named_type(schema, kind, named, namespace, optional)


def _from_named_type(
    schema: dict[str, Any], kind: Any, named: dict[str, dict[str, Any]], namespace: str, optional: bool
) -> dict[str, Any]:
    """The Connect schema of an Avro schema object whose ``type`` is the name ``kind``."""
    out: dict[str, Any] = {"optional": optional}
    name = schema.get("connect.name")
    raw_params = schema.get("connect.parameters") or {}
    if not isinstance(raw_params, dict):
        raise ValueError(f"connect.parameters is {type(raw_params).__name__}, not an object")
    params = {str(k): str(v) for k, v in raw_params.items()}
    if kind == "record":
        _record(schema, out, name, named, namespace)
    elif kind == "array":
        _array(schema["items"], out, named, namespace)
    elif kind == "map":
        out["type"] = "map"
        out["keys"] = {"type": "string", "optional": False}
        out["values"] = _to_connect(schema["values"], named, namespace, False)
    elif kind in ("enum", "fixed"):
        out["type"] = "string" if kind == "enum" else "bytes"
        named[_full_name(schema, namespace)] = dict(out)
    elif kind in _CONNECT_PRIMITIVE:
        name = _primitive(schema, kind, out, name, params)
    else:
        raise ValueError(f"unsupported Avro type {kind!r}")
    if name is not None and "name" not in out:
        out["name"] = name
    if params:
        out["parameters"] = params
    return out


def _record(
    schema: dict[str, Any], out: dict[str, Any], name: Any, named: dict[str, dict[str, Any]], namespace: str
) -> None:
    """Fill ``out`` as the struct of the Avro record ``schema`` (registered in ``named`` first,
    so that its fields may refer to it)."""
    full = _full_name(schema, namespace)
    inner_ns = full.rpartition(".")[0]
    out["type"] = "struct"
    out["name"] = name or full
    fields: list[dict[str, Any]] = []
    out["fields"] = fields
    named[full] = out
    for field in schema.get("fields", []):
        converted = _to_connect(field["type"], named, inner_ns, False)
        fields.append({**converted, "field": field["name"]})


def _array(items: Any, out: dict[str, Any], named: dict[str, dict[str, Any]], namespace: str) -> None:
    """Fill ``out`` as the array of ``items``, or as the map an array of MapEntry records is."""
    entry = _map_entry(items, named, namespace)
    if entry is not None:
        out["type"] = "map"
        out["keys"], out["values"] = entry
    else:
        out["type"] = "array"
        out["items"] = _to_connect(items, named, namespace, False)


def _primitive(schema: dict[str, Any], kind: str, out: dict[str, Any], name: Any, params: dict[str, str]) -> Any:
    """Fill ``out`` as the Connect primitive of ``kind``; return the Connect name, derived from an
    Avro ``logicalType`` when ``connect.name`` is absent (adding a decimal's ``scale``)."""
    out["type"] = (
        schema.get("connect.type") if kind == "int" and schema.get("connect.type") else _CONNECT_PRIMITIVE[kind]
    )
    logical = schema.get("logicalType")
    if name is None and logical in _AVRO_LOGICAL_TO_CONNECT:
        name = _AVRO_LOGICAL_TO_CONNECT[logical]
        if logical == "decimal":
            params.setdefault("scale", str(schema.get("scale", 0)))
    return name


def _map_entry(items: Any, named: dict[str, dict[str, Any]], namespace: str) -> tuple[Any, Any] | None:
    """Key and value schemas when ``items`` is AvroData's ``MapEntry`` record (maps whose keys
    are not strings are written as arrays of ``{key, value}`` records)."""
    if not (isinstance(items, dict) and items.get("type") == "record"):
        return None
    if not str(items.get("name", "")).endswith("MapEntry"):
        return None
    fields = {f["name"]: f["type"] for f in items.get("fields", [])}
    if set(fields) != {"key", "value"}:
        return None
    return _to_connect(fields["key"], named, namespace, False), _to_connect(fields["value"], named, namespace, False)


class AvroReader:
    """Reads Confluent wire-format messages: writer schema by id from ``fetch_schema`` (e.g.
    :meth:`pipeline.decode.registry.SchemaRegistryClient.schema`), parsed once per id.

    ``read(data)`` returns ``(schema id, Connect schema, decoded value)``. Errors: whatever
    ``fetch_schema`` raises (unknown id, registry down), WireFormatError for a bad header,
    ValueError for a schema that is not Connect-derived Avro, and fastavro's errors
    (EOFError, ValueError...) for a body that does not match its schema.
    """

    def __init__(self, fetch_schema: Callable[[int], Any], max_cached: int = 1000) -> None:
        self._fetch = fetch_schema
        self._parsed: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._limit = max(1, max_cached)

    def schema(self, schema_id: int) -> tuple[Any, dict[str, Any]]:
        """``(fastavro parsed raw reader schema, Connect schema)`` of ``schema_id``."""
        found = self._parsed.get(schema_id)
        if found is None:
            writer = self._fetch(schema_id)
            found = (parse_schema(raw_reader_schema(writer)), connect_schema(writer))
            if len(self._parsed) >= self._limit:
                self._parsed.clear()
            self._parsed[schema_id] = found
        return found

    def read(self, data: bytes) -> tuple[int, dict[str, Any], Any]:
        """Decode one message; see the class docstring."""
        schema_id, start = split_wire(data)
        parsed, connect = self.schema(schema_id)
        body = io.BytesIO(data)
        body.seek(start)
        value = schemaless_reader(body, parsed, None)
        if body.tell() != len(data):
            raise ValueError(f"{len(data) - body.tell()} bytes left after the Avro record (schema id {schema_id})")
        return schema_id, connect, value
