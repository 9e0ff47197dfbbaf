"""Apply-core acceptance (issue 4) through real Debezium, Kafka and PostgreSQL target, in both
``target.versions`` modes (issue 21): ``columns`` (positions in ``__cdc_*`` columns) and
``table`` (positions in ``cdc_control.row_versions``; the user tables keep exactly the source's
columns, asserted after every test)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from tests.e2e.conftest import E2EPipeline, table_rows

Factory = Callable[..., E2EPipeline]


@pytest.fixture(params=["columns", "table"])
def e2e_v(request: pytest.FixtureRequest, e2e: Factory) -> Iterator[Factory]:
    """The ``e2e`` factory with ``target.versions`` set to the parameter; in ``table`` mode it
    checks at the end that every target table has exactly the source table's columns."""
    made: list[E2EPipeline] = []

    def make(*args: object, **kwargs: object) -> E2EPipeline:
        p = e2e(*args, versions=request.param, **kwargs)
        made.append(p)
        return p

    yield make
    if request.param == "table":
        for p in made:
            for table in p.tables:
                assert target_columns(p, table) == source_columns(p, table), table


def _columns(dsn: str, schema: str, name: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " ORDER BY ordinal_position",
                (schema, name),
            ).fetchall()
        ]


def source_columns(p: E2EPipeline, table: str) -> list[str]:
    schema, _, name = table.partition(".")
    return _columns(p.source_dsn, schema, name)


def target_columns(p: E2EPipeline, table: str) -> list[str]:
    t = p.target_table(table)
    return _columns(p.target_dsn, t.schema, t.table)


ITEMS_DDL = "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int)"


def target_checksum(p: E2EPipeline, table: str) -> str:
    """Checksum of the target table including the pipeline's positions (version columns, or
    the table's ``row_versions`` rows) and tombstones."""
    with psycopg.connect(p.target_dsn) as conn:
        rows = conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()
        rows += conn.execute(
            "SELECT v::text FROM cdc_control.row_versions v WHERE table_name = %s ORDER BY 1", (table,)
        ).fetchall()
        rows += conn.execute(
            "SELECT format('%%s %%s %%s', row_key, commit_lsn, lsn) FROM cdc_control.tombstones"
            " WHERE table_name = %s ORDER BY 1",
            (table,),
        ).fetchall()
    return hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()


def test_all_ops_and_primary_key_change(e2e_v: Factory) -> None:
    p = e2e_v(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'snap-' || g, g FROM generate_series(1, 50) g"],
        ["public.items"],
    )
    p.start_worker()
    p.wait_converged()  # the initial snapshot
    p.source("INSERT INTO public.items VALUES (100, 'new', 1)")
    p.source("UPDATE public.items SET qty = qty + 1000 WHERE id <= 10")
    p.source("DELETE FROM public.items WHERE id BETWEEN 20 AND 29")
    p.source("UPDATE public.items SET id = 500 WHERE id = 100")  # primary-key change
    p.wait_converged()
    assert (500, "new", 1) in table_rows(p.target_dsn, "public.items")
    p.source("TRUNCATE public.items")
    p.source("INSERT INTO public.items VALUES (7, 'after-truncate', 7)")
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.items") == [(7, "after-truncate", 7)]


ALL_TYPES_DDL = [
    "CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')",
    """CREATE TABLE public.all_types (
        id bigint PRIMARY KEY, s smallint, i integer, n38 numeric(38,10), nfree numeric,
        r real, d double precision, b boolean, t text, vc varchar(20), ch char(3), ba bytea,
        u uuid, j json, jb jsonb, dt date, tm time, tmtz timetz, ts timestamp(6), tstz timestamptz,
        iv interval, ta text[], ia int[], m public.mood)""",
    """INSERT INTO public.all_types VALUES (1, -32768, 2147483647, 1234567890123456789012345678.0123456789,
        3.14159265358979323846264338327950288419716939937510, 'NaN', '-Infinity', true, 'héllo ☃',
        'varchar', 'abc', '\\xdeadbeef00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5]}',
        '{"b": {"c": null}}', '2024-02-29', '23:59:59.999999', '12:34:56.123456+02', '2024-01-02 03:04:05.678901',
        '2024-01-02 03:04:05.678901+05:30', '1 year 2 months 3 days 04:05:06.789', '{"x", NULL, "z y"}',
        '{1,2,3}', 'happy')""",
    "INSERT INTO public.all_types (id) VALUES (2)",
]


def test_every_type_round_trips(e2e_v: Factory) -> None:
    p = e2e_v(ALL_TYPES_DDL, ["public.all_types"])
    p.start_worker()
    p.wait_converged()
    p.source("UPDATE public.all_types SET n38 = -0.0000000001, r = 'Infinity', d = 1e-300 WHERE id = 1")
    p.source(
        "INSERT INTO public.all_types SELECT 3, s, i, n38, nfree, r, d, b, t, vc, ch, ba, u, j, jb, dt, tm, tmtz,"
        " ts, tstz, iv, ta, ia, m FROM public.all_types WHERE id = 1"
    )
    p.wait_converged()
    with psycopg.connect(p.target_dsn) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c"
                " JOIN pg_attribute a ON a.attrelid = 'public.all_types'::regclass AND a.attname = c.column_name"
                " WHERE c.table_name = 'all_types'"
            ).fetchall()
        )
    assert types["n38"] == "numeric(38,10)"
    assert types["tstz"] == "timestamp with time zone"
    assert types["jb"] == "jsonb"
    assert types["ta"] == "text[]"
    assert types["u"] == "uuid"


