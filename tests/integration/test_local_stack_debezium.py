"""Foundation acceptance: real PostgreSQL -> Debezium (Kafka Connect REST) -> Kafka -> confluent-kafka."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import psycopg
from confluent_kafka import Consumer

from pipeline.localstack import LocalStack
from tests.conftest import Databases, raw_connector_config, wait_connector_running


def test_debezium_change_events_reach_kafka(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    s = local_stack.settings
    prefix = unique("it")
    connector = prefix.replace("_", "-")
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL)")

    config = raw_connector_config(local_stack, databases.name, prefix, "public.items")
    resp = httpx.put(f"{s.connect_url}/connectors/{connector}/config", json=config, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    try:
        wait_connector_running(s.connect_url, connector)
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.items VALUES (1, 'first')")
            conn.execute("UPDATE public.items SET name = 'second' WHERE id = 1")

        consumer = Consumer(
            {
                "bootstrap.servers": s.bootstrap_servers,
                "group.id": unique("g"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([f"{prefix}.public.items"])
        events: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while len(events) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            events.append(json.loads(msg.value())["payload"])
        consumer.close()
    finally:
        httpx.delete(f"{s.connect_url}/connectors/{connector}", timeout=30)

    assert [e["op"] for e in events] == ["c", "u"]
    assert events[0]["after"] == {"id": 1, "name": "first"}
    assert events[1]["after"] == {"id": 1, "name": "second"}
    for event in events:
        source = event["source"]
        assert isinstance(source, dict)
        assert isinstance(source["lsn"], int) and source["lsn"] > 0
        assert isinstance(source["txId"], int) and source["txId"] > 0
