"""Acceptance of issue 21, "Verification under load": with pgbench at 500 tx/s (4 clients) on scale
10 replicated by a real pipeline, ``cdc-pipeline verify`` concludes MATCH within 5 minutes; after
one target row is corrupted under the same load it concludes MISMATCH naming that row's key and
column (docs/design-notes.md, "Verification that concludes under load").

The corrupted row is one pgbench never updates (``aid`` above the scale's 1,000,000 accounts,
inserted before the load): a row the workload updates would be rewritten by the pipeline with the
source's image, which heals the corruption before any verifier looks (correctly so).
"""

from __future__ import annotations

import os
import subprocess
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
    code, doc, _ = run_verify(p.config_path)
    return code, doc, time.monotonic() - t0


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
