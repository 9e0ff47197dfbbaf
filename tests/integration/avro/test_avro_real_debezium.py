"""Real Debezium Avro messages through a real Apicurio Registry decode to the same events as JSON.

Two connectors capture the same tables of one database: one writes JSON (JsonConverter), the
other Avro in the Confluent wire format (Apicurio ``AvroConverter`` configured by
``connectors.debezium.converter_config``). Every message of the Avro connector must decode,
through the registry's Confluent-compatible API, to the event the JSON decoder gives for the
same change: same op, key, before/after values (exact Python types), TOAST-unavailable
columns, position and column schemas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer

from connectors.debezium import converter_config
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Skip
from pipeline.core.settings.models import RetrySettings, SchemaRegistrySettings, SourceSettings
from pipeline.decode.avro import AvroReader
from pipeline.decode.config import DecoderConfig
from pipeline.decode.decoder import Decoder
from pipeline.decode.registry import RegistryUnavailableError, SchemaRegistryClient
from pipeline.localstack import LocalStack
from pipeline.localstack.registry import SchemaRegistryProcess
from tests.conftest import Databases, raw_connector_config, wait_connector_running
from tests.integration.test_decode_real_types import DDL, INSERT, _rows

Raw = tuple[str, int, int, bytes | None, bytes | None]


def _source(registry: SchemaRegistryProcess, fmt: str) -> SourceSettings:
    return SourceSettings.model_validate(
        {
            "name": "s",
            "database": "d",
            "user": "u",
            "tables": ["public.all_types"],
            "format": fmt,
            "schema_registry": {"url": registry.endpoint},
        }
    )


def _converters(registry: SchemaRegistryProcess, fmt: str) -> dict[str, str]:
    src = _source(registry, fmt)
    return {**converter_config("key", fmt, src), **converter_config("value", fmt, src)}  # type: ignore[arg-type]


def _consume(bootstrap: str, group: str, topics: list[str], done: Callable[[list[Raw]], bool]) -> list[Raw]:
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
    out: list[Raw] = []
    seen: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + 120
    try:
        while not done(out) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            origin = (str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))
            if origin in seen:
                continue
            seen.add(origin)
            out.append((*origin, msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def _nan_free(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """NaN as text: NaN != NaN, and the two decoders hold different NaN objects."""
    if row is None:
        return None
    return {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _comparable(result: ChangeEvent | Skip) -> Any:
    if isinstance(result, Skip):
        return ("skip", result.reason)
    columns = tuple((c.name, c.type, c.optional, c.logical) for c in result.columns or ())
    return (
        result.op,
        result.table,
        result.key,
        result.key_columns,
        _nan_free(result.before),
        _nan_free(result.after),
        result.unavailable,
        None if result.snapshot else result.position,  # each connector snapshots at its own LSN
        result.snapshot,
        columns,
    )


@pytest.mark.timeout(420)
def test_avro_events_equal_json_events(
    local_stack: LocalStack,
    schema_registry: SchemaRegistryProcess,
    databases: Databases,
    unique: Callable[[str], str],
) -> None:
    s = local_stack.settings
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(DDL)
        rows = _rows()
        for row in rows[:2]:
            conn.execute(INSERT, row)
    prefixes = {"json": unique("dj"), "avro": unique("da")}
    extra = {
        "decimal.handling.mode": "precise",
        "column.propagate.source.type": ".*",
        "skipped.operations": "none",
        "time.precision.mode": "adaptive_time_microseconds",
        "interval.handling.mode": "string",
    }
    names = []
    try:
        for fmt, prefix in prefixes.items():
            config = raw_connector_config(
                local_stack, databases.name, prefix, "public.all_types", {**extra, **_converters(schema_registry, fmt)}
            )
            name = prefix.replace("_", "-")
            resp = httpx.put(f"{s.connect_url}/connectors/{name}/config", json=config, timeout=30)
            assert resp.status_code in (200, 201), resp.text
            names.append(name)
        for name in names:
            wait_connector_running(s.connect_url, name)
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute(INSERT, rows[2])
            conn.execute("UPDATE public.all_types SET c_other = 42 WHERE id = 1")  # c_big stays TOASTed
            conn.execute("DELETE FROM public.all_types WHERE id = 2")
            conn.execute("UPDATE public.all_types SET id = 7 WHERE id = 3")  # primary key change

        topics = {fmt: f"{prefix}.public.all_types" for fmt, prefix in prefixes.items()}
        # 2 reads, insert, update, delete + tombstone, PK change (delete + tombstone + create)
        captured = {
            fmt: _consume(s.bootstrap_servers, unique("g"), [topic], lambda got: len(got) >= 9)
            for fmt, topic in topics.items()
        }
    finally:
        for name in names:
            httpx.delete(f"{s.connect_url}/connectors/{name}", timeout=30)

    assert len(captured["json"]) == len(captured["avro"]) == 9
    assert all(m[4] is None or m[4][:1] == b"\x00" for m in captured["avro"])  # Confluent magic byte
    json_decoder = Decoder(DecoderConfig())
    client = SchemaRegistryClient(SchemaRegistrySettings(url=schema_registry.endpoint))
    reader = AvroReader(client.schema)
    avro_decoder = Decoder(DecoderConfig(), avro_values=reader, avro_keys=reader)
    json_events = [_comparable(json_decoder.decode(*m)) for m in captured["json"]]
    avro_events = [_comparable(avro_decoder.decode(*m)) for m in captured["avro"]]
    for j, a in zip(json_events, avro_events, strict=True):
        if j[0] != "skip":
            for cj, ca in zip(j[-1], a[-1], strict=True):
                assert ca == cj
        assert a == j
    assert sum(1 for e in avro_events if e[0] != "skip") == 7

    # Avro messages are smaller than JSON-with-schema ones.
    json_bytes = sum(len(m[4] or b"") for m in captured["json"])
    avro_bytes = sum(len(m[4] or b"") for m in captured["avro"])
    assert avro_bytes * 3 < json_bytes

    # A schema id the registry does not know: poison with the reason (-> DLQ by the runner).
    body = captured["avro"][0][4]
    assert body is not None
    forged = b"\x00" + (2**31 - 7).to_bytes(4, "big") + body[5:]
    with pytest.raises(PoisonMessageError, match="unknown to the registry"):
        avro_decoder.decode(topics["avro"], 0, 99, None, forged)

    # The registry unreachable: transient (retried by the runner), not poison.
    down = SchemaRegistryClient(
        SchemaRegistrySettings(url="http://127.0.0.1:9/apis/ccompat/v7", timeout_s=1),
        RetrySettings(initial_backoff_s=0.05, max_backoff_s=0.1, max_elapsed_s=0.3),
    )
    cold = Decoder(DecoderConfig(), avro_values=AvroReader(down.schema))
    with pytest.raises(RegistryUnavailableError):
        cold.decode(topics["avro"], 0, 0, None, body)
