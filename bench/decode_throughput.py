"""Decode throughput: events/s of ``pipeline.decode.decoder.Decoder`` on realistic Debezium JSON messages.

Builds N messages the way Kafka Connect's JsonConverter writes Debezium PostgreSQL change events
(schemas enabled, compact JSON, ``column.propagate.source.type`` parameters, a 16-column table
with numeric, timestamptz, jsonb, uuid, text[] and enum columns; 70% updates, 20% inserts, 10%
deletes, TOAST placeholders in 5% of updates), then decodes them all and prints events/s.

    .venv/bin/python bench/decode_throughput.py [-n 200000] [--schemaless] [--transform] [--narrow] [--avro]

``--avro`` re-encodes the same messages in the Confluent Avro wire format (the Avro schemas Kafka
Connect's ``AvroData`` derives, ``_debezium_gen.avro_schema``) and decodes them with the Avro
decoder; schemas come from an in-memory lookup (the registry is fetched once per id anyway).

``--narrow`` uses a pgbench_accounts-like row instead (aid, bid, abalance int, filler char(84)).

No assertions: this prints figures for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import time
import uuid
from typing import Any

import orjson
from _debezium_gen import SOURCE_FIELDS as GENERATED_SOURCE_FIELDS
from _debezium_gen import avro_schema
from fastavro import parse_schema, schemaless_writer

from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent
from pipeline.core.settings.models import TransformRule
from pipeline.decode.avro import AvroReader, raw_reader_schema
from pipeline.decode.decoder import Decoder
from pipeline.transform.transformer import build_transformer

PREFIX = "bench"
TABLE = "orders"


def _col(name: str, kind: str, source: str, logical: str | None = None, **params: str) -> dict[str, Any]:
    field: dict[str, Any] = {"type": kind, "optional": name != "id"}
    if logical:
        field["name"] = logical
        field["version"] = 1
    field["parameters"] = {
        **params,
        "__debezium.source.column.type": source,
        "__debezium.source.column.length": "2147483647",
        "__debezium.source.column.scale": "0",
        "__debezium.source.column.name": name,
    }
    field["field"] = name
    return field


COLUMNS: list[dict[str, Any]] = [
    _col("id", "int64", "INT8"),
    _col("customer_id", "string", "UUID", "io.debezium.data.Uuid"),
    _col("status", "string", "ORDER_STATUS", "io.debezium.data.Enum", allowed="new,paid,shipped,cancelled"),
    _col("amount", "bytes", "NUMERIC", "org.apache.kafka.connect.data.Decimal", scale="2"),
    _col("currency", "string", "BPCHAR"),
    _col("note", "string", "TEXT"),
    _col("created_at", "string", "TIMESTAMPTZ", "io.debezium.time.ZonedTimestamp"),
    _col("updated_at", "int64", "TIMESTAMP", "io.debezium.time.MicroTimestamp"),
    _col("ship_date", "int32", "DATE", "io.debezium.time.Date"),
    _col("paid", "boolean", "BOOL"),
    _col("attrs", "string", "JSONB", "io.debezium.data.Json"),
    _col("quantity", "int32", "INT4"),
    _col("weight", "double", "FLOAT8"),
    {**_col("tags", "array", "_TEXT"), "items": {"type": "string", "optional": True}},
    _col("line_count", "int16", "INT2"),
    _col("description", "string", "TEXT"),
]

SOURCE_FIELDS = GENERATED_SOURCE_FIELDS  # the Debezium 3.6 source block, shared with apply_throughput


NARROW: list[dict[str, Any]] = [
    _col("id", "int32", "INT4"),
    _col("bid", "int32", "INT4"),
    _col("abalance", "int32", "INT4"),
    _col("filler", "string", "BPCHAR"),
]


def value_schema(columns: list[dict[str, Any]]) -> dict[str, Any]:
    """The Envelope schema Debezium 3.x writes for ``bench.public.orders`` with ``columns``."""
    row = {"type": "struct", "fields": columns, "optional": True, "name": f"{PREFIX}.public.{TABLE}.Value"}
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
            {
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
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{PREFIX}.public.{TABLE}.Envelope",
        "version": 2,
    }


KEY_SCHEMA = {
    "type": "struct",
    "fields": [{"type": "int64", "optional": False, "field": "id"}],
    "optional": False,
    "name": f"{PREFIX}.public.{TABLE}.Key",
}


def _row(rng: random.Random, row_id: int, toast: bool) -> dict[str, Any]:
    cents = rng.randint(-(10**9), 10**9)
    micros = 1_700_000_000_000_000 + rng.randint(0, 10**13)
    row: dict[str, Any] = {
        "id": row_id,
        "customer_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "status": rng.choice(["new", "paid", "shipped", "cancelled"]),
        "amount": base64.b64encode(cents.to_bytes(8, "big", signed=True).lstrip(b"\x00") or b"\x00").decode(),
        "currency": "EUR",
        "note": "note " * rng.randint(1, 8),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1_000_000))
        + f".{micros % 1_000_000:06d}Z",
        "updated_at": micros,
        "ship_date": 19_000 + rng.randint(0, 2000),
        "paid": rng.random() < 0.5,
        "attrs": orjson.dumps({"gift": rng.random() < 0.1, "channel": "web"}).decode(),
        "quantity": rng.randint(1, 50),
        "weight": rng.random() * 10,
        "tags": ["a", "b"] if rng.random() < 0.5 else [],
        "line_count": rng.randint(1, 20),
        "description": "__debezium_unavailable_value" if toast else "d" * rng.randint(10, 200),
    }
    return row


def _narrow_row(rng: random.Random, row_id: int, toast: bool) -> dict[str, Any]:
    return {"id": row_id, "bid": row_id // 100_000 + 1, "abalance": rng.randint(-5000, 5000), "filler": " " * 84}


def make_messages(
    n: int, schemaless: bool = False, seed: int = 7, narrow: bool = False
) -> list[tuple[bytes | None, bytes]]:
    """``n`` (key, value) pairs in JsonConverter layout, LSNs increasing in commit order."""
    rng = random.Random(seed)
    columns = NARROW if narrow else COLUMNS
    make_row = _narrow_row if narrow else _row
    vschema = value_schema(columns)
    lsn = 24_000_000
    commit = lsn
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        lsn += rng.randint(40, 400)
        if i % 5 == 0:
            commit = lsn
        roll = rng.random()
        row_id = rng.randint(1, 1_000_000)
        op = "u" if roll < 0.7 else "c" if roll < 0.9 else "d"
        after = None if op == "d" else make_row(rng, row_id, op == "u" and rng.random() < 0.05)
        before = {c["field"]: None for c in columns} | {"id": row_id} if op == "d" else None
        payload = {
            "before": before,
            "after": after,
            "source": {
                "version": "3.6.3.Final",
                "connector": "postgresql",
                "name": PREFIX,
                "ts_ms": 1_795_285_305_827 + i,
                "snapshot": "false",
                "db": "shop",
                "sequence": f'["{commit}","{lsn}"]',
                "ts_us": (1_795_285_305_827 + i) * 1000,
                "ts_ns": (1_795_285_305_827 + i) * 1_000_000,
                "schema": "public",
                "table": TABLE,
                "txId": 1000 + i // 5,
                "lsn": lsn,
                "xmin": None,
                "origin": None,
                "origin_lsn": None,
            },
            "transaction": None,
            "op": op,
            "ts_ms": 1_795_285_305_900 + i,
            "ts_us": None,
            "ts_ns": None,
        }
        if schemaless:
            out.append((orjson.dumps({"id": row_id}), orjson.dumps(payload)))
        else:
            key = orjson.dumps({"schema": KEY_SCHEMA, "payload": {"id": row_id}})
            out.append((key, orjson.dumps({"schema": vschema, "payload": payload})))
    return out


def _avro_value(schema: dict[str, Any], value: Any) -> Any:
    """A JsonConverter value of Connect ``schema`` as Avro writes it (BYTES raw, not base64)."""
    if value is None:
        return None
    kind = schema["type"]
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "struct":
        return {f["field"]: _avro_value(f, value.get(f["field"])) for f in schema["fields"]}
    if kind == "array":
        return [_avro_value(schema["items"], v) for v in value]
    return value


def to_avro(messages: list[tuple[bytes | None, bytes]]) -> tuple[list[tuple[bytes | None, bytes]], dict[int, Any]]:
    """The JsonConverter ``messages`` (with schemas) in the Confluent Avro wire format, and the
    registry they need (schema id -> Avro schema)."""
    registry: dict[int, Any] = {}
    ids: dict[bytes, tuple[int, Any, dict[str, Any]]] = {}
    out: list[tuple[bytes | None, bytes]] = []

    def encode(data: bytes) -> bytes:
        doc = orjson.loads(data)
        connect = doc["schema"]
        token = orjson.dumps(connect)
        if token not in ids:
            schema = avro_schema(connect)
            registry[len(registry) + 1] = schema
            ids[token] = (len(registry), parse_schema(raw_reader_schema(schema)), connect)
        schema_id, parsed, connect = ids[token]
        buf = io.BytesIO()
        buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
        schemaless_writer(buf, parsed, _avro_value(connect, doc["payload"]))
        return buf.getvalue()

    for key, value in messages:
        out.append((None if key is None else encode(key), encode(value)))
    return out, registry


def main() -> None:
    """Parse arguments, build messages, decode them all, print events/s."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000, help="number of messages (default 200000)")
    parser.add_argument("--schemaless", action="store_true", help="JsonConverter schemas.enable=false")
    parser.add_argument("--transform", action="store_true", help="also apply a typical transform chain")
    parser.add_argument("--narrow", action="store_true", help="pgbench_accounts-like 4-column rows")
    parser.add_argument("--avro", action="store_true", help="Confluent Avro wire format instead of JSON")
    args = parser.parse_args()
    if args.avro and args.schemaless:
        parser.error("--avro and --schemaless exclude each other")

    messages = make_messages(args.n, schemaless=args.schemaless, narrow=args.narrow)
    decoder = Decoder()
    if args.avro:
        messages, registry = to_avro(messages)
        reader = AvroReader(registry.__getitem__)
        decoder = Decoder(avro_values=reader, avro_keys=reader)
    size = sum(len(v) + len(k or b"") for k, v in messages)
    rule = (
        TransformRule(exclude=["filler"], where="abalance > -4000", add_columns={"_lsn": "$lsn"})
        if args.narrow
        else TransformRule(
            match="public.*",
            exclude=["description"],
            rename={"note": "comment"},
            mask={"customer_id": "hash"},
            where="status != 'cancelled'",
            add_columns={"_lsn": "$lsn", "_source": "shop"},
        )
    )
    transformer = build_transformer([rule], mask_salt="bench-salt")
    topic = f"{PREFIX}.public.{TABLE}"
    started = time.perf_counter()
    cpu_started = time.process_time()
    events = 0
    for offset, (key, value) in enumerate(messages):
        try:
            result = decoder.decode(topic, 0, offset, key, value)
        except PoisonMessageError as exc:  # pragma: no cover - the bench data is valid
            raise SystemExit(f"bench data did not decode: {exc}") from exc
        if args.transform and isinstance(result, ChangeEvent):
            transformer.apply(result)
        events += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    mode = ("avro" if args.avro else "schemaless" if args.schemaless else "with schemas") + (
        ", narrow rows" if args.narrow else ", 16 columns"
    )
    what = "decode+transform" if args.transform else "decode"
    print(
        f"{what} ({mode}): {events} events in {elapsed:.2f} s = {events / elapsed:,.0f} events/s, "
        f"{size / elapsed / 1e6:.1f} MB/s (avg message {size / events:,.0f} bytes); "
        f"CPU {cpu / events * 1e6:.1f} µs per event (load-independent)"
    )


if __name__ == "__main__":
    main()