def test_toasted_text_survives_update_of_other_column(e2e_v: Factory) -> None:
    p = e2e_v(["CREATE TABLE public.docs (id int PRIMARY KEY, body text, version int)"], ["public.docs"])
    p.start_worker()
    # Random text does not compress, so it is stored out of line (TOASTed).
    p.source(
        "INSERT INTO public.docs VALUES (1, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000)), 1)"
    )
    p.wait_converged()
    p.source("UPDATE public.docs SET version = 2 WHERE id = 1")
    p.wait_converged()
    with psycopg.connect(p.target_dsn) as conn:
        length = conn.execute("SELECT length(body), version FROM public.docs").fetchone()
    assert length == (128000, 2)


def test_hostile_identifiers(e2e_v: Factory) -> None:
    p = e2e_v(
        [
            'CREATE SCHEMA "Odd Schema"',
            'CREATE TABLE "Odd Schema"."Select ""Quoted"" Table" ("Key Col" int PRIMARY KEY, "order" text, "we""ird" text)',
            'INSERT INTO "Odd Schema"."Select ""Quoted"" Table" VALUES (1, \'o\', \'w\')',
        ],
        ['Odd Schema.Select "Quoted" Table'],
        pipeline={"transforms": [{"match": "*", "route": "{schema}.{table}"}]},
    )
    p.start_worker()
    p.source('UPDATE "Odd Schema"."Select ""Quoted"" Table" SET "we""ird" = \'w2\'')
    p.source('INSERT INTO "Odd Schema"."Select ""Quoted"" Table" VALUES (2, \'; DROP TABLE x; --\', NULL)')
    p.wait_converged()


def test_replay_from_the_start_changes_nothing(e2e_v: Factory) -> None:
    p = e2e_v(
        [ITEMS_DDL, "INSERT INTO public.items SELECT g, 'v' || g, g FROM generate_series(1, 200) g"], ["public.items"]
    )
    worker = p.start_worker()
    p.source("UPDATE public.items SET qty = -qty WHERE id % 3 = 0")
    p.source("DELETE FROM public.items WHERE id % 7 = 0")
    p.source("INSERT INTO public.items VALUES (1000, 'late', 0)")
    p.wait_converged()
    before = target_checksum(p, "public.items")
    assert p.stop_worker(worker) == 0
    # Delete the stored offsets: with none, a worker starts every partition from the beginning.
    with psycopg.connect(p.target_dsn, autocommit=True) as conn:
        deleted = conn.execute(
            "DELETE FROM cdc_control.offsets WHERE consumer_group = %s",
            (p.settings.pipelines[0].resolved_consumer_group,),
        ).rowcount
    assert deleted >= 1
    p.start_worker()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the replay has consumed everything again
        with psycopg.connect(p.target_dsn) as conn:
            stored = conn.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM cdc_control.offsets WHERE consumer_group = %s",
                (p.settings.pipelines[0].resolved_consumer_group,),
            ).fetchone()
        if stored and stored[0] >= 200 + 67 + 28 + 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"replay did not finish:\n{p.worker_logs()}")
    assert target_checksum(p, "public.items") == before
    p.wait_converged()


def test_keyless_table_keeps_duplicates_and_survives_a_replay(e2e_v: Factory) -> None:
    """A table without a primary key (REPLICA IDENTITY FULL, append_dedup): duplicates are kept,
    a delete removes one equal row, an update is delete + insert, a truncate empties it, and a
    replay from the start of the topic (offsets deleted) neither duplicates nor resurrects."""
    p = e2e_v(
        [
            "CREATE TABLE public.hist (aid int, delta int)",
            "ALTER TABLE public.hist REPLICA IDENTITY FULL",
            "INSERT INTO public.hist VALUES (1, 5), (1, 5), (2, 7)",
        ],
        ["public.hist"],
    )
    worker = p.start_worker()
    p.wait_converged()  # the initial snapshot
    p.source("INSERT INTO public.hist VALUES (1, 5), (3, 9)")
    p.source("DELETE FROM public.hist WHERE ctid = (SELECT ctid FROM public.hist WHERE aid = 1 LIMIT 1)")
    p.source("UPDATE public.hist SET delta = 8 WHERE aid = 2")
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.hist") == [(1, 5), (1, 5), (2, 8), (3, 9)]
    p.source("TRUNCATE public.hist")
    p.source("INSERT INTO public.hist VALUES (4, 4), (4, 4)")
    p.source("DELETE FROM public.hist WHERE ctid = (SELECT ctid FROM public.hist LIMIT 1)")
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.hist") == [(4, 4)]
    assert p.stop_worker(worker) == 0
    with psycopg.connect(p.target_dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM cdc_control.offsets WHERE consumer_group = %s",
            (p.settings.pipelines[0].resolved_consumer_group,),
        )
    p.start_worker()
    p.wait_log("partitions assigned", count=2)
    time.sleep(5)  # the whole topic (a dozen messages) is consumed again within a few batches
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.hist") == [(4, 4)]


