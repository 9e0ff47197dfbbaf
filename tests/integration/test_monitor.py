"""Issue 5 acceptance against real PostgreSQL, Kafka and Kafka Connect: the slot-lag monitor,
heartbeat lag, publication health, connector states, ``lag`` and ``monitor``.

Metrics are always read over HTTP from a running :class:`~pipeline.core.health.HealthServer` and
parsed with prometheus-client's text parser.

The ``max_slot_wal_keep_size`` test runs on a throwaway PostgreSQL cluster of its own
(``initdb`` on a free port) rather than on the shared source cluster: the setting and the WAL
are cluster-wide, so lowering it there and forcing WAL switches plus a checkpoint would also
invalidate the slots of every other test (and developer) using that cluster at the time.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic: re-exported without __all__
    AdminClient,
    NewTopic,
)
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from connectors.source_prep import prepare
from pipeline.app import run_control
from pipeline.cli import lag_cmd
from pipeline.control.monitor.group import MonitorGroup, build_monitors
from pipeline.core.health import HealthServer
from pipeline.core.settings.root import Settings
from pipeline.localstack import LocalStack, LocalStackSettings
from pipeline.localstack.services import PostgresCluster, pg_bindir
from sinks.factory import make_target
from sinks.postgres.ddl import control_ddl
from tests.conftest import Databases
from tests.unit.test_monitor import heartbeat_batch

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- helpers


class Scraper:
    """Reads ``/metrics`` of a HealthServer and looks samples up by name and labels."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = httpx.get(self.url, timeout=5).text
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def wait_for(self, name: str, predicate: Callable[[float], bool], /, **labels: str) -> float:
        """Poll (up to 30 s) until the sample exists and ``predicate(value)`` holds; returns the value."""
        return self.wait_within(30.0, name, predicate, **labels)

    def wait_within(self, timeout_s: float, name: str, predicate: Callable[[float], bool], /, **labels: str) -> float:
        """:meth:`wait_for` with a timeout of ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(name, **labels)
            if last is not None and predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{name}{labels} never satisfied the check; last value {last}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source_for(name: str, database: str, port: int, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "database": database,
        "user": "postgres",
        "password": "postgres",
        "tables": ["public.items"],
        "slot_name": f"slot_{name}",
        **extra,
    }


def make_settings(
    stack: LocalStackSettings, sources: list[dict[str, object]], pipelines: list[dict[str, object]] | None = None
) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": stack.bootstrap_servers},
        connect={"url": stack.connect_url, "timeout_s": 5},
        sources=sources,
        pipelines=pipelines or [],
        monitor={"interval_s": 0.3, "wal_rate_window_s": 30},
        metrics={"host": "127.0.0.1", "port": 0},
    )


@dataclass
class Running:
    group: MonitorGroup
    health: HealthServer
    scrape: Scraper


@pytest.fixture
def run_monitors() -> Iterator[Callable[[MonitorGroup], Running]]:
    """Starts a monitor group and a HealthServer on a free port; stops both after the test."""
    started: list[Running] = []

    def start(group: MonitorGroup) -> Running:
        health = HealthServer("127.0.0.1", 0, group.ready)
        group.start()
        health.start()
        running = Running(group, health, Scraper(health.port))
        started.append(running)
        return running

    yield start
    for r in started:
        r.group.stop()
        r.health.stop()


def insert_rows(dsn: str, rows: int, payload: int = 300) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO items (payload) SELECT repeat(md5(g::text), %s) FROM generate_series(1, %s) AS g",
            (payload // 32 + 1, rows),
        )


def create_items_and_slot(dsn: str, slot: str) -> None:
    """Table ``items``, publication ``recv_<slot>`` for pg_recvlogical (pgoutput reads
    publications at the decoding position, so it must predate the slot), and the slot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, payload text)")
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE items").format(sql.Identifier(f"recv_{slot}")))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


# --------------------------------------------------------------------------- slot lag on the shared stack


