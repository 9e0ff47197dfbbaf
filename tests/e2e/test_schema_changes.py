"""Schema changes on the source while streaming (issue 19), through real Debezium, Kafka and
worker processes: the expand-contract steps under a ~20 changes/s writer on ``public.users``
(PostgreSQL and MariaDB targets), the refusals of narrowing changes and their documented fix, and
the publication check of a process started with the old YAML after a table was added."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import yaml
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from connectors.connect_client import ConnectClient
from connectors.debezium import signal_table
from pipeline.control.monitor.slot import LiveIncludeList, SlotMonitor
from pipeline.control.verify.model import VerifySettings, format_result
from pipeline.control.verify.run import verify_pipeline
from pipeline.core.settings.loading import load_settings
from sinks.sqlalchemy.ddl import physical
from tests.e2e.conftest import E2EPipeline
from tests.e2e.helpers_snapshot import apply_config, write_config

pytestmark = pytest.mark.timeout(600)

USERS_DDL = [
    "CREATE TABLE public.users (id int PRIMARY KEY, user_name varchar(50) NOT NULL, score int NOT NULL, note text)",
    "INSERT INTO public.users SELECT g, 'user' || g, g, 'note ' || g FROM generate_series(1, 2000) g",
]
VERIFY = VerifySettings(chunk_size=500, max_wait_s=60, recheck_attempts=2)
STEP_S = 8.0  # writer time per step (~20 changes/s)

Write = Callable[[psycopg.Connection[Any], random.Random, int], None]


class Writer:
    """~20 changes/s on ``public.users`` ids 1..500 (and inserts above 100000) with the current
    ``write`` function, until stopped; :meth:`pause` waits for the change in flight."""

    def __init__(self, dsn: str, write: Write) -> None:
        self._dsn = dsn
        self.write = write
        self._lock = threading.Lock()
        self._run = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.changes = 0
        self.errors: list[str] = []

    def start(self) -> Writer:
        self._run.set()
        self._thread.start()
        return self

    def pause(self) -> None:
        self._run.clear()
        with self._lock:
            pass

    def resume(self, write: Write | None = None) -> None:
        if write is not None:
            self.write = write
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(30)

    def _loop(self) -> None:
        rng = random.Random(19)
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                self._run.wait()
                with self._lock:
                    if self._stop.is_set() or not self._run.is_set():
                        continue
                    try:
                        self.write(conn, rng, self.changes)
                        self.changes += 1
                    except psycopg.Error as exc:  # e.g. a column renamed under a statement in flight
                        self.errors.append(str(exc).splitlines()[0])
                time.sleep(0.05)


def w_initial(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    if n % 5 == 0:
        conn.execute("INSERT INTO public.users VALUES (%s, %s, %s, %s)", (100_000 + n, f"new{n}", n, f"n{n}"))
    else:
        conn.execute(
            "UPDATE public.users SET score = score + 1, user_name = %s, note = %s WHERE id = %s",
            (f"u{n}", f"note{n}", rng.randint(1, 500)),
        )


def w_dual(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    """Dual-write of ``user_name`` and ``display_name``."""
    name = f"d{n}" if n % 7 else "y" * 90 if _wide(conn) else f"d{n}"
    if n % 5 == 0:
        conn.execute(
            "INSERT INTO public.users (id, user_name, display_name, score, note) VALUES (%s, %s, %s, %s, %s)",
            (100_000 + n, name, name, n, f"n{n}"),
        )
    else:
        conn.execute(
            "UPDATE public.users SET score = score + 1, user_name = %s, display_name = %s, note = %s WHERE id = %s",
            (name, name, f"note{n}", rng.randint(1, 500)),
        )


def _wide(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT character_maximum_length FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'users' AND column_name = 'user_name'"
    ).fetchone()
    return bool(row and row[0] and row[0] >= 90)


def w_display_only(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    """Reads switched to ``display_name``; ``user_name`` is no longer written (before its drop)."""
    if n % 5 == 0:
        conn.execute(
            "INSERT INTO public.users (id, display_name, score, note) VALUES (%s, %s, %s, %s)",
            (100_000 + n, f"e{n}", n, f"n{n}"),
        )
    else:
        conn.execute(
            "UPDATE public.users SET score = score + 1, display_name = %s, note = %s WHERE id = %s",
            (f"e{n}", f"note{n}", rng.randint(1, 500)),
        )


def w_no_note(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    conn.execute(
        "UPDATE public.users SET score = score + 1, display_name = %s WHERE id = %s", (f"f{n}", rng.randint(1, 500))
    )


def w_remark(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    if n % 5 == 0:
        conn.execute(
            "INSERT INTO public.users (id, display_name, score, remark) VALUES (%s, %s, %s, %s)",
            (100_000 + n, f"g{n}", n, f"r{n}"),
        )
    else:
        conn.execute(
            "UPDATE public.users SET score = score + 1, display_name = %s, remark = %s WHERE id = %s",
            (f"g{n}", f"remark{n}", rng.randint(1, 500)),
        )


# ----------------------------------------------------------------------------- checks


def dlq_messages(p: E2EPipeline) -> int:
    """Messages in the pipeline's DLQ topic (0 when the topic does not exist)."""
    topic = p.settings.pipelines[0].resolved_dlq_topic
    consumer = Consumer({"bootstrap.servers": p.settings.kafka.bootstrap_servers, "group.id": f"dlq-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, n), timeout=10)[1] for n in meta.partitions)
    finally:
        consumer.close()


def checkpoint(p: E2EPipeline, writer: Writer, label: str, tables: list[str] | None = None) -> None:
    """Writes paused: the worker runs, the DLQ is empty, the target converges and verifies clean."""
    writer.pause()
    try:
        for proc in p.workers:
            assert proc.poll() is None, f"{label}: the worker exited with {proc.returncode}\n{p.worker_logs()}"
        p.wait_converged(timeout=120, tables=tables)
        result = verify_pipeline(p.settings, p.settings.pipelines[0], tables, VERIFY)
        assert result.ok, f"{label}: {format_result(result)}"
        assert dlq_messages(p) == 0, f"{label}: dead letters\n{p.worker_logs()}"
        print(f"{label}: clean after {writer.changes} writer changes")
    finally:
        writer.resume()


def source_copy(p: E2EPipeline, columns: list[str]) -> list[str]:
    """``COPY (SELECT columns FROM public.users ORDER BY id) TO STDOUT`` of the source, as lines."""
    return _copy(p.source_dsn, "public", "users", columns)


def _copy(dsn: str, schema: str, table: str, columns: list[str]) -> list[str]:
    query = sql.SQL("COPY (SELECT {} FROM {}.{} ORDER BY id) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema), sql.Identifier(table)
    )
    out = bytearray()
    with psycopg.connect(dsn) as conn, conn.cursor().copy(query) as copy:
        for chunk in copy:
            out += chunk
    return out.decode().splitlines()


def target_copy(p: E2EPipeline, columns: list[str]) -> list[str]:
    """The same text from the target: PostgreSQL ``COPY``; MariaDB rows in COPY's text form."""
    t = p.target_table("public.users")
    if p.target_kind == "postgresql":
        return _copy(p.target_dsn, t.schema, t.table, columns)
    schema, name = physical(t, "mysql")
    engine = sa.create_engine(p.target_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tbl = sa.table(name, *(sa.column(c) for c in columns), schema=schema)
            rows = conn.execute(sa.select(*tbl.c).order_by(tbl.c.id)).all()
    finally:
        engine.dispose()
    return ["\t".join("\\N" if v is None else str(v) for v in row) for row in rows]


def target_sql(p: E2EPipeline, statement: str) -> None:
    """Run ``statement`` on the target (the operator's fix); ``{t}`` is the quoted users table."""
    t = p.target_table("public.users")
    if p.target_kind == "postgresql":
        with psycopg.connect(p.target_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(t=sql.Identifier(t.schema, t.table)))
        return
    engine = sa.create_engine(p.target_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement.format(t=f"`{t.schema}`.`{t.table}`"))
    finally:
        engine.dispose()


def schema_changes(p: E2EPipeline) -> list[tuple[str, str]]:
    """``(column, change)`` rows of the target's ``schema_changes`` control table, in order."""
    pipe = p.settings.pipelines[0]
    if p.target_kind == "postgresql":
        with psycopg.connect(p.target_dsn) as conn:
            rows = conn.execute(
                sql.SQL("SELECT column_name, change FROM {}.schema_changes ORDER BY id").format(
                    sql.Identifier(pipe.target.control_schema)
                )
            ).fetchall()
        return [(str(a), str(b)) for a, b in rows]
    engine = sa.create_engine(p.target_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            t = sa.table(
                "schema_changes",
                sa.column("id"),
                sa.column("column_name"),
                sa.column("change"),
                schema=pipe.target.control_schema,
            )
            found = conn.execute(sa.select(t.c.column_name, t.c.change).order_by(t.c.id)).all()
    finally:
        engine.dispose()
    return [(str(a), str(b)) for a, b in found]


def with_target_options(p: E2EPipeline, **options: Any) -> None:
    """Add ``options`` to the pipeline's ``target`` section (before its workers start)."""
    doc = yaml.safe_load(p.config_path.read_text(encoding="utf-8"))
    doc["pipelines"][0]["target"].update(options)
    p.config_path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    p.settings = load_settings(p.config_path, {})


def request_incremental_snapshot(p: E2EPipeline, table: str) -> None:
    """An ``execute-snapshot`` signal row (Debezium "Sending signals to a Debezium connector")."""
    src = p.settings.sources[0]
    data = json.dumps({"data-collections": [table], "type": "incremental"})
    with psycopg.connect(p.source_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)").format(
                signal_table(src).identifier()
            ),
            (str(uuid.uuid4()), data),
        )


# ----------------------------------------------------------------------------- scenarios


def expand_contract(p: E2EPipeline) -> None:
    """The seven steps of issue 19 with a writer running, a checkpoint after each."""
    with_target_options(p, rename_columns={str(p.target_table("public.users")): {"note": "remark"}})
    p.start_worker()
    p.wait_converged(timeout=120)
    writer = Writer(p.source_dsn, w_initial).start()
    try:
        time.sleep(STEP_S / 2)
        # 1. add a column, backfill it in batches, dual-write.
        p.source("ALTER TABLE public.users ADD COLUMN display_name varchar(50)")
        writer.resume(w_dual)
        for low in range(1, 2001, 500):
            p.source(
                "UPDATE public.users SET display_name = user_name WHERE id BETWEEN %s AND %s AND display_name IS NULL",
                (low, low + 499),
            )
        time.sleep(STEP_S)
        checkpoint(p, writer, "1 add+backfill+dual-write")
        # 2. varchar(50) -> varchar(100), with a 90-character value.
        p.source("ALTER TABLE public.users ALTER COLUMN user_name TYPE varchar(100)")
        p.source("ALTER TABLE public.users ALTER COLUMN display_name TYPE varchar(100)")
        p.source("UPDATE public.users SET user_name = repeat('x', 90), display_name = repeat('x', 90) WHERE id = 1507")
        time.sleep(STEP_S)
        checkpoint(p, writer, "2 varchar(50)->varchar(100)")
        # 3. int -> bigint, with 5,000,000,000.
        p.source("ALTER TABLE public.users ALTER COLUMN score TYPE bigint")
        p.source("UPDATE public.users SET score = 5000000000 WHERE id = 1508")
        time.sleep(STEP_S)
        checkpoint(p, writer, "3 int->bigint")
        # 4. a NOT NULL column with a default; rows 501..2000 stay untouched (fast default).
        p.source("ALTER TABLE public.users ADD COLUMN status text NOT NULL DEFAULT 'active'")
        time.sleep(STEP_S)
        checkpoint(p, writer, "4 add NOT NULL DEFAULT")
        # 5. contract: the old column made nullable, no longer written, dropped.
        p.source("ALTER TABLE public.users ALTER COLUMN user_name DROP NOT NULL")
        writer.resume(w_display_only)
        time.sleep(1)
        p.source("ALTER TABLE public.users DROP COLUMN user_name")
        time.sleep(STEP_S)
        checkpoint(p, writer, "5 drop old column")
        # 6. rename note -> remark (rename hint in the target config).
        writer.resume(w_no_note)
        time.sleep(1)
        p.source("ALTER TABLE public.users RENAME COLUMN note TO remark")
        writer.resume(w_remark)
        time.sleep(STEP_S)
        checkpoint(p, writer, "6 rename")
        # 7. a new table, by the documented path: source prepare + connectors apply, incremental snapshot.
        p.source("CREATE TABLE public.orders (id int PRIMARY KEY, user_id int NOT NULL, amount numeric(12,2))")
        p.source("INSERT INTO public.orders SELECT g, g % 500 + 1, g * 1.25 FROM generate_series(1, 300) g")
        new_config = write_config(p, ["public.users", "public.orders"])
        apply_config(new_config)
        request_incremental_snapshot(p, "public.orders")
        p.source("INSERT INTO public.orders VALUES (301, 1, 9.99)")
        time.sleep(STEP_S)
        p.tables = ["public.users", "public.orders"]
        p.settings = load_settings(new_config, {})
        checkpoint(p, writer, "7 new table")
        assert_publication_check_uses_live_config(p, new_config)
    finally:
        writer.stop()
    p.wait_converged(timeout=120)
    columns = ["id", "display_name", "score", "remark", "status"]
    src, tgt = source_copy(p, columns), target_copy(p, columns)
    assert len(src) >= 2000 and src == tgt, (len(src), len(tgt), sorted(set(src) ^ set(tgt))[:5])
    assert tgt[1506].startswith("1507\t" + "x" * 90 + "\t") and tgt[1507].startswith("1508\t")
    assert "\t5000000000\t" in tgt[1507]
    untouched = [line for line in tgt if 1000 <= int(line.split("\t")[0]) <= 2000]
    assert untouched and all(line.endswith("\tactive") for line in untouched)
    recorded = schema_changes(p)
    for expected in [
        ("display_name", "added"),
        ("user_name", "widened"),
        ("score", "widened"),
        ("status", "added"),
        ("user_name", "dropped_at_source"),
        ("remark", "renamed"),
        ("note", "dropped_at_source"),
    ]:
        assert expected in recorded, (expected, recorded)
    print("writer changes:", writer.changes, "writer errors:", writer.errors[:3], "schema changes:", recorded)


def assert_publication_check_uses_live_config(p: E2EPipeline, new_config: Any) -> None:
    """A control process still on the OLD YAML: the YAML alone flags public.orders (the false
    alarm of issue 19); with the connector's live table.include.list it is healthy."""
    old = load_settings(p.config_path, {}).sources[0]
    assert old.tables == ["public.users"]
    yaml_only = SlotMonitor(old, interval_s=1)
    live = LiveIncludeList(lambda: ConnectClient(p.settings.connect), old.resolved_connector_name)
    with_live = SlotMonitor(old, interval_s=1, live_include=live)
    try:
        yaml_only.poll_once()
        with_live.poll_once()
        assert yaml_only.publication is not None and not yaml_only.publication.ok
        assert "public.orders" in yaml_only.publication.detail
        assert with_live.publication is not None and with_live.publication.ok, with_live.publication
    finally:
        yaml_only.close()
        with_live.close()


def test_expand_contract_under_load_postgresql(e2e) -> None:  # type: ignore[no-untyped-def]
    expand_contract(e2e(USERS_DDL, ["public.users"]))


def test_expand_contract_under_load_mariadb(e2e) -> None:  # type: ignore[no-untyped-def]
    expand_contract(e2e(USERS_DDL, ["public.users"], target="mariadb"))


def _stored_offsets(p: E2EPipeline) -> dict[tuple[str, int], int]:
    """Stored next offsets of the users change topic (heartbeats move the others)."""
    sink = p.make_sink()
    try:
        offsets = sink.group_offsets(p.settings.pipelines[0].resolved_consumer_group)
    finally:
        sink.close()
    return {tp: o for tp, o in offsets.items() if tp[0].endswith(".public.users")}


def _refused(p: E2EPipeline, change: str, probe: str, expected_log: str) -> None:
    """Apply the narrowing ``change`` and the ``probe`` write on the source: the worker stops
    with ``expected_log``, nothing dead-lettered, offsets and the target row unchanged."""
    before = _stored_offsets(p)
    row_before = p.target_values("public.users", ["id", "score", "name"])
    p.source(change)
    p.source(probe)
    proc = p.workers[-1]
    assert proc.wait(120) != 0
    p.killed.add(proc.pid)  # an expected stop: convergence checks ignore it
    assert expected_log in p.worker_logs(), p.worker_logs()
    assert dlq_messages(p) == 0
    assert _stored_offsets(p) == before
    assert p.target_values("public.users", ["id", "score", "name"]) == row_before


@pytest.mark.parametrize("target", ["postgresql", "mariadb"])
def test_narrowing_stops_the_worker_and_the_documented_fix_resumes(e2e, target: str) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [
            "CREATE TABLE public.users (id int PRIMARY KEY, score bigint, name varchar(100))",
            "INSERT INTO public.users SELECT g, g, 'n' || g FROM generate_series(1, 50) g",
        ],
        ["public.users"],
        target=target,
    )
    p.start_worker()
    p.wait_converged(timeout=120)
    p.source("UPDATE public.users SET score = score + 1 WHERE id = 1")
    p.wait_converged(timeout=60)
    # bigint -> int: refused; fix: the target column altered to the new type, then a restart.
    _refused(
        p,
        "ALTER TABLE public.users ALTER COLUMN score TYPE int",
        "UPDATE public.users SET score = 42 WHERE id = 2",
        "narrowed at the source from bigint to integer",
    )
    modify = "ALTER TABLE {t} MODIFY COLUMN score INT NULL" if target == "mariadb" else None
    target_sql(p, modify or "ALTER TABLE {t} ALTER COLUMN score TYPE integer")
    p.start_worker()
    p.wait_converged(timeout=120)
    # varchar(100) -> varchar(10): refused the same way.
    _refused(
        p,
        "ALTER TABLE public.users ALTER COLUMN name TYPE varchar(10)",
        "UPDATE public.users SET name = 'short' WHERE id = 3",
        "narrowed at the source from varchar(100) to varchar(10)",
    )
    modify = "ALTER TABLE {t} MODIFY COLUMN name VARCHAR(10) NULL" if target == "mariadb" else None
    target_sql(p, modify or "ALTER TABLE {t} ALTER COLUMN name TYPE varchar(10)")
    p.start_worker()
    p.source("UPDATE public.users SET name = 'after' WHERE id = 4")
    p.wait_converged(timeout=120)
    result = verify_pipeline(p.settings, p.settings.pipelines[0], None, VERIFY)
    assert result.ok, format_result(result)
    assert dlq_messages(p) == 0
    assert p.workers[-1].poll() is None
