"""Avro (Confluent wire format) decoding: header parsing, Avro -> Connect schema mapping, and
the same events as the JSON decoder for the same change, value for value."""

from __future__ import annotations

import base64
import io
import json
import struct
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Skip
from pipeline.decode.avro import AvroReader, WireFormatError, connect_schema, raw_reader_schema, split_wire
from pipeline.decode.config import DecoderConfig
from pipeline.decode.converters import converter_for
from pipeline.decode.decoder import Decoder
from pipeline.decode.registry import UnknownSchemaError
from pipeline.decode.values import _float32


def _opt(schema: Any) -> list[Any]:
    return ["null", schema]


def _dbz(kind: str, name: str, **params: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "connect.version": 1, "connect.name": name}
    if params:
        out["connect.parameters"] = params
    return out


# An Avro value schema as Kafka Connect's AvroData writes it for a Debezium PostgreSQL envelope.
ROW = {
    "type": "record",
    "name": "Value",
    "namespace": "p.public.t",
    "fields": [
        {"name": "id", "type": {"type": "int", "connect.parameters": {"__debezium.source.column.type": "INT4"}}},
        {"name": "small", "type": _opt({"type": "int", "connect.type": "int16"}), "default": None},
        {
            "name": "amount",
            "type": _opt(
                {
                    "type": "bytes",
                    "scale": 2,
                    "precision": 12,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                }
            ),
            "default": None,
        },
        {
            "name": "free",
            "type": _opt(
                {
                    "type": "record",
                    "name": "VariableScaleDecimal",
                    "namespace": "io.debezium.data",
                    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
                    "connect.name": "io.debezium.data.VariableScaleDecimal",
                }
            ),
            "default": None,
        },
        {"name": "r", "type": _opt("float"), "default": None},
        {"name": "d", "type": _opt(_dbz("int", "io.debezium.time.Date")), "default": None},
        {"name": "tm", "type": _opt(_dbz("long", "io.debezium.time.MicroTime")), "default": None},
        {"name": "ts", "type": _opt(_dbz("long", "io.debezium.time.MicroTimestamp")), "default": None},
        {"name": "tstz", "type": _opt(_dbz("string", "io.debezium.time.ZonedTimestamp")), "default": None},
        {"name": "u", "type": _opt(_dbz("string", "io.debezium.data.Uuid")), "default": None},
        {"name": "j", "type": _opt(_dbz("string", "io.debezium.data.Json")), "default": None},
        {"name": "b", "type": _opt("bytes"), "default": None},
        {"name": "tags", "type": _opt({"type": "array", "items": _opt("string")}), "default": None},
        {"name": "big", "type": _opt("string"), "default": None},
    ],
    "connect.name": "p.public.t.Value",
}
SOURCE = {
    "type": "record",
    "name": "Source",
    "namespace": "io.debezium.connector.postgresql",
    "fields": [
        {"name": "version", "type": "string"},
        {"name": "ts_ms", "type": "long"},
        {"name": "snapshot", "type": _opt("string"), "default": None},
        {"name": "db", "type": "string"},
        {"name": "sequence", "type": _opt("string"), "default": None},
        {"name": "schema", "type": "string"},
        {"name": "table", "type": "string"},
        {"name": "txId", "type": _opt("long"), "default": None},
        {"name": "lsn", "type": _opt("long"), "default": None},
    ],
}
ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "p.public.t",
    "fields": [
        {"name": "before", "type": _opt(ROW), "default": None},
        {"name": "after", "type": _opt("Value"), "default": None},  # a named reference, as AvroData writes it
        {"name": "source", "type": SOURCE},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": _opt("long"), "default": None},
    ],
    "connect.name": "p.public.t.Envelope",
}
KEY = {
    "type": "record",
    "name": "Key",
    "namespace": "p.public.t",
    "fields": [{"name": "id", "type": "int"}],
    "connect.name": "p.public.t.Key",
}
SCHEMAS = {1: ENVELOPE, 2: KEY}


