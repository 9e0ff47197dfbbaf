"""Fault scenarios (issue 11): each runs the workload (inserts, updates, deletes, primary-key
changes, and a keyless REPLICA IDENTITY FULL table), injects one fault, lets the system
recover and ends with :func:`check_outcome`: verify matches every table (counts + checksums),
the keyless table has no duplicate or missing copy, and the DLQ holds exactly the injected
poison messages. Figures are printed as ``[faults] ...`` lines (``pytest -s``)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from pipeline.localstack import LocalStack, procs
from pipeline.localstack.services import Service
from sinks.postgres.sink import PostgresSink
from tests.conftest import wait_connector_running
from tests.e2e.conftest import E2EPipeline
from tests.e2e.workload import DDL, TABLES
from tests.faults.conftest import FaultWorkload, Profile, check_outcome, report, wait_ready

pytestmark = pytest.mark.timeout(900)

BATCH = {"max_messages": 200, "max_wait_ms": 300}


def _settle(p: E2EPipeline) -> None:
    """Wait until the first worker has applied the seed rows (``public.history`` starts empty,
    so its target table only exists once the workload wrote to it)."""
    p.wait_converged(timeout=180, tables=["public.items"])


def _connector_running(stack: LocalStack, p: E2EPipeline, timeout_s: float = 180) -> None:
    wait_connector_running(stack.settings.connect_url, p.settings.sources[0].resolved_connector_name, timeout_s)


def _bring_back(stack: LocalStack, p: E2EPipeline, service: Service) -> float:
    """Start ``service`` (Connect or the broker) again and wait until it is ready and the
    pipeline's connector runs; returns the seconds that took."""
    t0 = time.monotonic()
    service.start()
    wait_ready(service)
    _connector_running(stack, p)
    return time.monotonic() - t0


def _wait_exit(p: E2EPipeline, proc, timeout: float) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"worker still running after {timeout}s:\n{p.worker_logs()}"
        time.sleep(0.5)
    return int(proc.returncode)


def test_worker_kill9_at_random_points(e2e, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1101)
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        for _ in range(profile.kills):
            worker = p.start_worker()
            p.wait_assigned(worker, timeout=120)
            time.sleep(rng.uniform(0.2, profile.load_s))  # batches in flight at a random point
            p.kill_worker(worker)
        p.start_worker()
        time.sleep(profile.load_s)
    t0 = time.monotonic()
    out = check_outcome(p)
    report("worker kill -9", kills=profile.kills, txns=load.transactions, rows=out.rows,
           recovery_s=round(time.monotonic() - t0, 1))  # fmt: skip
    assert load.transactions > 50


def test_connect_worker_kill9(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    p.start_worker()
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s)
        assert local_stack.connect.kill()
        time.sleep(2)  # writes go on while Debezium is down
        back = _bring_back(local_stack, p, local_stack.connect)
        time.sleep(profile.load_s)
    t1 = time.monotonic()
    out = check_outcome(p)
    report("connect kill -9", txns=load.transactions, rows=out.rows, connect_back_s=round(back, 1),
           recovery_s=round(time.monotonic() - t1, 1))  # fmt: skip


def test_kafka_broker_restart(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    worker = p.start_worker()
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s)
        assert local_stack.kafka.stop()
        time.sleep(3)
        back = _bring_back(local_stack, p, local_stack.kafka)
        time.sleep(profile.load_s)
    t1 = time.monotonic()
    out = check_outcome(p)
    assert worker.poll() is None, "the worker must ride out a broker restart"
    report("kafka restart", txns=load.transactions, rows=out.rows, broker_back_s=round(back, 1),
           recovery_s=round(time.monotonic() - t1, 1))  # fmt: skip


def test_target_fast_shutdown_mid_batch(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    worker = p.start_worker()
    _settle(p)
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s)  # batches are being applied
        assert local_stack.target.stop()  # pg_ctl stop -m fast: in-flight transactions abort
        p.wait_log("transient failure, retrying", timeout=60)
        time.sleep(2)
        t0 = time.monotonic()
        local_stack.target.start()
        wait_ready(local_stack.target)
        time.sleep(profile.load_s)
    out = check_outcome(p)
    assert worker.poll() is None, "the worker retries a target restart, it does not exit"
    report("target pg_ctl stop -m fast + start", txns=load.transactions, rows=out.rows,
           recovery_s=round(time.monotonic() - t0, 1))  # fmt: skip


