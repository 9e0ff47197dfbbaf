"""Acceptance of issue 21, "Verification under load": with pgbench at 500 tx/s (4 clients) on scale
10 replicated by a real pipeline, ``cdc-pipeline verify`` concludes MATCH within 5 minutes; after
one target row is corrupted under the same load it concludes MISMATCH naming that row's key and
column (docs/design-notes.md, "Verification that concludes under load"). And the reported case:
a 2,500-row table taking ~20 writes/s, where every run ended ``in_flight``.

The corrupted row is one pgbench never updates (``aid`` above the scale's 1,000,000 accounts,
inserted before the load): a row the workload updates would be rewritten by the pipeline with the
source's image, which heals the corruption before any verifier looks (correctly so).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipeline.localstack import LocalStack
from pipeline.localstack.services import pg_bindir
from tests.conftest import Databases
from tests.e2e.conftest import E2EPipeline
from tests.e2e.helpers_snapshot import run_verify

pytestmark = pytest.mark.timeout(1800)

SCALE = 10
ACCOUNTS = 100_000 * SCALE
RATE, CLIENTS = 500, 4
UNTOUCHED_AID = ACCOUNTS + 1
TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"]
VERIFY_BOUND_S = 300.0


def _pgbench(stack: LocalStack, databases: Databases, *args: str) -> list[str]:
    s = stack.settings
    return [
        str(pg_bindir() / "pgbench"),
        "-h",
        s.host,
        "-p",
        str(s.source_pg_port),
        "-U",
        "postgres",
        *args,
        databases.name,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": "postgres"}


@contextmanager
def _load(stack: LocalStack, databases: Databases, seconds: int) -> Iterator[subprocess.Popen[str]]:
    """pgbench at RATE tx/s with CLIENTS clients in the background; stopped on exit."""
    argv = _pgbench(stack, databases, "-R", str(RATE), "-c", str(CLIENTS), "-j", "2", "-T", str(seconds), "-P", "10")
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=60)
        print(out[-2000:])


def _count(dsn: str, table: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            schema, _, name = table.partition(".")
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    assert row is not None
    return int(row[0])


def _wait_snapshot(p: E2EPipeline, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while _count(p.target_dsn, "public.pgbench_accounts") < ACCOUNTS + 1:
        assert time.monotonic() < deadline, "the initial snapshot did not reach the target"
        time.sleep(5)


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["table"] == name)


def _timed_verify(p: E2EPipeline) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    code, doc, log = run_verify(p.config_path)
    took = time.monotonic() - t0
    for line in log.splitlines():  # how the rechecks went (docs/design-notes.md)
        if any(event in line for event in ("verify_narrowed", "verify_round", "verify_hot_keys", "verify_lock")):
            print(line)
    return code, doc, took


def test_verify_concludes_under_pgbench_load(e2e, local_stack: LocalStack, databases: Databases) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(_pgbench(local_stack, databases, "-i", "-s", str(SCALE), "-q"), env=_env(), check=True)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        conn.execute(
            "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (%s, 1, 0, '')", (UNTOUCHED_AID,)
        )
    p: E2EPipeline = e2e([], TABLES, pipeline={"batch": {"max_wait_ms": 100}})
    p.wait_assigned(p.start_worker())
    _wait_snapshot(p)
    with _load(local_stack, databases, 900) as bench:
        time.sleep(20)  # the load is on and the pipeline keeps up with it
        assert bench.poll() is None
        code, doc, took = _timed_verify(p)
        print(f"verify under load: exit {code} after {took:.1f} s")
        for t in doc["tables"]:
            print(t["table"], t["status"], t["rows_source"], t["rows_target"], t["reason"])
        assert code == 0, doc
        assert all(t["status"] == "match" for t in doc["tables"]), doc
        assert took < VERIFY_BOUND_S

        with psycopg.connect(p.target_dsn, autocommit=True) as conn:
            hit = conn.execute(
                "UPDATE public.pgbench_accounts SET abalance = 424242 WHERE aid = %s", (UNTOUCHED_AID,)
            ).rowcount
        assert hit == 1
        code, doc, took = _timed_verify(p)
        print(f"verify after corrupting aid={UNTOUCHED_AID}: exit {code} after {took:.1f} s")
        assert bench.poll() is None, "pgbench stopped before the second verification ended"
    accounts = _table(doc, "public.pgbench_accounts")
    assert code == 1
    assert accounts["status"] == "mismatch", accounts
    rows = [r for c in accounts["mismatched_chunks"] for r in c["rows"]]
    print("mismatched rows:", rows)
    assert rows == [
        {
            "key": {"aid": str(UNTOUCHED_AID)},
            "columns": {"abalance": {"source": "0", "target": "424242"}},
            "source_rows": 1,
            "target_rows": 1,
            "row": None,
            "state": "mismatch",
        }
    ]
    others = [t for t in doc["tables"] if t["table"] != "public.pgbench_accounts"]
    assert all(t["status"] == "match" for t in others), others
    assert took < VERIFY_BOUND_S


@contextmanager
def _writer(dsn: str, per_s: float, rows: int) -> Iterator[list[int]]:
    """Update a random row of public.items ``per_s`` times a second in the background; yields the
    list of writes done (its length), checked afterwards."""
    done: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.wait(1 / per_s):
                conn.execute("UPDATE public.items SET qty = qty + 1 WHERE id = %s", (random.randint(1, rows),))
                done.append(1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(10)


def test_verify_concludes_on_a_small_table_under_steady_writes(e2e) -> None:  # type: ignore[no-untyped-def]
    """The case of the issue: 2,500 rows, ~20 writes/s; every run used to end in flight."""
    ddl = [
        "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)",
        "INSERT INTO public.items SELECT g, 'item ' || g, 0 FROM generate_series(1, 2500) g",
    ]
    p: E2EPipeline = e2e(ddl, ["public.items"])
    p.wait_assigned(p.start_worker())
    p.wait_converged(timeout=180)
    with _writer(p.source_dsn, 20, 2000) as writes:  # rows 2001..2500 stay as they are
        time.sleep(5)
        code, doc, took = _timed_verify(p)
        print(f"verify under ~20 writes/s: exit {code} after {took:.1f} s, {len(writes)} writes so far")
        assert code == 0, doc
        assert doc["tables"][0]["status"] == "match"
        with psycopg.connect(p.target_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET name = 'corrupted' WHERE id = 2400")
        code, doc, took = _timed_verify(p)
        print(f"verify after corrupting id=2400: exit {code} after {took:.1f} s")
    assert len(writes) > 100
    (table,) = doc["tables"]
    assert code == 1 and table["status"] == "mismatch", table
    rows = [r for c in table["mismatched_chunks"] for r in c["rows"]]
    assert [(r["key"], r["columns"]) for r in rows] == [
        ({"id": "2400"}, {"name": {"source": "item 2400", "target": "corrupted"}})
    ]
