"""Real Debezium messages decoded value for value: PostgreSQL -> Debezium -> Kafka -> Decoder.

One connector captures two tables of a fresh database:

- ``public.all_types``: every type of the issue (snapshot rows, a streamed insert, an update
  that leaves a TOASTed column unchanged, a delete); decoded values must equal what psycopg
  reads from the source, exactly (Decimal text and scale, microseconds, zones, NaN/Infinity).
- ``public.tx``: two interleaved transactions (T1 starts first, T2 commits first) and a
  truncate; positions must follow commit order.

Heartbeats and transaction metadata are enabled so their topics are exercised too.

``CDC_WRITE_DEBEZIUM_FIXTURES=1`` also writes the captured messages to
``tests/unit/fixtures/debezium/real_*.json`` (the unit tests' fixtures).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import struct
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer

from pipeline.core.events import ChangeEvent, Op, Skip, TableId
from pipeline.decode.config import DecoderConfig
from pipeline.decode.decoder import Decoder
from pipeline.localstack import LocalStack
from tests.conftest import Databases, raw_connector_config, wait_connector_running

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "debezium"

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.all_types (
    id int PRIMARY KEY,
    c_smallint smallint,
    c_int int,
    c_bigint bigint,
    c_num numeric(38, 10),
    c_num_free numeric,
    c_real real,
    c_double double precision,
    c_bool boolean,
    c_text text,
    c_varchar varchar(40),
    c_char char(5),
    c_bytea bytea,
    c_uuid uuid,
    c_json json,
    c_jsonb jsonb,
    c_date date,
    c_time time,
    c_timetz timetz,
    c_ts timestamp,
    c_tstz timestamptz,
    c_interval interval,
    c_text_arr text[],
    c_int_arr int[],
    c_mood mood,
    c_big text,
    c_other int
);
ALTER TABLE public.all_types ALTER COLUMN c_big SET STORAGE EXTERNAL;
CREATE TABLE public.tx (id int PRIMARY KEY, v text);
"""

CASTS = [
    "int", "smallint", "int", "bigint", "numeric", "numeric", "real", "double precision", "boolean", "text",
    "varchar", "char(5)", "bytea", "uuid", "json", "jsonb", "date", "time", "timetz", "timestamp",
    "timestamptz", "interval", "text[]", "int[]", "mood", "text", "int",
]  # fmt: skip
INSERT = "INSERT INTO public.all_types VALUES (" + ", ".join(f"%s::{cast}" for cast in CASTS) + ")"

BIG = "".join(f"{i:05d}-{(i * 7919) % 100003:06d};" for i in range(700))  # ~9 kB, stored out of line


def _rows() -> list[tuple[Any, ...]]:
    """Source rows 1-3 as SQL literals (inserted with casts so psycopg sends text)."""
    return [
        (
            1,
            -32768,
            2147483647,
            -9223372036854775808,
            "1234567890123456789012345678.0123456789",
            "-3.141592653589793238462643383279502884197",
            "1.5",
            "1e308",
            True,
            "héllo 'quoted' \"double\" \\ back\nnew line ☃",
            "varchar value",
            "ab",
            bytes(range(256)),
            "8f14e45f-ceea-467f-a8f9-d4b3b5a6f8c1",
            '{"b": 1,  "a": [1, 2.50, "x"]}',
            '{"b": 1, "a": {"z": null, "y": 1.0}}',
            "2024-02-29",
            "23:59:59.999999",
            "13:14:15.654321+02",
            "2024-02-29 13:14:15.123456",
            "2024-02-29 13:14:15.123456+02",
            "3 days 04:05:06.789",
            ["a", None, "it's", 'q"uote', ""],
            [1, -2, 2147483647],
            "happy",
            BIG,
            0,
        ),
        (
            2,
            0,
            0,
            0,
            "-0.0000000001",
            "100000000000000000000000000000000000000000",
            "NaN",
            "-Infinity",
            False,
            "",
            "",
            "",
            b"",
            "00000000-0000-0000-0000-000000000000",
            "[]",
            "{}",
            "0001-01-01",
            "00:00:00",
            "00:00:00+00",
            "1970-01-01 00:00:00",
            "1999-12-31 23:59:59.000001-08:30",
            "-1 days -00:00:00.000001",
            [],
            [],
            "sad",
            "short",
            0,
        ),
        (
            3,
            None,
            None,
            None,
            None,
            "0.00",
            "-Infinity",
            "NaN",
            None,
            None,
            None,
            None,
            None,
            None,
            "null",
            "null",
            "9999-12-31",
            "12:00:00",
            "23:59:59.999999-14:59",
            "9999-12-31 23:59:59.999999",
            "infinity",
            "00:00:00",
            None,
            [None],
            "ok",
            None,
            0,
        ),
    ]


