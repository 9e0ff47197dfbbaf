"""Crash acceptance (issue 4): kill -9 of a worker mid-batch and of the Kafka Connect worker
under load; afterwards the target equals the source and the keyless table has no duplicates."""

from __future__ import annotations

import time

from pipeline.localstack import LocalStack
from tests.e2e.conftest import table_rows
from tests.e2e.workload import DDL, TABLES, Workload


def test_worker_killed_mid_batch_repeatedly(e2e) -> None:  # type: ignore[no-untyped-def]
    p = e2e(DDL, TABLES, pipeline={"batch": {"max_messages": 200, "max_wait_ms": 300}})
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
    p.wait_converged(timeout=180)
    history = table_rows(p.source_dsn, "public.history")
    assert len(table_rows(p.target_dsn, "public.history", ["item", "delta", "at"])) == len(history)


def test_connect_worker_killed_during_load(e2e, local_stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    p = e2e(DDL, TABLES)
    p.start_worker()
    load = Workload(p.source_dsn).start()
    try:
        time.sleep(4)
        assert local_stack.connect.kill()
        time.sleep(2)  # writes go on while Debezium is down
        local_stack.connect.start()
        deadline = time.monotonic() + 120
        while not local_stack.connect.health().ready:
            assert time.monotonic() < deadline, "Connect did not come back"
            time.sleep(0.5)
        time.sleep(4)  # Debezium resumes from its last flushed offset and replays
    finally:
        load.stop()
    assert load.transactions > 100
    p.wait_converged(timeout=240)
