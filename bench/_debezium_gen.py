"""Debezium 3.6 PostgreSQL change messages for the apply benchmark, byte for byte.

The table is ``public.bench (id bigint PRIMARY KEY, name text, amount numeric(12,2),
updated_at timestamptz, payload jsonb)``. Messages are what Kafka Connect's ``JsonConverter``
(``schemas.enable=true``) writes for it under this project's connector configuration
(``connectors/debezium.py``: ``column.propagate.source.type=.*``, ``decimal.handling.mode=precise``
with BASE64 decimals, ``provide.transaction.metadata=true``, ``tombstones.on.delete=true``).

The layout was copied from a real message of exactly this table captured from Debezium
3.6.3.Final on the local stack (``tests/integration/test_bench_smoke.py`` keeps that capture and
checks this module reproduces it byte for byte). Facts it shows, relied on here:

- the key is ``{"schema":{...int64 id...},"payload":{"id":N}}``; the value is
  ``{"schema":<Envelope>,"payload":{before,after,source,transaction,op,ts_ms,ts_us,ts_ns}}``;
- ``amount`` (Decimal, scale 2) is the base64 of the minimal big-endian two's complement of
  the unscaled value (Java ``BigInteger.toByteArray``): 1234.50 -> ``AeI6``, -0.01 -> ``/w==``;
- ``updated_at`` (ZonedTimestamp) is UTC ISO-8601 with exactly 6 fraction digits and ``Z``;
- ``payload`` (Json) is PostgreSQL's jsonb text: keys ordered by length, then bytes, with
  ``", "`` and ``": "`` separators;
- ``source.sequence`` is ``["<last commit LSN>","<event LSN>"]`` (``[null,...]`` for the first
  transaction after the connector starts), ``source.snapshot`` is null while streaming,
  ``transaction.id`` is ``"<txId>:<event LSN>"``; a delete's ``before`` holds only the key
  (``REPLICA IDENTITY DEFAULT``) and is followed by a tombstone (same key, null value).

``DebeziumAvro`` writes the same changes in Avro, in the Confluent wire format (magic byte 0,
4-byte schema id, Avro binary), with the Avro schemas Kafka Connect's ``AvroData`` derives from
the same Connect schemas (:func:`avro_schema`; registered by the caller, who passes the ids).

Pure code: no Kafka, no database.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_writer

TABLE = "bench"
SCHEMA = "public"
TABLE_DDL = (
    "CREATE TABLE public.bench (id bigint PRIMARY KEY, name text, amount numeric(12,2),"
    " updated_at timestamptz, payload jsonb)"
)
"""The source table the messages describe (for reference; the benchmark has no source database)."""

DEBEZIUM_VERSION = "3.6.3.Final"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TAGS = ("new", "vip", "eu", "us", "b2b", "retail", "promo", "returning")


def _column(
    name: str,
    kind: str,
    source_type: str,
    length: str,
    column_scale: str,
    logical: str | None = None,
    parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A row field schema in JsonConverter's key order (type, optional, name, version, parameters, field)."""
    out: dict[str, Any] = {"type": kind, "optional": name != "id"}
    if logical is not None:
        out["name"] = logical
        out["version"] = 1
    out["parameters"] = {
        **(parameters or {}),
        "__debezium.source.column.type": source_type,
        "__debezium.source.column.length": length,
        "__debezium.source.column.scale": column_scale,
        "__debezium.source.column.name": name,
    }
    out["field"] = name
    return out


ROW_FIELDS: list[dict[str, Any]] = [
    _column("id", "int64", "INT8", "19", "0"),
    _column("name", "string", "TEXT", "2147483647", "0"),
    _column(
        "amount",
        "bytes",
        "NUMERIC",
        "12",
        "2",
        "org.apache.kafka.connect.data.Decimal",
        {"scale": "2", "connect.decimal.precision": "12"},
    ),
    _column("updated_at", "string", "TIMESTAMPTZ", "35", "6", "io.debezium.time.ZonedTimestamp"),
    _column("payload", "string", "JSONB", "2147483647", "0", "io.debezium.data.Json"),
]

