"""Issue 9 acceptance: Avro keys and values through a real Apicurio Registry and real Debezium.

The apply-core scenarios (``tests/e2e/test_apply_core.py``) run unchanged with ``avro_e2e``;
then schema evolution, an unknown schema id, and the registry going away and coming back.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer

from tests.e2e import test_apply_core
from tests.e2e.avro.conftest import TcpForwarder
from tests.e2e.conftest import E2EPipeline, table_rows

ITEMS = test_apply_core.ITEMS_DDL


def _dlq_letters(p: E2EPipeline, want: int, timeout: float = 30) -> list[Any]:
    dlq = Consumer(
        {
            "bootstrap.servers": p.settings.kafka.bootstrap_servers,
            "group.id": "dlq-check-" + p.pipeline_name,
            "auto.offset.reset": "earliest",
        }
    )
    dlq.subscribe([p.settings.pipelines[0].resolved_dlq_topic])
    letters: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(letters) < want and time.monotonic() < deadline:
        msg = dlq.poll(1)
        if msg is not None and msg.error() is None:
            letters.append(msg)
    dlq.close()
    return letters


def test_avro_all_ops_and_primary_key_change(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    test_apply_core.test_all_ops_and_primary_key_change(avro_e2e)


def test_avro_every_type_round_trips(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    test_apply_core.test_every_type_round_trips(avro_e2e)


def test_avro_toasted_text_survives_update_of_other_column(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    test_apply_core.test_toasted_text_survives_update_of_other_column(avro_e2e)


def test_avro_add_column_mid_stream(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    p = avro_e2e([ITEMS, "INSERT INTO public.items VALUES (1, 'one', 1)"], ["public.items"])
    worker = p.start_worker()
    p.wait_converged()
    p.source("ALTER TABLE public.items ADD COLUMN note text, ADD COLUMN price numeric(10, 2)")
    p.source("INSERT INTO public.items VALUES (2, 'two', 2, 'added later', 12.50)")
    p.source("UPDATE public.items SET note = 'old row, new column' WHERE id = 1")
    _wait_target_columns(p, "items", {"note", "price"})  # wait_converged reads them by name
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.items") == [
        (1, "one", 1, "old row, new column", None),
        (2, "two", 2, "added later", Decimal("12.5")),
    ]
    assert worker.poll() is None  # applied without a restart
    with psycopg.connect(p.target_dsn) as conn:
        price_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.items'::regclass AND attname = 'price'"
        ).fetchone()
    assert price_type == ("numeric(10,2)",)


def test_avro_unknown_schema_id_goes_to_the_dlq(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    p = avro_e2e([ITEMS], ["public.items"])
    p.start_worker()
    p.source("INSERT INTO public.items VALUES (1, 'one', 1)")
    p.wait_converged()
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    producer = Producer({"bootstrap.servers": p.settings.kafka.bootstrap_servers})
    producer.produce(topic, key=None, value=b"\x00" + (2**31 - 11).to_bytes(4, "big") + b"\x02\x00")
    assert producer.flush(10) == 0
    p.source("INSERT INTO public.items VALUES (2, 'two', 2)")
    p.wait_converged()
    letters = _dlq_letters(p, 1)
    assert len(letters) == 1
    headers = dict(letters[0].headers())
    assert b"unknown to the registry" in headers["cdc.error.reason"]
    assert headers["cdc.original.topic"] == topic.encode()


def test_avro_registry_down_retries_then_applies_everything(avro_e2e, schema_registry) -> None:  # type: ignore[no-untyped-def]
    forwarder = TcpForwarder((schema_registry.host, schema_registry.port))  # not started: registry "down"
    p = avro_e2e(
        [ITEMS],
        ["public.items"],
        registry_url=f"http://127.0.0.1:{forwarder.port}/apis/ccompat/v7",
    )
    p.start_worker()
    for i in range(1, 21):
        p.source("INSERT INTO public.items VALUES (%s, 'row', %s)", (i, i))
    # The runner backs off (consumer paused and served): the decoder itself never sleeps.
    p.wait_log('"kind": "decode"', count=3, timeout=120)
    assert "schema registry request failed" in p.worker_logs()
    assert _target_count(p) == 0  # nothing applied while the schemas cannot be read
    forwarder.start()
    try:
        p.wait_converged(timeout=180)
        p.source("UPDATE public.items SET qty = qty * 10 WHERE id <= 5")
        p.wait_converged()
    finally:
        forwarder.stop()
    assert len(table_rows(p.target_dsn, "public.items")) == 20
    assert _dlq_letters(p, 1, timeout=5) == []  # nothing dead-lettered, nothing skipped
    assert "message dead-lettered" not in p.worker_logs()


def _target_count(p: E2EPipeline) -> int:
    with psycopg.connect(p.target_dsn) as conn:
        if conn.execute("SELECT to_regclass('public.items')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT count(*) FROM public.items").fetchone()
    return int(row[0]) if row else 0


def _wait_target_columns(p: E2EPipeline, table: str, columns: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    have: set[str] = set()
    while time.monotonic() < deadline:
        with psycopg.connect(p.target_dsn) as conn:
            have = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
                    (table,),
                ).fetchall()
            }
        if columns <= have:
            return
        time.sleep(0.5)
    raise AssertionError(f"target {table} has columns {sorted(have)}, not {sorted(columns)}:\n{p.worker_logs()}")