def _wire(schema_id: int, schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(out, parse_schema(raw_reader_schema(schema)), record)
    return out.getvalue()


def _unscaled(value: Decimal) -> bytes:
    sign, digits, _ = value.as_tuple()
    n = int("".join(map(str, digits))) * (-1 if sign else 1)
    return n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)


ROW_AVRO: dict[str, Any] = {
    "id": 7,
    "small": -3,
    "amount": _unscaled(Decimal("-1234567890.12")),
    "free": {"scale": 5, "value": _unscaled(Decimal("3.14159").scaleb(5))},
    "r": 1.1,
    "d": 19782,
    "tm": 45296123456,
    "ts": 1709205255123456,
    "tstz": "2024-02-29T11:14:15.123456Z",
    "u": "2f1d1a36-7b41-4a4e-9f3c-0c7e7bfae2b1",
    "j": '{"a": [1, 2]}',
    "b": b"\x00\xffbin",
    "tags": ["x", None],
    "big": "__debezium_unavailable_value",
}
SOURCE_AVRO = {
    "version": "3.6.3.Final",
    "ts_ms": 1700000000000,
    "snapshot": "false",
    "db": "d",
    "sequence": '["100","120"]',
    "schema": "public",
    "table": "t",
    "txId": 5,
    "lsn": 120,
}


def _avro_decoder() -> Decoder:
    reader = AvroReader(SCHEMAS.__getitem__)
    return Decoder(DecoderConfig(), avro_values=reader, avro_keys=reader)


def _json_message() -> tuple[bytes, bytes]:
    """The same change as the JsonConverter writes it (schema from connect_schema)."""
    schema = connect_schema(ENVELOPE)
    row = dict(ROW_AVRO)
    row["amount"] = base64.b64encode(row["amount"]).decode()
    row["free"] = {"scale": 5, "value": base64.b64encode(row["free"]["value"]).decode()}
    row["b"] = base64.b64encode(row["b"]).decode()
    row["r"] = 1.1  # Jackson writes Float.toString
    payload = {"before": None, "after": row, "source": SOURCE_AVRO, "op": "u", "ts_ms": 1}
    value = json.dumps({"schema": schema, "payload": payload}).encode()
    key = json.dumps({"schema": connect_schema(KEY), "payload": {"id": 7}}).encode()
    return key, value


def test_avro_change_decodes_to_exact_values() -> None:
    value = _wire(1, ENVELOPE, {"before": None, "after": ROW_AVRO, "source": SOURCE_AVRO, "op": "u", "ts_ms": 1})
    event = _avro_decoder().decode("p.public.t", 0, 5, _wire(2, KEY, {"id": 7}), value)
    assert isinstance(event, ChangeEvent)
    after = event.after
    assert after is not None
    assert after["amount"] == Decimal("-1234567890.12") and str(after["amount"]) == "-1234567890.12"
    assert str(after["free"]) == "3.14159"
    assert after["r"] == 1.1
    assert after["d"] == date(2024, 2, 29)
    assert after["tm"] == time(12, 34, 56, 123456)
    assert after["ts"] == datetime(2024, 2, 29, 11, 14, 15, 123456)
    assert after["tstz"] == datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=UTC)
    assert after["u"] == uuid.UUID("2f1d1a36-7b41-4a4e-9f3c-0c7e7bfae2b1")
    assert after["j"] == '{"a": [1, 2]}'
    assert after["b"] == b"\x00\xffbin"
    assert after["tags"] == ["x", None]
    assert "big" not in after and event.unavailable == frozenset({"big"})
    assert event.key == {"id": 7} and event.key_columns == ("id",)
    assert event.position.commit_lsn == 100 and event.position.lsn == 120
    columns = {c.name: c for c in event.columns or ()}
    assert columns["amount"].logical == "org.apache.kafka.connect.data.Decimal"
    assert columns["amount"].parameters["scale"] == "2"
    assert columns["small"].type == "int16" and columns["small"].optional
    assert columns["id"].parameters == {"__debezium.source.column.type": "INT4"} and not columns["id"].optional


