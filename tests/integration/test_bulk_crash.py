"""A loader killed with SIGKILL mid-table (CDC_BULK_PAUSE_AFTER_ROWS holds it there), then run
again: the interrupted load is cleaned up (old slot dropped, partial tables truncated) and redone
from a new exported snapshot; the target equals the source, nothing is duplicated, and the only
slot left is the new one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from pipeline.control.bulkload.run import PAUSE_ENV, run_bulk_load
from pipeline.localstack import LocalStack
from tests.conftest import Databases
from tests.integration.bulk_env import bulk_config, load_state, slots_of

LOADER = (
    "import sys\n"
    "from pipeline.core.settings.loading import load_settings\n"
    "from pipeline.control.bulkload.run import run_bulk_load\n"
    "s = load_settings(sys.argv[1], {})\n"
    "run_bulk_load(s, s.sources[0], jobs=1, register=lambda: None)\n"
)


def _count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def _slot_lsn(db: Databases, slot: str) -> int:
    return _count(
        db.source_dsn,
        f"SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'",
    )


def test_kill_mid_table_then_run_again(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.big (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO public.big SELECT g, repeat('x', 50) || g FROM generate_series(1, 20000) g")
        conn.execute("CREATE TABLE public.bag (v int)")
        conn.execute("ALTER TABLE public.bag REPLICA IDENTITY FULL")
        conn.execute("INSERT INTO public.bag SELECT g % 10 FROM generate_series(1, 5000) g")
        conn.execute("ANALYZE")
    name = unique("bc")
    slot = f"cdc_{name}"
    path, settings = bulk_config(local_stack, databases, name, ["public.big", "public.bag"], tmp_path)
    log = (tmp_path / "loader.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", LOADER, str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, PAUSE_ENV: "2500"},
    )
    try:
        deadline = time.monotonic() + 60
        while _count(databases.target_dsn, "SELECT count(*) FROM public.big") < 2500:
            assert proc.poll() is None, (tmp_path / "loader.log").read_text()
            assert time.monotonic() < deadline, "the loader copied nothing in 60 s"
            time.sleep(0.2)
        time.sleep(0.5)  # paused by the hook now
        partial = _count(databases.target_dsn, "SELECT count(*) FROM public.big")
        assert 2500 <= partial < 20000, "the kill must come mid-table"
        old_lsn = _slot_lsn(databases, slot)
        assert old_lsn > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    state = load_state(databases, f"p_{name}")
    assert state is not None
    assert state["status"] == "copying"
    assert slots_of(databases) == [slot]

    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:  # committed between the two loads
        conn.execute("UPDATE public.big SET v = 'changed' WHERE id <= 10")
        conn.execute("INSERT INTO public.bag VALUES (42)")
    calls: list[str] = []
    report = run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    assert report.recovered
    assert calls == ["register"]
    assert slots_of(databases) == [slot]
    new_lsn = _slot_lsn(databases, slot)
    assert new_lsn == report.consistent_lsn
    assert new_lsn > old_lsn  # a new slot, not the old one
    with psycopg.connect(databases.source_dsn) as s, psycopg.connect(databases.target_dsn) as t:
        assert sorted(s.execute("SELECT id, v FROM public.big").fetchall()) == sorted(
            t.execute("SELECT id, v FROM public.big").fetchall()
        )
        assert sorted(s.execute("SELECT v FROM public.bag").fetchall()) == sorted(
            t.execute("SELECT v FROM public.bag").fetchall()
        )
        lsns = t.execute("SELECT DISTINCT __cdc_lsn FROM public.big UNION SELECT __cdc_lsn FROM public.bag").fetchall()
    assert lsns == [(report.consistent_lsn,)]  # nothing left of the killed load
    done = load_state(databases, f"p_{name}")
    assert done is not None
    assert done["status"] == "done"