def test_slot_lag_grows_without_consumer_and_falls_with_one(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], run_monitors: Callable[..., Running]
) -> None:
    """No consumer + writes: WAL retained and bytes behind grow, the slot is inactive; a
    consumer (pg_recvlogical) makes it active and bytes behind fall; stopped, it is inactive
    again. Unlimited retention (the shared cluster's default) is reported as +Inf with the
    warning gauge. Publication health follows the publication. Heartbeat age is read from the
    target. The connector (never created) is ABSENT."""
    stack = local_stack.settings
    name = unique("mon")
    slot = f"slot_{name}"
    create_items_and_slot(databases.source_dsn, slot)
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.heartbeat (source text PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO public.heartbeat VALUES (%s, now() - interval '30 seconds')", (name,))
        heartbeat_written = time.monotonic()
    settings = make_settings(
        stack,
        [source_for(name, databases.name, stack.source_pg_port)],
        [{"name": f"p_{name}", "source": name, "target": {"url": databases.target_dsn}}],
    )
    run = run_monitors(build_monitors(settings))
    m = run.scrape
    src = {"source": name, "slot": slot}

    m.wait_for("cdc_replication_slot_exists", lambda v: v == 1, **src)
    retained0 = m.wait_for("cdc_replication_slot_wal_retained_bytes", lambda v: v >= 0, **src)
    behind0 = m.wait_for("cdc_replication_slot_bytes_behind", lambda v: v >= 0, **src)
    for _ in range(3):
        insert_rows(databases.source_dsn, 2000)
    retained = m.wait_for("cdc_replication_slot_wal_retained_bytes", lambda v: v > retained0 + 500_000, **src)
    behind = m.wait_for("cdc_replication_slot_bytes_behind", lambda v: v > behind0 + 500_000, **src)
    assert m.value("cdc_replication_slot_active", **src) == 0
    assert m.value("cdc_replication_slot_wal_status", status="reserved", **src) == 1
    assert m.value("cdc_replication_slot_wal_status", status="lost", **src) == 0
    assert m.value("cdc_source_slot_wal_unlimited", source=name) == 1
    assert m.value("cdc_replication_slot_seconds_until_lost", **src) == math.inf
    assert m.value("cdc_replication_slot_safe_wal_size_bytes", **src) == math.inf
    m.wait_for("cdc_source_wal_rate_bytes_per_second", lambda v: v > 0, source=name)
    assert (m.value("cdc_source_wal_position_bytes", source=name) or 0) > 0
    assert m.value("cdc_monitor_up", monitor="slot", source=name) == 1

    # Publication: missing, then created by `source prepare`, then missing a table.
    pub = {"source": name, "publication": f"cdc_{name}"}
    m.wait_for("cdc_publication_healthy", lambda v: v == 0, **pub)
    source = settings.source(name)
    prepare(source)
    m.wait_for("cdc_publication_healthy", lambda v: v == 1, **pub)

    # Heartbeat age: 30 s old row in the target, then refreshed.
    hb = {"pipeline": f"p_{name}", "source": name}
    age = m.wait_for("cdc_heartbeat_age_seconds", lambda v: v >= 29, **hb)
    assert age < 30 + (time.monotonic() - heartbeat_written) + 5  # the row's age, not a stale or made-up one
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.heartbeat SET ts = now() WHERE source = %s", (name,))
    m.wait_for("cdc_heartbeat_age_seconds", lambda v: v < 5, **hb)

    # The connector was never created: ABSENT, and Connect itself answered.
    conn_labels = {"source": name, "connector": source.resolved_connector_name}
    m.wait_for("cdc_connector_state", lambda v: v == 1, state="ABSENT", **conn_labels)
    assert m.value("cdc_connector_state", state="RUNNING", **conn_labels) == 0
    assert m.value("cdc_monitor_up", monitor="connect", source=name) == 1

    # A consumer: the slot becomes active and what it confirms is no longer "behind".
    recv = subprocess.Popen(
        [
            str(pg_bindir() / "pg_recvlogical"),
            "-d", databases.source_dsn,
            "--slot", slot,
            "--start",
            "-o", "proto_version=1",
            "-o", f"publication_names=recv_{slot}",
            "-s", "1",
            "-F", "1",
            "-f", "/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        m.wait_for("cdc_replication_slot_active", lambda v: v == 1, **src)
        insert_rows(databases.source_dsn, 10)
        m.wait_within(60, "cdc_replication_slot_bytes_behind", lambda v: v < behind / 10, **src)
    finally:
        recv.terminate()
        _, err = recv.communicate(timeout=10)
    assert b"error" not in err.lower(), err
    m.wait_for("cdc_replication_slot_active", lambda v: v == 0, **src)
    assert retained > 0

    # The publication losing a table is detected.
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE items").format(sql.Identifier(f"cdc_{name}")))
    m.wait_for("cdc_publication_healthy", lambda v: v == 0, **pub)
    ok, detail = run.group.ready()
    assert ok, detail


def test_heartbeat_age_of_a_sqlite_target_and_a_group_restarted_like_a_lease(
    local_stack: LocalStack,
    databases: Databases,
    unique: Callable[[str], str],
    run_monitors: Callable[..., Running],
    tmp_path: Path,
) -> None:
    """Heartbeat lag is measured for a SQLite target (row applied through the sink, read back
    through the Target seam, against the real source's now()); the group, stopped and started
    again (lease lost and regained), keeps measuring."""
    stack = local_stack.settings
    name = unique("lite")
    create_items_and_slot(databases.source_dsn, f"slot_{name}")
    pipe = {"name": f"p_{name}", "source": name, "target": {"url": f"sqlite:///{tmp_path / 'target.db'}"}}
    settings = make_settings(stack, [source_for(name, databases.name, stack.source_pg_port)], [pipe])
    target = make_target(settings.pipelines[0], purpose="test")
    written = time.monotonic()
    target.apply(heartbeat_batch(name, datetime.now(UTC) - timedelta(seconds=30), 100), "g", {("t", 0): 1})
    run = run_monitors(build_monitors(settings, connectors=False))
    hb = {"pipeline": f"p_{name}", "source": name}
    age = run.scrape.wait_for("cdc_heartbeat_age_seconds", lambda v: v >= 29, **hb)
    assert age < 30 + (time.monotonic() - written) + 5

    run.group.stop(10)
    assert not run.group.running
    target.apply(heartbeat_batch(name, datetime.now(UTC), 200), "g", {("t", 0): 2})
    target.close()
    run.group.start()
    run.scrape.wait_for("cdc_heartbeat_age_seconds", lambda v: v < 5, **hb)
    ok, detail = run.group.ready()
    assert ok, detail


def test_monitor_survives_a_dropped_connection(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], run_monitors: Callable[..., Running]
) -> None:
    """A terminated backend is logged and counted, and the next poll reconnects."""
    stack = local_stack.settings
    name = unique("drop")
    create_items_and_slot(databases.source_dsn, f"slot_{name}")
    settings = make_settings(stack, [source_for(name, databases.name, stack.source_pg_port)])
    run = run_monitors(build_monitors(settings, connectors=False))
    m = run.scrape
    m.wait_for("cdc_monitor_up", lambda v: v == 1, monitor="slot", source=name)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (f"cdc-pipeline monitor {name}",),
        ).fetchone()
    assert killed is not None and killed[0] == 1
    m.wait_for("cdc_monitor_poll_errors_total", lambda v: v >= 1, monitor="slot", source=name, check="slot")
    insert_rows(databases.source_dsn, 100)
    m.wait_for("cdc_monitor_up", lambda v: v == 1, monitor="slot", source=name)
    m.wait_for("cdc_replication_slot_exists", lambda v: v == 1, source=name, slot=f"slot_{name}")


def test_unreachable_source_never_kills_the_thread(
    local_stack: LocalStack, unique: Callable[[str], str], run_monitors: Callable[..., Running]
) -> None:
    """Connection refused: up = 0, errors counted, thread alive, /readyz not ready."""
    name = unique("gone")
    settings = make_settings(local_stack.settings, [source_for(name, "postgres", free_port())])
    run = run_monitors(build_monitors(settings, connectors=False))
    run.scrape.wait_for("cdc_monitor_poll_errors_total", lambda v: v >= 2, monitor="slot", source=name, check="slot")
    assert run.scrape.value("cdc_monitor_up", monitor="slot", source=name) == 0
    slot_monitor = run.group.slot_monitors[0]
    assert slot_monitor.running
    resp = httpx.get(f"http://127.0.0.1:{run.health.port}/readyz", timeout=5)
    assert resp.status_code == 503


# --------------------------------------------------------------------------- max_slot_wal_keep_size


@pytest.fixture
def private_cluster(local_stack: LocalStack, tmp_path: Path) -> Iterator[tuple[LocalStackSettings, str]]:
    """A throwaway PostgreSQL cluster (the stack's settings, another port and state folder)."""
    settings = LocalStackSettings(
        state_dir=tmp_path / "stack",
        source_pg_port=free_port(),
        target_pg_port=local_stack.settings.target_pg_port,
        kafka_port=local_stack.settings.kafka_port,
        connect_port=local_stack.settings.connect_port,
    )
    cluster = PostgresCluster("source", settings)
    cluster.start()
    try:
        yield settings, settings.pg_dsn("source")
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # the per-state folder under /var/tmp when tmp_path is private
            cluster.root.parent.rmdir()


def switch_segments(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            conn.execute("INSERT INTO items (payload) VALUES (%s)", (f"switch {i}",))
            conn.execute("SELECT pg_switch_wal()")


def test_small_max_slot_wal_keep_size_drives_wal_status_to_unreserved_then_lost(
    private_cluster: tuple[LocalStackSettings, str], unique: Callable[[str], str], run_monitors: Callable[..., Running]
) -> None:
    """max_slot_wal_keep_size = 64MB and a slot nobody consumes: while WAL is written the time
    to loss is finite; WAL switches make the slot unreserved, a checkpoint makes it lost; the
    metrics and `lag` show it."""
    stack, dsn = private_cluster
    name = unique("keep")
    slot = f"slot_{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        create_items_and_slot(dsn, slot)
        settings = make_settings(stack, [source_for(name, "postgres", stack.source_pg_port)])
        run = run_monitors(build_monitors(settings, connectors=False))
        m = run.scrape
        src = {"source": name, "slot": slot}
        m.wait_for("cdc_source_slot_wal_unlimited", lambda v: v == 0, source=name)

        # Steady writes: a rate, a finite safe size and a finite time to loss.
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                insert_rows(dsn, 200)
                time.sleep(0.05)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            until_lost = m.wait_within(30, "cdc_replication_slot_seconds_until_lost", lambda v: 0 < v < math.inf, **src)
            safe = m.value("cdc_replication_slot_safe_wal_size_bytes", **src)
        finally:
            stop.set()
            thread.join(10)
        assert safe is not None and 0 < safe <= 64 * 1024 * 1024 + 16 * 1024 * 1024
        assert until_lost > 0
        assert m.value("cdc_replication_slot_wal_status", status="reserved", **src) == 1

        # WAL switches beyond the limit: unreserved (or lost already, if a checkpoint ran).
        switch_segments(dsn, 8)
        m.wait_for(
            "cdc_replication_slot_wal_status",
            lambda v: v == 1,
            **src,
            status=_status_now(dsn, slot),
        )
        at_risk = {
            s: m.value("cdc_replication_slot_wal_status", status=s, **src) for s in ("unreserved", "lost", "reserved")
        }
        assert at_risk["reserved"] == 0
        assert at_risk["unreserved"] == 1 or at_risk["lost"] == 1, at_risk
        assert m.value("cdc_replication_slot_seconds_until_lost", **src) == 0

        # A checkpoint removes the segments: lost.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        m.wait_for("cdc_replication_slot_wal_status", lambda v: v == 1, status="lost", **src)
        assert m.value("cdc_replication_slot_wal_status", status="unreserved", **src) == 0
        assert m.value("cdc_replication_slot_safe_wal_size_bytes", **src) == 0
        assert m.value("cdc_replication_slot_seconds_until_lost", **src) == 0
        assert m.value("cdc_replication_slot_exists", **src) == 1

        # `lag` shows it too.
        report = lag_cmd.collect(settings, rate_sample_s=0.2)
        (line,) = report.slots
        assert line.report is not None and line.report.wal_status == "lost"
        assert line.to_dict()["wal_status"] == "lost"
        assert "lost" in lag_cmd.render(report)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def _status_now(dsn: str, slot: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    assert row is not None
    return str(row[0])


# --------------------------------------------------------------------------- lag command: consumer lag


def test_lag_reports_consumer_lag_from_target_offsets_then_kafka(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    """Lag per partition = high watermark - next offset; the target's stored offsets win,
    Kafka's committed offsets are the fallback when the target is unreachable."""
    stack = local_stack.settings
    name = unique("lag")
    prefix = name
    topic = f"{prefix}.public.items"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for i in range(10):
        producer.produce(topic, value=b"x", key=str(i).encode(), partition=0)
    for i in range(5):
        producer.produce(topic, value=b"y", key=str(i).encode(), partition=1)
    assert producer.flush(30) == 0
    group = f"cdc.p_{name}"
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        for stmt in control_ddl("cdc_control"):
            conn.execute(stmt)
        conn.execute(
            "INSERT INTO cdc_control.offsets (consumer_group, topic, kafka_partition, next_offset)"
            " VALUES (%s, %s, 0, 4)",
            (group, topic),
        )
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    finally:
        consumer.close()
    src = source_for(name, databases.name, stack.source_pg_port, topic_prefix=prefix)
    try:
        good = make_settings(
            stack, [src], [{"name": f"p_{name}", "source": name, "target": {"url": databases.target_dsn}}]
        )
        lines, errors = lag_cmd.collect_consumer_lag(good, good.pipelines)
        assert errors == []
        by_part = {(p.topic, p.partition): p for p in lines}
        assert set(by_part) == {(topic, 0), (topic, 1)}
        assert (by_part[(topic, 0)].lag, by_part[(topic, 0)].offsets_from) == (6, "target")
        assert (by_part[(topic, 0)].kafka_offset, by_part[(topic, 0)].high) == (7, 10)
        assert (by_part[(topic, 1)].lag, by_part[(topic, 1)].offsets_from) == (5, "none")

        dead_target = f"postgresql://postgres:postgres@127.0.0.1:{free_port()}/x"
        bad = make_settings(stack, [src], [{"name": f"p_{name}", "source": name, "target": {"url": dead_target}}])
        lines, errors = lag_cmd.collect_consumer_lag(bad, bad.pipelines)
        by_part = {(p.topic, p.partition): p for p in lines}
        assert (by_part[(topic, 0)].lag, by_part[(topic, 0)].offsets_from) == (3, "kafka")
        assert any("target offsets unreadable" in e for e in errors)
        assert "postgres:postgres" not in " ".join(errors)

        report = lag_cmd.LagReport(partitions=lines)
        text = lag_cmd.render(report)
        assert topic in text and "kafka" in text
    finally:
        admin.delete_topics([topic])


# --------------------------------------------------------------------------- monitor command


def test_monitor_command_serves_metrics_until_stopped(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]
) -> None:
    """run_control: endpoints up, the lease taken, slot metrics served, returns 0 when the stop event is set."""
    stack = local_stack.settings
    name = unique("cmd")
    create_items_and_slot(databases.source_dsn, f"slot_{name}")
    port = free_port()
    settings = make_settings(stack, [source_for(name, databases.name, stack.source_pg_port)]).model_copy(
        update={"metrics": Settings().metrics.model_copy(update={"host": "127.0.0.1", "port": port})}
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_control(settings, stop=stop)), daemon=True)
    thread.start()
    try:
        scrape = Scraper(port)
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape.wait_for("cdc_replication_slot_exists", lambda v: v == 1, source=name, slot=f"slot_{name}")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).text
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert result == [0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
