"""Unconstrained ``numeric`` and its display scale, from a real Debezium message (issue 22, defect 7).

Captured: Debezium's PostgreSQL connector with ``decimal.handling.mode=precise`` (what
:mod:`connectors.debezium` configures) sends an unconstrained ``numeric`` as
``io.debezium.data.VariableScaleDecimal`` ``{scale, value}`` *after* ``stripTrailingZeros()``
(``PostgresValueConverter.convertDecimal``, Debezium 3.6): 1.50 arrives as scale 1, 2.000 as
scale 0, 0.10 as scale 1. The decoder, the sink's COPY and the target's ``numeric`` column keep
exactly what arrives, so the loss is Debezium's. ``verify`` compares numerics by value unless
``verify.numeric_text_exact`` (``--exact-numeric``) asks for their text.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer

from pipeline.control.verify.model import Status
from pipeline.control.verify.run import verify_table
from pipeline.core.events import ChangeEvent, TableId
from pipeline.core.logs import kafka_logging
from pipeline.core.reduce import reduce_events
from pipeline.core.settings.models import PipelineSettings
from pipeline.decode.config import DecoderConfig
from pipeline.decode.decoder import Decoder
from pipeline.localstack import LocalStack
from sinks.factory import make_target
from tests.conftest import Databases, raw_connector_config, wait_connector_running

SOURCE_TEXT = ["1.50", "2.000", "0.10"]


def _capture(bootstrap: str, group: str, topic: str, count: int) -> list[tuple[int, bytes | None, bytes]]:
    consumer = Consumer(
        kafka_logging({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    )
    consumer.subscribe([topic])
    got: dict[int, tuple[int, bytes | None, bytes]] = {}
    deadline = time.monotonic() + 90
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            got[int(msg.offset() or 0)] = (int(msg.offset() or 0), msg.key(), bytes(msg.value() or b""))
    finally:
        consumer.close()
    return [got[o] for o in sorted(got)]


def _snapshot_messages(
    stack: LocalStack, databases: Databases, prefix: str, group: str, extra: dict[str, str]
) -> list[tuple[int, bytes | None, bytes]]:
    """Create ``public.n`` with :data:`SOURCE_TEXT`, run a connector with ``extra`` over it and
    return its snapshot messages ``(offset, key, value)``."""
    s = stack.settings
    connector = prefix.replace("_", "-")
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.n (id int PRIMARY KEY, v numeric)")
        for i, text in enumerate(SOURCE_TEXT, 1):
            conn.execute("INSERT INTO public.n VALUES (%s, %s::numeric)", (i, text))
    config = raw_connector_config(stack, databases.name, prefix, "public.n", extra)
    resp = httpx.put(f"{s.connect_url}/connectors/{connector}/config", json=config, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    try:
        wait_connector_running(s.connect_url, connector)
        captured = _capture(s.bootstrap_servers, group, f"{prefix}.public.n", len(SOURCE_TEXT))
    finally:
        httpx.delete(f"{s.connect_url}/connectors/{connector}", timeout=30)
    assert len(captured) == len(SOURCE_TEXT)
    return captured


def _pipeline(stack: LocalStack, databases: Databases) -> PipelineSettings:
    s = stack.settings
    return PipelineSettings.model_validate(
        {
            "name": "num",
            "source": "src",
            "target": {"url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{databases.name}",
                       "password": "postgres", "schema": "public", "control_schema": "cdc_ctl"},
        }
    )  # fmt: skip


@pytest.mark.timeout(300)
def test_decimal_string_mode_keeps_the_scale_end_to_end(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    """The workaround (docs/targets.md): ``connector_overrides: {decimal.handling.mode: string}``.
    Debezium then sends the decimal text, and with ``column.propagate.source.type`` (which
    :mod:`connectors.debezium` sets) the decoder reads it as an exact Decimal: 1.50, 2.000 and
    0.10 arrive, and are stored, as themselves."""
    prefix = unique("nums")
    extra = {"decimal.handling.mode": "string", "column.propagate.source.type": ".*"}
    captured = _snapshot_messages(local_stack, databases, prefix, unique("g"), extra)
    assert [json.loads(v)["payload"]["after"]["v"] for _, _, v in captured] == SOURCE_TEXT
    decoder = Decoder(DecoderConfig(topic_prefix=prefix))
    events = [decoder.decode(f"{prefix}.public.n", 0, offset, key, value) for offset, key, value in captured]
    changes = [e for e in events if isinstance(e, ChangeEvent)]
    assert [str(e.after["v"]) for e in changes if e.after is not None] == SOURCE_TEXT
    target = make_target(_pipeline(local_stack, databases))
    try:
        target.apply(reduce_events(changes, "public"), "g", {})
    finally:
        target.close()
    with psycopg.connect(databases.target_dsn) as tconn:
        stored = tconn.execute(
            "SELECT v::text, format_type(atttypid, atttypmod) FROM public.n, pg_attribute"
            " WHERE attrelid = 'public.n'::regclass AND attname = 'v' ORDER BY id"
        ).fetchall()
    assert stored == [(t, "numeric") for t in SOURCE_TEXT]  # fmt: skip


@pytest.mark.timeout(300)
def test_debezium_strips_the_scale_of_unconstrained_numeric_and_exact_verify_sees_it(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    prefix = unique("num")
    captured = _snapshot_messages(local_stack, databases, prefix, unique("g"), {"decimal.handling.mode": "precise"})

    # The captured messages: what Debezium put on the wire for column v.
    wire: list[dict[str, Any]] = []
    for _, _, value in captured:
        doc = json.loads(value)
        field = next(f for f in doc["schema"]["fields"] if f["field"] == "after")
        v_schema = next(f for f in field["fields"] if f["field"] == "v")
        assert v_schema["name"] == "io.debezium.data.VariableScaleDecimal"
        wire.append(doc["payload"]["after"]["v"])
    print("captured after.v:", wire)  # the evidence, shown with -s
    unscaled = [int.from_bytes(base64.b64decode(v["value"]), "big", signed=True) for v in wire]
    assert [(v["scale"], u) for v, u in zip(wire, unscaled, strict=True)] == [(1, 15), (0, 2), (1, 1)]

    # Our decoder keeps what arrived, exactly (scale included) ...
    decoder = Decoder(DecoderConfig(topic_prefix=prefix))
    events = [decoder.decode(f"{prefix}.public.n", 0, offset, key, value) for offset, key, value in captured]
    assert all(isinstance(e, ChangeEvent) for e in events)
    decoded = [e.after["v"] for e in events if isinstance(e, ChangeEvent) and e.after is not None]
    assert [str(d) for d in decoded] == ["1.5", "2", "0.1"]
    assert all(isinstance(d, Decimal) for d in decoded)

    # ... and so do the sink's COPY and the target's numeric column.
    pipe = _pipeline(local_stack, databases)
    target = make_target(pipe)
    try:
        target.apply(reduce_events([e for e in events if isinstance(e, ChangeEvent)], "public"), "g", {})
        with psycopg.connect(databases.target_dsn) as tconn:
            stored = [r[0] for r in tconn.execute("SELECT v::text FROM public.n ORDER BY id")]
        assert stored == ["1.5", "2", "0.1"]

        # verify: equal by value (default), different by text (numeric_text_exact).
        verification = target.verification()
        try:
            with psycopg.connect(databases.source_dsn) as sconn:
                by_value, value_diffs = verify_table(sconn, verification, pipe, TableId("public", "n"), 100)
                by_text, text_diffs = verify_table(
                    sconn, verification, pipe, TableId("public", "n"), 100, numeric_text_exact=True
                )
        finally:
            verification.close()
    finally:
        target.close()
    # A differing chunk is a Pending the verifier rechecks (then reports as a mismatch).
    assert by_value.status is Status.MATCH and value_diffs == [], by_value
    assert [d.diff.index for d in text_diffs] == [1], by_text
    assert (by_text.rows_source, by_text.rows_target) == (3, 3)