def test_interleaved_transactions_follow_commit_order(e2e_v: Factory) -> None:
    p = e2e_v([ITEMS_DDL, "INSERT INTO public.items VALUES (1, 'a0', 0), (2, 'b0', 0)"], ["public.items"])
    p.start_worker()
    p.wait_converged()
    for round_ in range(5):
        t1 = psycopg.connect(p.source_dsn)
        t1.execute("UPDATE public.items SET name = %s WHERE id = 1", (f"a-t1-{round_}",))  # T1 writes first
        p.source("UPDATE public.items SET name = %s WHERE id = 2", (f"b-t2-{round_}",))  # T2 commits first
        p.source("UPDATE public.items SET qty = qty + 1 WHERE id = 2")
        t1.execute("UPDATE public.items SET name = name || '+' WHERE id = 2")  # waits for nothing: T2 committed
        t1.commit()  # T1 commits last, with the lowest change LSN
        t1.close()
        p.source("UPDATE public.items SET qty = qty + 10 WHERE id = 1")  # T3
    p.wait_converged()
    assert table_rows(p.target_dsn, "public.items") == [(1, "a-t1-4", 50), (2, "b-t2-4+", 5)]


def test_poison_messages_go_to_the_dlq_and_the_pipeline_goes_on(e2e_v: Factory) -> None:
    p = e2e_v([ITEMS_DDL], ["public.items"])
    p.start_worker()
    p.source("INSERT INTO public.items VALUES (1, 'one', 1)")
    p.wait_converged()
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    producer = Producer({"bootstrap.servers": p.settings.kafka.bootstrap_servers})
    producer.produce(topic, key=b"\x00\xff garbage", value=b"\xde\xad\xbe\xef not json")
    producer.produce(topic, key=b'{"id": 9}', value=b'{"hello": "valid JSON, not Debezium"}')
    assert producer.flush(10) == 0
    p.source("INSERT INTO public.items VALUES (2, 'two', 2)")
    p.wait_converged()
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
    values = {m.value() for m in letters}
    assert values == {b"\xde\xad\xbe\xef not json", b'{"hello": "valid JSON, not Debezium"}'}
    for m in letters:
        headers = dict(m.headers())
        assert headers["cdc.original.topic"] == topic.encode()
        assert int(headers["cdc.original.offset"]) >= 1
        assert headers["cdc.error.reason"]


def test_two_workers_share_four_partitions(e2e_v: Factory) -> None:
    p = e2e_v([ITEMS_DDL], ["public.items"], source={"topic_partitions": 4})
    # The items topic must exist before w1 subscribes: w1 then owns all four partitions and
    # w2's join makes it revoke some. (An empty table has no topic yet; w1's first assignment
    # would be empty and librdkafka's cooperative protocol logs no revoke for nothing.)
    p.source("INSERT INTO public.items VALUES (-1, 'first', 0)")
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    admin = AdminClient({"bootstrap.servers": p.settings.kafka.bootstrap_servers})
    deadline = time.monotonic() + 60
    while len(getattr(admin.list_topics(timeout=10).topics.get(topic), "partitions", {})) < 4:
        assert time.monotonic() < deadline, f"topic {topic} not created with 4 partitions"
        time.sleep(0.3)
    w1 = p.start_worker()
    p.wait_log("partitions assigned")
    w2 = p.start_worker()
    p.wait_log("partitions revoked")  # cooperative rebalance: w1 hands partitions over to w2
    p.wait_log("partitions assigned", count=2)
    stop = threading.Event()

    def load() -> None:
        with psycopg.connect(p.source_dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set() and i < 3000:
                conn.execute(
                    "INSERT INTO public.items VALUES (%s, 'n', 0) ON CONFLICT (id) DO UPDATE"
                    " SET qty = public.items.qty + 1",
                    (i % 400,),
                )
                i += 1

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(120)
    stop.set()
    p.wait_converged()
    with psycopg.connect(p.target_dsn) as conn:
        parts = conn.execute(
            "SELECT count(DISTINCT kafka_partition) FROM cdc_control.offsets WHERE consumer_group = %s AND topic LIKE %s",
            (p.settings.pipelines[0].resolved_consumer_group, "%.public.items"),
        ).fetchone()
    assert parts == (4,)
    with psycopg.connect(p.target_dsn) as conn:
        (dupes,) = conn.execute("SELECT count(*) - count(DISTINCT id) FROM public.items").fetchone()
    assert dupes == 0
    assert w1.poll() is None
    assert w2.poll() is None