SOURCE_FIELDS: list[dict[str, Any]] = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
        "default": "false",
        "field": "snapshot",
    },
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
    {"type": "string", "optional": True, "field": "origin"},
    {"type": "int64", "optional": True, "field": "origin_lsn"},
]

TRANSACTION_BLOCK: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}


def value_schema(prefix: str) -> dict[str, Any]:
    """The ``Envelope`` schema of ``<prefix>.public.bench`` (version 2, as Debezium 3.x writes it)."""
    row = {"type": "struct", "fields": ROW_FIELDS, "optional": True, "name": f"{prefix}.{SCHEMA}.{TABLE}.Value"}
    return {
        "type": "struct",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {
                "type": "struct",
                "fields": SOURCE_FIELDS,
                "optional": False,
                "name": "io.debezium.connector.postgresql.Source",
                "version": 1,
                "field": "source",
            },
            TRANSACTION_BLOCK,
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{prefix}.{SCHEMA}.{TABLE}.Envelope",
        "version": 2,
    }


def key_schema(prefix: str) -> dict[str, Any]:
    """The ``Key`` schema of ``<prefix>.public.bench``."""
    return {
        "type": "struct",
        "fields": [{"type": "int64", "optional": False, "field": "id"}],
        "optional": False,
        "name": f"{prefix}.{SCHEMA}.{TABLE}.Key",
    }


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Row:
    """One row of ``public.bench`` as the source holds it."""

    id: int
    name: str
    amount: Decimal
    """numeric(12,2): exactly two decimal places."""
    updated_at_us: int
    """timestamptz as microseconds since the Unix epoch (UTC)."""
    payload: dict[str, Any] | None

    @property
    def updated_at(self) -> datetime:
        """``updated_at_us`` as an aware UTC datetime."""
        return _EPOCH + timedelta(microseconds=self.updated_at_us)