def test_avro_and_json_give_equal_events() -> None:
    value = _wire(1, ENVELOPE, {"before": None, "after": ROW_AVRO, "source": SOURCE_AVRO, "op": "u", "ts_ms": 1})
    avro = _avro_decoder().decode("p.public.t", 0, 5, _wire(2, KEY, {"id": 7}), value)
    key, js = _json_message()
    from_json = Decoder(DecoderConfig()).decode("p.public.t", 0, 5, key, js)
    assert isinstance(avro, ChangeEvent) and isinstance(from_json, ChangeEvent)
    assert avro.after == from_json.after
    assert avro.key == from_json.key
    assert avro.unavailable == from_json.unavailable
    assert avro.columns == from_json.columns
    assert avro.position == from_json.position


def test_delete_tombstone_and_unknown_schema() -> None:
    decoder = _avro_decoder()
    value = _wire(1, ENVELOPE, {"before": ROW_AVRO | {"big": "x"}, "after": None, "source": SOURCE_AVRO, "op": "d"})
    event = decoder.decode("p.public.t", 0, 1, _wire(2, KEY, {"id": 7}), value)
    assert isinstance(event, ChangeEvent) and event.after is None and event.before is not None
    assert decoder.decode("p.public.t", 0, 2, _wire(2, KEY, {"id": 7}), None).reason == "tombstone"  # type: ignore[union-attr]

    def unknown(schema_id: int) -> Any:
        raise UnknownSchemaError(schema_id, "error_code 40403: Schema not found")

    strict = Decoder(DecoderConfig(), avro_values=AvroReader(unknown))
    with pytest.raises(PoisonMessageError, match=r"schema id 9 unknown to the registry.*40403"):
        strict.decode("p.public.t", 0, 3, None, b"\x00\x00\x00\x00\x09\x02")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"schema":null,"payload":{}}', "magic byte is 0x7b"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x00\x00\x01\x02", "not decodable Avro"),  # truncated body
    ],
)
def test_bad_avro_messages_are_poison(data: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=reason):
        _avro_decoder().decode("p.public.t", 0, 1, None, data)


def test_trailing_bytes_are_poison() -> None:
    value = _wire(1, ENVELOPE, {"before": None, "after": ROW_AVRO, "source": SOURCE_AVRO, "op": "c", "ts_ms": 1})
    with pytest.raises(PoisonMessageError, match="left after the Avro record"):
        _avro_decoder().decode("p.public.t", 0, 1, None, value + b"\x00")


@given(st.integers(0, 2**32 - 1), st.binary(max_size=20))
def test_split_wire_reads_the_header(schema_id: int, body: bytes) -> None:
    assert split_wire(b"\x00" + schema_id.to_bytes(4, "big") + body) == (schema_id, 5)