# Columns read as text because psycopg's Python value would lose what the test compares
# (json is parsed by psycopg; jsonb text is PostgreSQL's normalised form, which Debezium sends).
SELECT = """
SELECT id, c_smallint, c_int, c_bigint, c_num, c_num_free, c_real, c_double, c_bool, c_text,
       c_varchar, c_char, c_bytea, c_uuid, c_json::text, c_jsonb::text, c_date, c_time, c_timetz,
       c_ts, CASE WHEN isfinite(c_tstz) THEN c_tstz END, c_interval, c_text_arr, c_int_arr,
       c_mood::text, c_big, c_other, c_tstz::text
FROM public.all_types WHERE id = %s
"""
COLUMNS = [
    "id",
    "c_smallint",
    "c_int",
    "c_bigint",
    "c_num",
    "c_num_free",
    "c_real",
    "c_double",
    "c_bool",
    "c_text",
    "c_varchar",
    "c_char",
    "c_bytea",
    "c_uuid",
    "c_json",
    "c_jsonb",
    "c_date",
    "c_time",
    "c_timetz",
    "c_ts",
    "c_tstz",
    "c_interval",
    "c_text_arr",
    "c_int_arr",
    "c_mood",
    "c_big",
    "c_other",
]


def _source_row(dsn: str, row_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        row = conn.execute(SELECT, (row_id,)).fetchone()
    assert row is not None
    values = dict(zip(COLUMNS, row[:-1], strict=True))
    if values["c_tstz"] is None and row[-1] is not None:
        values["c_tstz"] = row[-1]  # 'infinity' has no Python datetime: Debezium sends the string
    return values


def _time_of_day_utc(value: dt.time) -> int:
    offset = value.utcoffset() or dt.timedelta(0)
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    return (micros - (offset // dt.timedelta(microseconds=1))) % 86_400_000_000


def _same(column: str, decoded: Any, source: Any) -> bool:
    """Exact equality (Decimal: same text, i.e. same scale); floats compare NaN == NaN, ``real``
    at float32 precision, ``timetz`` as
    the same UTC time of day (Debezium normalises it to UTC: the source offset is not kept)."""
    if isinstance(source, dt.time) and source.tzinfo is not None:
        return (
            isinstance(decoded, dt.time)
            and decoded.tzinfo is not None
            and _time_of_day_utc(decoded) == _time_of_day_utc(source)
        )
    if isinstance(source, float) and isinstance(decoded, float):
        if math.isnan(source):
            return math.isnan(decoded)
        if column == "c_real":
            return struct.pack("<f", decoded) == struct.pack("<f", source)
        return decoded == source
    if isinstance(source, Decimal):
        if column == "c_num_free":
            # NUMERIC without scale (VariableScaleDecimal): Debezium strips trailing zeros
            # (PostgresValueConverter: stripTrailingZeros), so 0.00 arrives as 0: equal value.
            return isinstance(decoded, Decimal) and decoded == source
        return isinstance(decoded, Decimal) and str(decoded) == str(source)
    return type(decoded) is type(source) and bool(decoded == source)


def _consume(
    bootstrap: str, group: str, topics: list[str], done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.subscribe(topics)
    captured: list[dict[str, Any]] = []
    seen: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + 90
    try:
        while not done(captured) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            # A rebalance (new topics appear) re-delivers from the earliest offset: keep one copy.
            origin = (str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))
            if origin in seen:
                continue
            seen.add(origin)
            key, value = msg.key(), msg.value()
            captured.append(
                {
                    "topic": origin[0],
                    "partition": origin[1],
                    "offset": origin[2],
                    "key": None if key is None else bytes(key).decode("utf-8"),
                    "value": None if value is None else bytes(value).decode("utf-8"),
                }
            )
    finally:
        consumer.close()
    return captured


def _decode_all(decoder: Decoder, captured: list[dict[str, Any]]) -> list[ChangeEvent | Skip]:
    return [
        decoder.decode(
            m["topic"],
            m["partition"],
            m["offset"],
            None if m["key"] is None else m["key"].encode("utf-8"),
            None if m["value"] is None else m["value"].encode("utf-8"),
        )
        for m in captured
    ]


def _write_fixture(name: str, description: str, config: dict[str, str], messages: list[dict[str, Any]]) -> None:
    redacted = {k: v for k, v in config.items() if "password" not in k}
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / name).write_text(
        json.dumps(
            {"description": description, "connector_config": redacted, "messages": messages},
            indent=1,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )


@pytest.mark.timeout(300)
def test_real_debezium_messages_decode_exactly(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    s = local_stack.settings
    prefix = unique("dec")
    connector = prefix.replace("_", "-")
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(DDL)
        rows = _rows()
        for row in rows[:2]:  # rows 1 and 2 are read by the snapshot
            conn.execute(INSERT, row)
        conn.execute("INSERT INTO public.tx VALUES (0, 'before the snapshot')")
    snapshot_rows = {i: _source_row(databases.source_dsn, i) for i in (1, 2)}

    config = raw_connector_config(
        local_stack,
        databases.name,
        prefix,
        "public.all_types,public.tx",
        {
            "decimal.handling.mode": "precise",
            "column.propagate.source.type": ".*",
            "skipped.operations": "none",
            "provide.transaction.metadata": "true",
            "heartbeat.interval.ms": "1000",
        },
    )
    resp = httpx.put(f"{s.connect_url}/connectors/{connector}/config", json=config, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    try:
        wait_connector_running(s.connect_url, connector)
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute(INSERT, rows[2])
        inserted_row = _source_row(databases.source_dsn, 3)
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.all_types SET c_other = 42 WHERE id = 1")  # c_big stays TOASTed
            conn.execute("DELETE FROM public.all_types WHERE id = 2")
        updated_row = _source_row(databases.source_dsn, 1)
        # T1 starts first and commits last; T2 commits in between.
        with psycopg.connect(databases.source_dsn) as t1, psycopg.connect(databases.source_dsn) as t2:
            t1.execute("INSERT INTO public.tx VALUES (1, 'T1 insert')")
            t2.execute("INSERT INTO public.tx VALUES (2, 'T2 insert')")
            t2.commit()
            t1.execute("UPDATE public.tx SET v = 'T1 update' WHERE id = 1")
            t1.commit()
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.tx SET v = 'T3 update' WHERE id = 1")
            conn.execute("TRUNCATE public.tx")

        topics = [
            f"{prefix}.public.all_types",
            f"{prefix}.public.tx",
            f"{prefix}.transaction",
            f"__debezium-heartbeat.{prefix}",
        ]

        def done(captured: list[dict[str, Any]]) -> bool:
            kinds = {m["topic"] for m in captured}
            all_types = [m for m in captured if m["topic"] == topics[0]]
            tx_rows = [m for m in captured if m["topic"] == topics[1]]
            # all_types: 2 reads, insert, update, delete, tombstone; tx: read, 2 inserts, 2 updates, truncate
            return len(all_types) >= 6 and len(tx_rows) >= 6 and topics[3] in kinds and topics[2] in kinds

        captured = _consume(s.bootstrap_servers, unique("g"), topics, done)
    finally:
        httpx.delete(f"{s.connect_url}/connectors/{connector}", timeout=30)

    decoder = Decoder(DecoderConfig(topic_prefix=prefix))
    results = _decode_all(decoder, captured)
    by_topic: dict[str, list[ChangeEvent | Skip]] = {}
    for result in results:
        by_topic.setdefault(result.topic, []).append(result)
    assert {r.reason for r in by_topic[topics[2]] if isinstance(r, Skip)} == {"transaction"}
    assert {r.reason for r in by_topic[topics[3]] if isinstance(r, Skip)} == {"heartbeat"}

    # ------------------------------------------------------------------ all_types
    events = by_topic[topics[0]]
    ops = [e.op.value if isinstance(e, ChangeEvent) else e.reason for e in events]
    assert ops == ["r", "r", "c", "u", "d", "tombstone"], ops
    reads = [e for e in events if isinstance(e, ChangeEvent) and e.op is Op.READ]
    for event in reads:
        assert event.snapshot
        assert event.position.commit_lsn == 0  # sequence[0] is null in initial-snapshot reads
        assert event.after is not None
        expected = snapshot_rows[event.after["id"]]
        _assert_row(event, expected)
    created, updated, deleted = (e for e in events if isinstance(e, ChangeEvent) and e.op is not Op.READ)
    assert isinstance(created, ChangeEvent) and isinstance(updated, ChangeEvent) and isinstance(deleted, ChangeEvent)
    _assert_row(created, inserted_row)
    assert updated.unavailable == frozenset({"c_big"})
    assert updated.after is not None and "c_big" not in updated.after
    _assert_row(updated, {k: v for k, v in updated_row.items() if k != "c_big"})
    assert deleted.after is None and deleted.before is not None and deleted.before["id"] == 2
    assert deleted.key == {"id": 2} and deleted.key_columns == ("id",)
    assert created.table == TableId("public", "all_types")
    assert created.columns is not None
    types = {c.name: c.source_type for c in created.columns}
    assert types["c_num"] == "NUMERIC" and types["c_tstz"] == "TIMESTAMPTZ" and types["c_mood"] == "MOOD"

    # ------------------------------------------------------------------ interleaved transactions
    tx_events = [e for e in by_topic[topics[1]] if isinstance(e, ChangeEvent)]
    labels = [(e.op.value, (e.after or {}).get("v")) for e in tx_events]
    assert labels == [
        ("r", "before the snapshot"),
        ("c", "T2 insert"),
        ("c", "T1 insert"),
        ("u", "T1 update"),
        ("u", "T3 update"),
        ("t", None),
    ], labels
    t2_insert, t1_insert, t1_update, t3_update = tx_events[1:5]
    streamed = tx_events[1:]
    assert [e.position for e in streamed] == sorted(e.position for e in streamed)
    assert len({e.position for e in streamed}) == len(streamed)
    # T1's first change is older in the WAL than T2's, yet T1 committed later: lsn alone misorders.
    assert t1_insert.position.lsn < t2_insert.position.lsn
    assert t1_insert.position > t2_insert.position
    assert t1_insert.tx_id is not None and t2_insert.tx_id is not None and t1_insert.tx_id < t2_insert.tx_id
    assert t1_insert.position.commit_lsn == t1_update.position.commit_lsn < t3_update.position.commit_lsn
    every_read = [e for e in reads + tx_events if e.op is Op.READ]
    every_streamed = [e for e in events + tx_events if isinstance(e, ChangeEvent) and e.op is not Op.READ]
    assert max(e.position for e in every_read) < min(e.position for e in every_streamed)
    truncate = tx_events[-1]
    assert truncate.key is None and truncate.before is None and truncate.after is None
    print("observed positions (op, v, commit_lsn, lsn, txId, snapshot):")
    for e in tx_events + reads:
        print(
            f"  {e.table.table} {e.op.value} {(e.after or {}).get('v', '')!r} {e.position} "
            f"({e.position.commit_lsn}, {e.position.lsn}) tx={e.tx_id} snapshot={e.snapshot}"
        )

    if os.environ.get("CDC_WRITE_DEBEZIUM_FIXTURES") == "1":
        keep_topics = set(topics[:3])
        heartbeats = [m for m in captured if m["topic"] == topics[3]][:1]
        _write_fixture(
            "real_all_types.json",
            "Debezium 3.6 PostgreSQL connector, JsonConverter with schemas: all_types snapshot reads, insert, "
            "update with an unchanged TOASTed column (c_big), delete + tombstone; tx: T1/T2 interleaved "
            "(T1 starts first, commits last), T3, truncate; transaction metadata and a heartbeat. "
            "Written by tests/integration/test_decode_real_types.py.",
            config,
            [m for m in captured if m["topic"] in keep_topics] + heartbeats,
        )


def _assert_row(event: ChangeEvent, expected: dict[str, Any]) -> None:
    assert event.after is not None
    mismatches = {
        column: (event.after.get(column, "<absent>"), value)
        for column, value in expected.items()
        if not _same(column, event.after.get(column), value)
    }
    assert not mismatches, f"{event.op.value} id={event.after.get('id')}: decoded vs source {mismatches}"