def decimal_base64(value: Decimal, scale: int) -> str:
    """Connect ``Decimal`` in JSON: base64 of the unscaled value's minimal two's complement."""
    unscaled = int(value.scaleb(scale))
    bits = unscaled.bit_length() if unscaled >= 0 else (~unscaled).bit_length()
    return base64.b64encode(unscaled.to_bytes(bits // 8 + 1, "big", signed=True)).decode()


def zoned_timestamp(micros: int) -> str:
    """``io.debezium.time.ZonedTimestamp`` of a timestamptz(6): ``2024-01-01T00:00:00.123400Z``."""
    ts = _EPOCH + timedelta(microseconds=micros)
    return f"{ts:%Y-%m-%dT%H:%M:%S}.{ts.microsecond:06d}Z"


def jsonb_text(value: Any) -> str:
    """PostgreSQL's text output of a jsonb value (keys by length then bytes, spaced separators)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return "{" + ", ".join(f"{jsonb_text(k)}: {jsonb_text(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def row_image(row: Row, payload_json: str | None = None, updated_at: str | None = None) -> dict[str, Any]:
    """The ``after`` image of ``row``; ``payload_json`` and ``updated_at`` may be given
    precomputed (jsonb text, ZonedTimestamp text) to save time."""
    if payload_json is None and row.payload is not None:
        payload_json = jsonb_text(row.payload)
    return {
        "id": row.id,
        "name": row.name,
        "amount": decimal_base64(row.amount, 2),
        "updated_at": updated_at or zoned_timestamp(row.updated_at_us),
        "payload": payload_json,
    }


def key_image(row_id: int) -> dict[str, Any]:
    """The ``before`` image of a delete under ``REPLICA IDENTITY DEFAULT``: key only."""
    return {"id": row_id, "name": None, "amount": None, "updated_at": None, "payload": None}


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where and when a change happened in the source (``source`` block and envelope times)."""

    tx_id: int
    lsn: int
    """The event's own WAL position."""
    last_commit_lsn: int | None
    """Commit LSN of the previous transaction; None for the first one after the connector starts."""
    commit_ts_us: int
    """Commit time, µs since the epoch (source.ts_ms/ts_us/ts_ns)."""
    total_order: int
    """1-based position of the event in its transaction."""
    emitted_ts_ns: int
    """When Debezium processed the event, ns since the epoch (envelope ts_ms/ts_us/ts_ns)."""


class DebeziumJson:
    """Serialises ``<prefix>.public.bench`` keys and values exactly as ``JsonConverter`` does."""

    def __init__(self, prefix: str, database: str) -> None:
        self.prefix = prefix
        self.database = database
        self._value_head = b'{"schema":' + orjson.dumps(value_schema(prefix)) + b',"payload":'
        self.head = self._value_head
        self._key_head = b'{"schema":' + orjson.dumps(key_schema(prefix)) + b',"payload":'

    def key(self, row_id: int) -> bytes:
        """Key bytes of ``row_id``."""
        return self._key_head + orjson.dumps({"id": row_id}) + b"}"

    def value(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, src: SourceInfo) -> bytes:
        """Value bytes of one change (``op`` ``c``, ``u`` or ``d``)."""
        last = "null" if src.last_commit_lsn is None else f'"{src.last_commit_lsn}"'
        payload = {
            "before": before,
            "after": after,
            "source": {
                "version": DEBEZIUM_VERSION,
                "connector": "postgresql",
                "name": self.prefix,
                "ts_ms": src.commit_ts_us // 1000,
                "snapshot": None,
                "db": self.database,
                "sequence": f'[{last},"{src.lsn}"]',
                "ts_us": src.commit_ts_us,
                "ts_ns": src.commit_ts_us * 1000,
                "schema": SCHEMA,
                "table": TABLE,
                "txId": src.tx_id,
                "lsn": src.lsn,
                "xmin": None,
                "origin": None,
                "origin_lsn": None,
            },
            "transaction": {
                "id": f"{src.tx_id}:{src.lsn}",
                "total_order": src.total_order,
                "data_collection_order": src.total_order,
            },
            "op": op,
            "ts_ms": src.emitted_ts_ns // 1_000_000,
            "ts_us": src.emitted_ts_ns // 1000,
            "ts_ns": src.emitted_ts_ns,
        }
        return self._value_head + orjson.dumps(payload) + b"}"


_AVRO_PRIMITIVE = {
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "long",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "string": "string",
    "bytes": "bytes",
}


def avro_schema(field: dict[str, Any], named: set[str] | None = None) -> Any:
    """The Avro schema Kafka Connect's ``AvroData`` (Confluent's, and Apicurio's port) writes for
    the Connect schema ``field`` (JsonConverter form): structs as records named by the Connect
    name (a second use is a name reference), optional as ``["null", T]``, ``connect.name`` /
    ``connect.version`` / ``connect.parameters`` / ``connect.type`` properties, and Connect
    ``Decimal`` as ``bytes`` with ``logicalType: decimal``."""
    named = set() if named is None else named
    kind = field["type"]
    out: Any
    if kind == "struct":
        out = _avro_record(field, named)
    elif kind == "array":
        out = {"type": "array", "items": avro_schema(field["items"], named)}
    elif kind == "map":
        out = {"type": "map", "values": avro_schema(field["values"], named)}
    else:
        out = _avro_primitive(field)
    return ["null", out] if field.get("optional") else out


def _avro_record(field: dict[str, Any], named: set[str]) -> Any:
    """The record of a Connect struct, or a reference to its name when already written."""
    full = field.get("name") or "io.confluent.connect.avro.ConnectDefault"
    if full in named:
        return full
    named.add(full)
    namespace, _, short = full.rpartition(".")
    fields = []
    for f in field["fields"]:
        entry: dict[str, Any] = {"name": f["field"], "type": avro_schema(f, named)}
        if f.get("optional"):
            entry["default"] = None
        fields.append(entry)
    out = {"type": "record", "name": short, "namespace": namespace, "fields": fields, "connect.name": full}
    if field.get("version") is not None:
        out["connect.version"] = field["version"]
    return out


def _avro_primitive(field: dict[str, Any]) -> Any:
    """A Connect primitive with its ``connect.*`` properties (Decimal as ``logicalType: decimal``)."""
    kind = field["type"]
    name = field.get("name")
    params = field.get("parameters")
    base = _AVRO_PRIMITIVE[kind]
    if name is None and not params and kind not in ("int8", "int16"):
        return base
    out: dict[str, Any] = {"type": base}
    if kind in ("int8", "int16"):
        out["connect.type"] = kind
    if field.get("version") is not None:
        out["connect.version"] = field["version"]
    if params:
        out["connect.parameters"] = dict(params)
    if name is not None:
        out["connect.name"] = name
    if name == "org.apache.kafka.connect.data.Decimal":
        out["logicalType"] = "decimal"
        out["precision"] = int((params or {}).get("connect.decimal.precision", 64))
        out["scale"] = int((params or {}).get("scale", 0))
    return out


def _raw(schema: Any) -> Any:
    """``schema`` without ``logicalType`` (values are written as their primitives)."""
    if isinstance(schema, dict):
        return {k: _raw(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_raw(v) for v in schema]
    return schema


class DebeziumAvro:
    """Serialises the same changes as :class:`DebeziumJson` in the Confluent Avro wire format;
    ``value_id``/``key_id`` are the registry ids of :func:`avro_schema` of the value and key
    schemas of ``prefix``."""

    def __init__(self, prefix: str, database: str, value_id: int, key_id: int) -> None:
        self._json = DebeziumJson(prefix, database)
        self._value_header = b"\x00" + value_id.to_bytes(4, "big")
        self._key_header = b"\x00" + key_id.to_bytes(4, "big")
        self._value_schema = parse_schema(_raw(avro_schema(value_schema(prefix))))
        self._key_schema = parse_schema(_raw(avro_schema(key_schema(prefix))))

    def key(self, row_id: int) -> bytes:
        """Key bytes of ``row_id``."""
        out = io.BytesIO()
        out.write(self._key_header)
        schemaless_writer(out, self._key_schema, {"id": row_id})
        return out.getvalue()

    def value(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, src: SourceInfo) -> bytes:
        """Value bytes of one change; ``before``/``after`` as :func:`row_image` makes them."""
        payload = orjson.loads(self._json.value(op, before, after, src)[len(self._json.head) : -1])
        for image in ("before", "after"):
            row = payload[image]
            if row is not None and row["amount"] is not None:
                row["amount"] = base64.b64decode(row["amount"])
        out = io.BytesIO()
        out.write(self._value_header)
        schemaless_writer(out, self._value_schema, payload)
        return out.getvalue()


# --------------------------------------------------------------------------- workload


Message = tuple[bytes, bytes | None]
"""(key, value); a None value is a tombstone."""

Serializer = DebeziumJson | DebeziumAvro


@dataclass
class Workload:
    """``events`` change events over ``keys`` primary keys, and the source state they leave.

    Inserts of keys 1..``keys`` come first (transactions of 1-5 rows), then a mix over random
    keys: an existing row is deleted with probability ``delete_ratio``, else updated; a deleted
    row is inserted again (transactions of 1-3 changes). LSNs, commit times and transaction ids
    increase in commit order like a single busy source. ``expected`` is the final state
    (id -> row) once :meth:`messages` has been consumed.
    """

    prefix: str
    events: int
    keys: int
    seed: int = 7
    delete_ratio: float = 0.1
    tombstones: bool = True
    database: str = "bench"
    expected: dict[int, Row] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=lambda: {"c": 0, "u": 0, "d": 0, "tombstone": 0})
    serializer: Callable[[str, str], Serializer] | None = None
    """Factory ``(prefix, database) -> serializer``; default :class:`DebeziumJson`."""
    _commit_cache: tuple[int, str] = field(default=(-1, ""), init=False, repr=False)

    def messages(self) -> Iterator[Message]:
        """Yield every message in source commit order (single pass; fills ``expected``)."""
        rng = random.Random(self.seed)
        ser = (self.serializer or DebeziumJson)(self.prefix, self.database)
        self.expected.clear()
        self.ops = dict.fromkeys(self.ops, 0)
        lsn = 0x2_1A00_0000
        last_commit: int | None = None
        tx_id = 48_000
        commit_us = 1_795_000_000_000_000
        emitted = 0
        next_insert = 1
        while emitted < self.events:
            tx_id += 1
            commit_us += rng.randint(200, 3000)
            inserting = next_insert <= self.keys
            size = min(rng.randint(1, 5) if inserting else rng.randint(1, 3), self.events - emitted)
            lsn += rng.randint(56, 400)  # other activity between transactions
            for order in range(1, size + 1):
                if order > 1:
                    lsn += rng.randint(80, 320)
                if inserting and next_insert <= self.keys:
                    row_id, next_insert = next_insert, next_insert + 1
                else:
                    row_id = rng.randint(1, self.keys)
                src = SourceInfo(
                    tx_id,
                    lsn,
                    last_commit,
                    commit_us,
                    order,
                    commit_us * 1000 + rng.randint(80_000_000, 250_000_000) + rng.randint(0, 999),
                )
                yield from self._change(rng, ser, row_id, src)
                emitted += 1
            last_commit = lsn + rng.randint(48, 200)  # the transaction's commit record
            lsn = last_commit

    def _change(self, rng: random.Random, ser: Serializer, row_id: int, src: SourceInfo) -> Iterator[Message]:
        key = ser.key(row_id)
        current = self.expected.get(row_id)
        if current is not None and rng.random() < self.delete_ratio:
            del self.expected[row_id]
            self.ops["d"] += 1
            yield key, ser.value("d", key_image(row_id), None, src)
            if self.tombstones:
                self.ops["tombstone"] += 1
                yield key, None
            return
        row = _next_row(rng, row_id, current, src.commit_ts_us)
        self.expected[row_id] = row
        op = "c" if current is None else "u"
        self.ops[op] += 1
        text = None if row.payload is None else payload_text(row.payload)
        yield key, ser.value(op, None, row_image(row, text, self._commit_text(src.commit_ts_us)), src)

    def _commit_text(self, micros: int) -> str:
        """ZonedTimestamp text of the transaction's commit time (cached: shared by its events)."""
        if self._commit_cache[0] != micros:
            self._commit_cache = (micros, zoned_timestamp(micros))
        return self._commit_cache[1]


def _next_row(rng: random.Random, row_id: int, current: Row | None, now_us: int) -> Row:
    """A new row, or ``current`` after a typical update (amount always, name sometimes)."""
    cents = rng.randint(-50_000, 25_000_000)
    # Built in jsonb key order (length, then bytes) so payload_text() can be a template.
    payload: dict[str, Any] = {
        "qty": rng.randint(1, 20),
        "sku": f"SKU-{rng.randint(1, 99_999):05d}",
        "tags": rng.sample(_TAGS, rng.randint(0, 3)),
        "flags": {"gift": rng.random() < 0.1, "priority": rng.randint(0, 3)},
    }
    if current is None or rng.random() < 0.2:
        name = f"customer {row_id:07d} {rng.choice(('Ltd', 'GmbH', 'SA', 'Inc', 'BV'))}"
    else:
        name = current.name
    return Row(row_id, name, Decimal(cents).scaleb(-2), now_us, None if rng.random() < 0.02 else payload)


def payload_text(payload: dict[str, Any]) -> str:
    """:func:`jsonb_text` of a payload made by :func:`_next_row`, 10x faster (a template)."""
    tags = ", ".join(f'"{t}"' for t in payload["tags"])
    flags = payload["flags"]
    return (
        f'{{"qty": {payload["qty"]}, "sku": "{payload["sku"]}", "tags": [{tags}], '
        f'"flags": {{"gift": {"true" if flags["gift"] else "false"}, "priority": {flags["priority"]}}}}}'
    )