@given(st.binary(min_size=5).filter(lambda b: b[0] != 0))
def test_split_wire_rejects_other_magic(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        split_wire(data)


@given(st.integers(-(10**40), 10**40), st.integers(0, 20))
def test_decimal_bytes_equal_json_base64(unscaled: int, scale: int) -> None:
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    schema = {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": str(scale)}}
    from_avro = converter_for(schema, wire="avro")(raw)
    from_json = converter_for(schema)(base64.b64encode(raw).decode())
    assert from_avro == from_json and str(from_avro) == str(from_json)
    assert from_avro == Decimal(f"{unscaled}E{-scale}")


@given(st.floats(width=32, allow_nan=False))
def test_float32_is_the_shortest_round_trip(value: float) -> None:
    result = _float32(value)
    assert struct.unpack(">f", struct.pack(">f", result))[0] == value
    assert len(repr(result)) <= len(repr(value))


def test_connect_schema_mapping() -> None:
    schema = connect_schema(ENVELOPE)
    fields = {f["field"]: f for f in schema["fields"]}
    assert schema["type"] == "struct" and schema["name"] == "p.public.t.Envelope"
    assert fields["after"]["fields"] == fields["before"]["fields"] and fields["after"]["optional"]
    assert fields["source"]["name"] == "io.debezium.connector.postgresql.Source"
    entry = connect_schema(
        {
            "type": "array",
            "items": {
                "type": "record",
                "name": "MapEntry",
                "namespace": "io.confluent.connect.avro",
                "fields": [{"name": "key", "type": "int"}, {"name": "value", "type": _opt("string")}],
            },
        }
    )
    assert entry["type"] == "map" and entry["keys"]["type"] == "int32" and entry["values"]["optional"]
    assert connect_schema({"type": "int", "logicalType": "date"})["name"] == "org.apache.kafka.connect.data.Date"
    with pytest.raises(ValueError, match="union"):
        connect_schema(["null", "int", "string"])


def test_geometry_and_variable_scale_decimal_from_avro_bytes() -> None:
    wkb = bytes.fromhex("0101000000000000000000f03f0000000000000040")
    point = {"type": "struct", "name": "io.debezium.data.geometry.Point"}
    geometry = {"type": "struct", "name": "io.debezium.data.geometry.Geography"}
    p = converter_for(point, wire="avro")({"x": 1.0, "y": 2.0, "wkb": wkb, "srid": None})
    assert (p.x, p.y, p.wkb, p.srid) == (1.0, 2.0, wkb, None)
    g = converter_for(geometry, wire="avro")({"wkb": wkb, "srid": 4326})
    assert (g.wkb, g.srid, g.geography) == (wkb, 4326, True)
    vsd = {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"}
    assert str(converter_for(vsd, wire="avro")({"scale": 3, "value": b"\xff\x85"})) == "-0.123"
    with pytest.raises(TypeError):
        converter_for({"type": "bytes"}, wire="avro")("AAEC")  # base64 text is not Avro bytes


# --------------------------------------------------------------------------- fuzzing the Avro path

_GOOD_VALUE = _wire(1, ENVELOPE, {"before": None, "after": ROW_AVRO, "source": SOURCE_AVRO, "op": "u", "ts_ms": 1})
_GOOD_KEY = _wire(2, KEY, {"id": 7})
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _decode_or_poison(decoder: Decoder, key: bytes | None, value: bytes) -> None:
    """The contract: an event, a skip, or PoisonMessageError with a reason; nothing else."""
    out: ChangeEvent | Skip | PoisonMessageError
    try:
        out = decoder.decode("p.public.t", 0, 9, key, value)
    except PoisonMessageError as exc:
        out = exc
    assert isinstance(out, ChangeEvent) or out.reason


@given(st.integers(0, len(_GOOD_VALUE)), st.binary(max_size=8), st.integers(0, len(_GOOD_VALUE)))
def test_truncated_or_spliced_avro_is_poison_or_an_event(cut: int, junk: bytes, at: int) -> None:
    _decode_or_poison(_avro_decoder(), _GOOD_KEY, _GOOD_VALUE[:cut])
    _decode_or_poison(_avro_decoder(), _GOOD_KEY[: cut % len(_GOOD_KEY)], _GOOD_VALUE)
    _decode_or_poison(_avro_decoder(), _GOOD_KEY, _GOOD_VALUE[:at] + junk + _GOOD_VALUE[at:])


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _nodes(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _nodes(v, (*path, i))
    return out


def _put(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _put(node[path[0]], path[1:], value)
    return copy


@given(st.sampled_from(_nodes(ENVELOPE)), _JSONISH)
def test_a_mangled_registry_schema_is_poison_or_an_event(path: tuple[Any, ...], junk: Any) -> None:
    """A writer schema from the registry with any node replaced: the message is poison (or
    still decodes), never another exception."""
    schemas = {1: _put(ENVELOPE, path, junk), 2: KEY}
    reader = AvroReader(schemas.__getitem__)
    _decode_or_poison(Decoder(DecoderConfig(), avro_values=reader, avro_keys=reader), _GOOD_KEY, _GOOD_VALUE)