def _cluster_pids(data: Path) -> list[int]:
    """The postmaster of ``data`` and its children (backends, walwriter, ...)."""
    postmaster = procs.read_pid(data / "postmaster.pid")
    assert postmaster is not None and procs.is_ours(postmaster, str(data))
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def test_target_frozen_longer_than_retry_budget(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    """Expected: the blocked transaction is cut by the sink's stall guard, retries run out of
    ``retry.max_elapsed_s`` and the worker exits 1 WITHOUT committing; after SIGCONT a restarted
    worker resumes from the offsets stored in the target and nothing is lost."""
    p: E2EPipeline = e2e(
        DDL,
        TABLES,
        pipeline={"batch": BATCH, "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 1, "max_elapsed_s": 5}},
    )
    worker = p.start_worker()
    _settle(p)
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s)
        pids = _cluster_pids(local_stack.target.data)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        time.sleep(2)  # the source keeps changing while the target is frozen
    try:
        code = _wait_exit(p, worker, timeout=400)
        stopped_after = time.monotonic() - t0
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert code == 1, p.worker_logs()
    assert "retry.max_elapsed_s" in p.worker_logs()
    wait_ready(local_stack.target)
    t1 = time.monotonic()
    p.start_worker()  # the supervisor's (or operator's) restart
    out = check_outcome(p)
    report("target SIGSTOP > retry budget", txns=load.transactions, rows=out.rows,
           worker_stopped_after_s=round(stopped_after, 1), recovery_s=round(time.monotonic() - t1, 1))  # fmt: skip


def test_source_restart(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    slot = p.settings.sources[0].resolved_slot_name
    p.start_worker()
    _settle(p)

    def slot_lsn() -> int:
        with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
        assert row is not None, f"replication slot {slot} is gone"
        return int(row[0])

    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s)
        before = slot_lsn()
        assert local_stack.source.stop()
        time.sleep(2)
        t0 = time.monotonic()
        local_stack.source.start()
        wait_ready(local_stack.source)
        _connector_running(local_stack, p)
        time.sleep(profile.load_s)
    out = check_outcome(p)
    assert slot_lsn() >= before, "the slot kept (and advanced) its position"
    assert load.reconnects > 0
    report("source restart", txns=load.transactions, rows=out.rows, recovery_s=round(time.monotonic() - t0, 1))


def test_consumer_group_rebalance_2_3_1(e2e, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH}, source={"topic_partitions": 3})
    first = [p.start_worker(), p.start_worker()]
    for w in first:
        p.wait_assigned(w, timeout=120)
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.rebalance_hold_s)
        third = p.start_worker()
        p.wait_assigned(third, timeout=120)
        time.sleep(profile.rebalance_hold_s)
        for w in first:  # 3 -> 1: graceful stops, the last worker takes every partition
            assert p.stop_worker(w) == 0, p.worker_logs()
        time.sleep(profile.rebalance_hold_s)
    t0 = time.monotonic()
    out = check_outcome(p)
    assert third.poll() is None
    report("rebalance 2->3->1", txns=load.transactions, rows=out.rows, recovery_s=round(time.monotonic() - t0, 1))


POISON = [
    b"not json at all",
    b'{"schema": {"type": "struct"}, "payload": {"op": "c", "after": {"id": ',  # truncated
    b'{"hello": "world"}',  # JSON, not a Debezium envelope
    b"[1, 2, 3]",
    b'{"payload": {"op": "u", "before": null, "after": "oops", "source": {"lsn": "x"}}}',
    b"\xff\xfe\x00binary",
]


def test_poison_messages_go_to_the_dlq(e2e, local_stack: LocalStack, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    worker = p.start_worker()
    _settle(p)
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.public.items"
    producer = Producer({"bootstrap.servers": local_stack.settings.bootstrap_servers})
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        time.sleep(profile.load_s / 2)
        for i, value in enumerate(POISON):
            producer.produce(topic, value=value, key=b'{"id": %d}' % i)
        assert producer.flush(30) == 0
        time.sleep(profile.load_s / 2)
    t0 = time.monotonic()
    out = check_outcome(p, expected_dead=POISON)
    assert worker.poll() is None, "poison never stops the worker"
    assert all(h["cdc.original.topic"] == topic for _, h in out.dead_letters)
    report("poison messages", injected=len(POISON), dlq=len(out.dead_letters), txns=load.transactions,
           rows=out.rows, recovery_s=round(time.monotonic() - t0, 1))  # fmt: skip


def test_target_column_dropped_by_hand_halts_then_rebuild(e2e, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    """Documented behaviour: the worker stops with a clear TargetSchemaError (no DLQ, nothing
    committed) instead of re-creating the column empty; the operator restores the column,
    empties the table and replays the group from Kafka (offsets reset); nothing is lost."""
    p: E2EPipeline = e2e(DDL, TABLES, pipeline={"batch": BATCH})
    worker = p.start_worker()
    _settle(p)
    with FaultWorkload(p.source_dsn, profile.clients) as load:
        with psycopg.connect(p.target_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE public.items DROP COLUMN qty")
        code = _wait_exit(p, worker, timeout=180)
        time.sleep(profile.load_s)
    assert code != 0
    logs = p.worker_logs()
    assert "TargetSchemaError" in logs and "qty" in logs, logs
    t0 = time.monotonic()
    with psycopg.connect(p.target_dsn, autocommit=True) as conn:  # the operator's rebuild
        conn.execute("ALTER TABLE public.items ADD COLUMN qty integer")
        conn.execute("TRUNCATE public.items")
    sink = PostgresSink(p.target_dsn)
    try:
        assert sink.reset_offsets(p.settings.pipelines[0].resolved_consumer_group) > 0
    finally:
        sink.close()
    p.start_worker()
    out = check_outcome(p)
    report("target column dropped", txns=load.transactions, rows=out.rows, recovery_s=round(time.monotonic() - t0, 1))
