"""Hand-over from the bulk load to Debezium streaming, end to end (PostgreSQL -> bulk COPY, then
Debezium with snapshot.mode=no_data on the load's slot -> Kafka -> a worker -> the target).

Changes are committed at each boundary: by a transaction the slot creation has to wait for (it
commits while CREATE_REPLICATION_SLOT waits: it belongs to the snapshot), during the copy (after
the first chunk is in the target: both in copied and in not yet copied ranges), after the copy
before the connector exists, and after it streams. The target must equal the source afterwards:
no change missing (a gap) and none applied twice (an overlap would duplicate keyless rows)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.localstack import LocalStack
from tests.conftest import Databases
from tests.e2e.conftest import table_rows
from tests.integration.bulk_env import bulk_config

DDL = [
    "CREATE TABLE public.acc (id int PRIMARY KEY, bal int NOT NULL, note text)",
    "INSERT INTO public.acc SELECT g, g, 'n' || g FROM generate_series(1, 20000) g",
    "CREATE TABLE public.hist (kind text, n int)",
    "ALTER TABLE public.hist REPLICA IDENTITY FULL",
    "INSERT INTO public.hist SELECT 'k' || (g % 5), g % 3 FROM generate_series(1, 3000) g",
    "ANALYZE",
]
TABLES = ["public.acc", "public.hist"]


class _During:
    """LoadProgress that commits source changes once, after the first chunk is in the target."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.done = False
        self.lock = threading.Lock()

    def planned(self, pipeline: str, table: str, estimated_rows: int) -> None:
        pass

    def copied(self, pipeline: str, table: str, rows: int) -> None:
        with self.lock:
            if self.done or table != "public.acc":
                return
            self.done = True
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.acc SET bal = bal + 1000000 WHERE id IN (2, 3, 19990, 19991)")
            conn.execute("DELETE FROM public.acc WHERE id IN (4, 19992)")
            conn.execute("INSERT INTO public.acc VALUES (30001, 1, 'during')")
            conn.execute("DELETE FROM public.hist WHERE ctid = (SELECT min(ctid) FROM public.hist WHERE kind = 'k1')")
            conn.execute("INSERT INTO public.hist VALUES ('k1', 1), ('during', 9)")

    def table_done(self, pipeline: str, table: str, rows: int, seconds: float) -> None:
        pass


def _commit_while_slot_waits(dsn: str, started: threading.Event, errors: list[BaseException]) -> None:
    """Write in a transaction, wait until the exporter's CREATE_REPLICATION_SLOT waits, commit."""
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("UPDATE public.acc SET bal = -1, note = 'before' WHERE id <= 50")
            conn.execute("INSERT INTO public.hist VALUES ('before', 1), ('before', 1)")
            started.set()
            deadline = time.monotonic() + 60
            with psycopg.connect(dsn, autocommit=True) as watch:
                while time.monotonic() < deadline:
                    row = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                        " 'cdc-pipeline bulk load exporter' AND query LIKE 'CREATE_REPLICATION_SLOT%%'"
                    ).fetchone()
                    if row and row[0]:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("the exporter never started CREATE_REPLICATION_SLOT")
            time.sleep(0.3)
            conn.commit()
    except BaseException as exc:
        errors.append(exc)
        started.set()


@pytest.fixture
def connect_client(local_stack: LocalStack) -> Iterator[ConnectClient]:
    from pipeline.core.settings.models import ConnectSettings  # noqa: PLC0415

    with ConnectClient(ConnectSettings(url=local_stack.settings.connect_url)) as client:
        yield client


def test_no_gap_no_overlap(
    local_stack: LocalStack,
    databases: Databases,
    unique: Callable[[str], str],
    tmp_path: Path,
    connect_client: ConnectClient,
) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        for statement in DDL:
            conn.execute(statement)
    name = unique("bh")
    path, settings = bulk_config(local_stack, databases, name, TABLES, tmp_path, bulk_load={"jobs": 1})
    source = settings.sources[0]
    connector = source.resolved_connector_name
    config = build_connector_config(source)
    assert config["snapshot.mode"] == "no_data"
    assert config["slot.name"] == source.resolved_slot_name

    def register() -> None:
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:  # after the copy, before streaming
            conn.execute("UPDATE public.acc SET note = 'after-copy' WHERE id IN (1, 10000, 20000)")
            conn.execute("INSERT INTO public.hist VALUES ('after', 2)")
        connect_client.apply(connector, config)

    started = threading.Event()
    errors: list[BaseException] = []
    writer = threading.Thread(target=_commit_while_slot_waits, args=(databases.source_dsn, started, errors))
    writer.start()
    assert started.wait(30)
    during = _During(databases.source_dsn)
    worker: subprocess.Popen[bytes] | None = None
    try:
        report = run_bulk_load(settings, source, progress=during, register=register)
        writer.join(60)
        assert not errors, errors
        assert during.done
        assert report.tables
        status = connect_client.wait_for(connector, lambda st: st.healthy, timeout_s=90)
        assert status.healthy, status
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:  # while streaming
            conn.execute("UPDATE public.acc SET bal = 7 WHERE id BETWEEN 100 AND 110")
            conn.execute(
                "DELETE FROM public.hist WHERE ctid = (SELECT min(ctid) FROM public.hist WHERE kind = 'before')"
            )
            conn.execute("INSERT INTO public.acc VALUES (30002, 2, 'streamed')")
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 120
        diff = ""
        while time.monotonic() < deadline:
            diff = ""
            for table in TABLES:
                src, tgt = table_rows(databases.source_dsn, table), table_rows(databases.target_dsn, table)
                if src != tgt:
                    diff = f"{table}: source {len(src)} rows, target {len(tgt)}"
                    break
            if not diff:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(1)
        assert not diff, diff + "\n" + (tmp_path / "worker.log").read_text()[-4000:]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(30)
        connect_client.delete(connector)
    with psycopg.connect(databases.target_dsn) as conn:
        before = conn.execute("SELECT count(*) FROM public.acc WHERE note = 'before'").fetchone()
        during_rows = conn.execute("SELECT count(*) FROM public.hist WHERE kind = 'during'").fetchone()
    assert before == (48,)  # 50 written before the slot; id 1 re-noted after the copy, id 4 deleted during it
    assert during_rows == (1,)
