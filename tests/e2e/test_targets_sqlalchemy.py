"""Apply-core acceptance (issue 8) against the SQLAlchemy targets, MariaDB and SQLite, through
real Debezium and Kafka: all ops with a primary-key change and truncate, types, TOAST
preservation, hostile identifiers, replay after deleting the stored offsets, kill -9 of a
worker mid-stream, and poison messages to the DLQ. The workloads are those of
``test_apply_core.py``/``test_crashes.py``; row equality uses the canonical row text of
:mod:`sinks.sqlalchemy.canonical` (what ``verify`` uses for these targets)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer

from pipeline.control.verify.model import VerifySettings, format_result
from pipeline.control.verify.run import verify_pipeline
from sinks.sqlalchemy.ddl import physical
from tests.e2e.conftest import E2EPipeline, drop_mariadb_databases
from tests.e2e.test_apply_core import ITEMS_DDL
from tests.e2e.workload import DDL, TABLES, Workload

pytestmark = pytest.mark.timeout(420)

TARGETS = ["mariadb", "sqlite"]


@pytest.mark.parametrize("target", TARGETS)
def test_all_ops_and_primary_key_change(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'snap-' || g, g FROM generate_series(1, 50) g"],
        ["public.items"],
        target=target,
    )
    p.start_worker()
    p.wait_converged()  # the initial snapshot
    p.source("INSERT INTO public.items VALUES (100, 'new', 1)")
    p.source("UPDATE public.items SET qty = qty + 1000 WHERE id <= 10")
    p.source("DELETE FROM public.items WHERE id BETWEEN 20 AND 29")
    p.source("UPDATE public.items SET id = 500 WHERE id = 100")  # primary-key change
    p.wait_converged()
    assert (500, "new", 1) in p.target_values("public.items")
    p.source("TRUNCATE public.items")
    p.source("INSERT INTO public.items VALUES (7, 'after-truncate', 7), (8, 'eight', 8)")
    p.wait_converged()
    assert p.target_values("public.items") == [(7, "after-truncate", 7), (8, "eight", 8)]
    # verify on this target: clean, then a changed target row is a confirmed mismatch.
    cfg = VerifySettings(chunk_size=1, max_wait_s=60, recheck_attempts=1)
    clean = verify_pipeline(p.settings, p.settings.pipelines[0], None, cfg)
    assert clean.ok, format_result(clean)
    assert clean.tables[0].chunks == 3  # keys (, 7], (7, 8], (8, )
    t = p.target_table("public.items")
    engine = sa.create_engine(p.target_url)
    schema, name = physical(t, "sqlite" if target == "sqlite" else "mysql")
    items = sa.table(name, sa.column("id"), sa.column("name"), schema=schema)
    with engine.begin() as conn:
        conn.execute(sa.update(items).where(items.c.id == 8).values(name="tampered"))
    engine.dispose()
    dirty = verify_pipeline(p.settings, p.settings.pipelines[0], None, cfg)
    assert not dirty.ok
    assert [d.index for d in dirty.tables[0].mismatched] == [2]


# The PostgreSQL round-trip table minus what these targets cannot hold (documented in
# docs/targets.md): NaN/Infinity floats (MariaDB DOUBLE has none; SQLite stores NaN as NULL)
# and month intervals (stored as Debezium's approximate MicroDuration microseconds).
TYPES_DDL = [
    "CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')",
    """CREATE TABLE public.all_types (
        id bigint PRIMARY KEY, s smallint, i integer, n38 numeric(38,10), nfree numeric,
        r real, d double precision, b boolean, t text, vc varchar(20), ch char(3), ba bytea,
        u uuid, j json, jb jsonb, dt date, tm time, tmtz timetz, ts timestamp(6), tstz timestamptz,
        iv interval, ta text[], ia int[], m public.mood)""",
    """INSERT INTO public.all_types VALUES (1, -32768, 2147483647, 1234567890123456789012345678.0123456789,
        3.14159265358979323846264338327950288419716939937510, 1.5, -2.25e300, true, 'héllo ☃ \"q\"',
        'varchar', 'abc', '\\xdeadbeef00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5]}',
        '{"b": {"c": null}}', '2024-02-29', '23:59:59.999999', '12:34:56.123456+02', '2024-01-02 03:04:05.678901',
        '2024-01-02 03:04:05.678901+05:30', '3 days 04:05:06.789', '{"x", NULL, "z y"}',
        '{1,2,3}', 'happy')""",
    "INSERT INTO public.all_types (id) VALUES (2)",
]


@pytest.mark.parametrize("target", TARGETS)
def test_every_type_round_trips(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(TYPES_DDL, ["public.all_types"], target=target)
    p.start_worker()
    p.wait_converged()
    p.source("UPDATE public.all_types SET n38 = -0.0000000001, r = 0.1, d = 1e-300 WHERE id = 1")
    p.source(
        "INSERT INTO public.all_types SELECT 3, s, i, n38, nfree, r, d, b, t, vc, ch, ba, u, j, jb, dt, tm, tmtz,"
        " ts, tstz, iv, ta, ia, m FROM public.all_types WHERE id = 1"
    )
    p.wait_converged()
    if target == "mariadb":
        t = p.target_table("public.all_types")
        engine = sa.create_engine(p.target_url)
        with engine.connect() as conn:
            types = dict(
                conn.execute(
                    sa.text(
                        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
                        " WHERE TABLE_SCHEMA = :s AND TABLE_NAME = :t"
                    ),
                    {"s": t.schema, "t": t.table},
                ).all()
            )
        engine.dispose()
        assert types["n38"] == "decimal(38,10)"
        assert types["nfree"] == "longtext"  # exact text: DECIMAL(65,30) would round it
        assert types["ts"] == "datetime(6)"
        assert types["tm"] == "time(6)"
        assert types["u"] == "char(36)"
        assert types["ba"] == "longblob"


@pytest.mark.parametrize("target", TARGETS)
def test_toasted_text_survives_update_of_other_column(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        ["CREATE TABLE public.docs (id int PRIMARY KEY, body text, version int)"], ["public.docs"], target=target
    )
    p.start_worker()
    p.source(
        "INSERT INTO public.docs VALUES (1, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000)), 1)"
    )
    p.wait_converged()
    p.source("UPDATE public.docs SET version = 2 WHERE id = 1")
    p.wait_converged()
    ((body, version),) = p.target_values("public.docs", ["body", "version"])
    assert (len(body), version) == (128000, 2)


@pytest.mark.parametrize("target", TARGETS)
def test_hostile_identifiers(e2e, local_stack, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [
            'CREATE SCHEMA "Odd Schema"',
            'CREATE TABLE "Odd Schema"."Select ""Quoted"" Table" ("Key Col" int PRIMARY KEY, "order" text, "we""ird%s" text)',
            'INSERT INTO "Odd Schema"."Select ""Quoted"" Table" VALUES (1, \'o\', \'w\')',
        ],
        ['Odd Schema.Select "Quoted" Table'],
        pipeline={"transforms": [{"match": "*", "route": "{schema}.{table}"}]},
        target=target,
    )
    try:
        p.start_worker()
        p.source('UPDATE "Odd Schema"."Select ""Quoted"" Table" SET "we""ird%s" = \'w2\'')
        p.source('INSERT INTO "Odd Schema"."Select ""Quoted"" Table" VALUES (2, \'; DROP TABLE x; --\', NULL)')
        p.wait_converged()
    finally:
        if target == "mariadb":
            drop_mariadb_databases(local_stack, "Odd Schema")


@pytest.mark.parametrize("target", TARGETS)
def test_replay_from_the_start_changes_nothing(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'v' || g, g FROM generate_series(1, 200) g"],
        ["public.items"],
        target=target,
    )
    worker = p.start_worker()
    p.source("UPDATE public.items SET qty = -qty WHERE id % 3 = 0")
    p.source("DELETE FROM public.items WHERE id % 7 = 0")
    p.source("INSERT INTO public.items VALUES (1000, 'late', 0)")
    p.wait_converged()
    before = p.target_snapshot("public.items")
    assert p.stop_worker(worker) == 0
    group = p.settings.pipelines[0].resolved_consumer_group
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    sink = p.make_sink()
    try:
        assert sink.reset_offsets(group) >= 1  # with none stored, a worker starts from the beginning
        p.start_worker()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # wait until the replay has consumed everything again
            if sink.stored_offsets(group, [(topic, 0)]).get((topic, 0), 0) >= 200 + 67 + 28 + 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"replay did not finish:\n{p.worker_logs()}")
    finally:
        sink.close()
    assert p.target_snapshot("public.items") == before
    p.wait_converged()


@pytest.mark.parametrize("target", TARGETS)
def test_worker_killed_mid_batch_repeatedly(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": {"max_messages": 200, "max_wait_ms": 300}}, target=target)
    load = Workload(p.source_dsn).start()
    try:
        for delay in (1.0, 2.5, 0.3):
            worker = p.start_worker()
            p.wait_assigned(worker)
            time.sleep(delay)  # mid-stream: batches in flight
            p.kill_worker(worker)
    finally:
        load.stop()
    assert load.transactions > 100
    p.start_worker()
    p.wait_converged(timeout=240)  # canonical multisets: the keyless history has no duplicates


@pytest.mark.parametrize("target", TARGETS)
def test_poison_messages_go_to_the_dlq_and_the_pipeline_goes_on(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e([ITEMS_DDL, "CREATE TABLE public.floats (id int PRIMARY KEY, x float8)"],
                         ["public.items", "public.floats"], target=target)  # fmt: skip
    p.start_worker()
    p.source("INSERT INTO public.items VALUES (1, 'one', 1)")
    p.source("INSERT INTO public.floats VALUES (1, 1.5)")
    p.wait_converged()
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    producer = Producer({"bootstrap.servers": p.settings.kafka.bootstrap_servers})
    producer.produce(topic, key=b"\x00\xff garbage", value=b"\xde\xad\xbe\xef not json")
    assert producer.flush(10) == 0
    # A value this target cannot hold exactly: NaN (refused by the sink, not silently changed).
    p.source("INSERT INTO public.floats VALUES (2, 'NaN')")
    p.source("INSERT INTO public.items VALUES (2, 'two', 2)")
    p.source("INSERT INTO public.floats VALUES (3, 3.5)")
    p.wait_converged(tables=["public.items"])
    deadline = time.monotonic() + 60
    while sorted(r[0] for r in p.target_values("public.floats", ["id"])) != [1, 3]:
        assert time.monotonic() < deadline, p.worker_logs()
        time.sleep(0.5)
    dlq = Consumer(
        {
            "bootstrap.servers": p.settings.kafka.bootstrap_servers,
            "group.id": "dlq-check-" + topic,
            "auto.offset.reset": "earliest",
        }
    )
    dlq.subscribe([p.settings.pipelines[0].resolved_dlq_topic])
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        msg = dlq.poll(1)
        if msg is not None and msg.error() is None:
            letters.append(msg)
    dlq.close()
    assert len(letters) == 2
    origins = sorted(dict(m.headers())["cdc.original.topic"].decode().rsplit(".", 1)[-1] for m in letters)
    assert origins == ["floats", "items"]
    for m in letters:
        assert dict(m.headers())["cdc.error.reason"]


def test_postgresql_and_mariadb_pipelines_on_the_same_topics_both_verify_clean(e2e) -> None:  # type: ignore[no-untyped-def]
    """Two pipelines, two consumer groups, one set of change topics: each target converges and
    ``verify`` (server-side checksums for PostgreSQL, Python canonical text for MariaDB) is clean."""
    pg: E2EPipeline = e2e(DDL + TYPES_DDL, [*TABLES, "public.all_types"])
    maria: E2EPipeline = e2e([], [*TABLES, "public.all_types"], target="mariadb", share_source_with=pg)
    assert pg.settings.pipelines[0].resolved_consumer_group != maria.settings.pipelines[0].resolved_consumer_group
    load = Workload(pg.source_dsn).start()
    try:
        pg.start_worker()
        maria.start_worker()
        time.sleep(5)
    finally:
        load.stop()
    assert load.transactions > 50
    pg.wait_converged(timeout=240)
    maria.wait_converged(timeout=240)
    cfg = VerifySettings(chunk_size=100, max_wait_s=90)
    for p in (pg, maria):
        result = verify_pipeline(p.settings, p.settings.pipelines[0], None, cfg)
        assert result.ok, format_result(result)
        by_table = {str(t.table): t for t in result.tables}
        assert by_table["public.items"].rows_source == by_table["public.items"].rows_target > 0
        assert by_table["public.history"].keyless
        assert by_table["public.all_types"].rows_target == 2
