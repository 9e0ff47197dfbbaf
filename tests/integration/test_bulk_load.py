"""The bulk initial load on the real stack (no Kafka needed): transforms compiled to SQL, a keyless
table with duplicate rows, routing, the rows path for a rule SQL cannot express, the stored state,
a second run that only registers, and the refusal of non-empty target tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pipeline.control.bulkload.model import BulkLoadError, LoadReport
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.core.settings.root import Settings
from pipeline.localstack import LocalStack
from pipeline.transform.masking import mask_value
from tests.conftest import Databases
from tests.integration.bulk_env import bulk_config, load_state, slots_of

SALT = "bulk-salt"
DDL = [
    "CREATE TABLE public.users (id int PRIMARY KEY, email text, code char(6), amount numeric(10,2), state text,"
    " note varchar(20), u uuid)",
    "INSERT INTO public.users SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'user' || g || E'@x\\ttab\\\\' END,"
    " 'c' || (g % 13), g / 4.0, CASE WHEN g % 5 = 0 THEN 'draft' ELSE 'live' END, 'n' || g,"
    " md5(g::text)::uuid FROM generate_series(1, 6000) g",
    "CREATE TABLE public.events (kind text, n int)",
    "ALTER TABLE public.events REPLICA IDENTITY FULL",
    "INSERT INTO public.events SELECT 'k' || (g % 3), g % 4 FROM generate_series(1, 3000) g",
    "INSERT INTO public.events VALUES ('dup', 1), ('dup', 1), ('dup', 1)",
    "CREATE TABLE public.extra (id int PRIMARY KEY, v text)",
    "INSERT INTO public.extra SELECT g, 'v' || g FROM generate_series(1, 50) g",
    "ANALYZE",
]
RULES = [
    {"match": "public.users", "mask": {"email": "hash", "code": "hash", "u": "hash", "note": "null"}},
    {"match": "public.users", "where": "state != 'draft'", "rename": {"state": "status"}},
    {"match": "public.events", "route": "archive.{table}_all"},
    {"match": "public.extra", "add_columns": {"origin": "bulk"}},
]
Loaded = tuple[str, Settings, LoadReport, list[str]]


@pytest.fixture
def loaded(local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path) -> Loaded:
    """The three tables loaded once: ``(source name, settings, report, register calls)``."""
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        for statement in DDL:
            conn.execute(statement)
    name = unique("bl")
    _, settings = bulk_config(
        local_stack,
        databases,
        name,
        ["public.users", "public.events", "public.extra"],
        tmp_path,
        pipeline={"mask_salt": SALT, "transforms": RULES},
    )
    calls: list[str] = []
    report = run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    return name, settings, report, calls


def test_transforms_keyless_duplicates_and_state(loaded: Loaded, databases: Databases) -> None:
    name, _, report, calls = loaded
    assert calls == ["register"]
    assert not report.already_loaded
    assert not report.recovered
    paths = {t.table: t.path for t in report.tables}
    assert paths == {"public.users": "copy", "archive.events_all": "copy", "public.extra": "rows"}
    salt = SALT.encode()
    with psycopg.connect(databases.source_dsn) as conn:
        source_users = conn.execute(
            "SELECT id, email, code, amount, state, u FROM public.users WHERE state <> 'draft' ORDER BY id"
        ).fetchall()
        events = Counter(conn.execute("SELECT kind, n FROM public.events").fetchall())
        slot_lsn = conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (f"cdc_{name}",),
        ).fetchone()
    expected = [
        (i, mask_value("hash", e, salt), mask_value("hash", c, salt), a, None, s, mask_value("hash", u, salt))
        for i, e, c, a, s, u in source_users
    ]
    with psycopg.connect(databases.target_dsn) as conn:
        users = conn.execute("SELECT id, email, code, amount, note, status, u FROM public.users ORDER BY id").fetchall()
        versions = conn.execute("SELECT DISTINCT __cdc_commit_lsn, __cdc_lsn FROM public.users").fetchall()
        target_events = conn.execute("SELECT kind, n, __cdc_row_id FROM archive.events_all").fetchall()
        extra = conn.execute("SELECT count(*), min(origin), max(origin) FROM public.extra").fetchone()
        known = conn.execute(
            "SELECT column_name FROM cdc_control.known_columns WHERE table_name = 'public.users' ORDER BY 1"
        ).fetchall()
    assert users == expected
    assert any(e is None for _, e, *_ in users)  # NULL stays NULL through the hash
    assert report.consistent_lsn > 0
    assert versions == [(0, report.consistent_lsn)]
    assert slot_lsn is not None
    assert int(slot_lsn[0]) == report.consistent_lsn
    assert Counter((k, n) for k, n, _ in target_events) == events
    assert events[("dup", 1)] == 3
    row_ids = [r for _, _, r in target_events]
    assert len(set(row_ids)) == len(row_ids)
    assert all(r.startswith(f"r:bulk:cdc_{name}:") for r in row_ids)
    assert extra == (50, "bulk", "bulk")
    assert {k[0] for k in known} == {"id", "email", "code", "amount", "note", "status", "u"}
    state = load_state(databases, f"p_{name}")
    assert state is not None
    assert state["status"] == "done"
    assert state["rows"]["public.users"] == len(expected)
    assert slots_of(databases) == [f"cdc_{name}"]
    assert report.rows == len(expected) + sum(events.values()) + 50


def test_second_run_only_registers(loaded: Loaded, databases: Databases) -> None:
    name, settings, first, _ = loaded
    calls: list[str] = []
    again = run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    assert again.already_loaded
    assert again.rows == 0
    assert calls == ["register"]
    assert slots_of(databases) == [f"cdc_{name}"]
    with psycopg.connect(databases.target_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM public.users").fetchone()
    assert count is not None
    assert count[0] == next(t.rows for t in first.tables if t.table == "public.users")


def test_refuses_non_empty_target_tables(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO public.t VALUES (1), (2)")
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO public.t VALUES (7)")
    _, settings = bulk_config(local_stack, databases, unique("br"), ["public.t"], tmp_path)
    calls: list[str] = []
    with pytest.raises(BulkLoadError, match=r"target table public\.t has 1 rows; a bulk load needs empty target"):
        run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    assert calls == []
    assert slots_of(databases) == []


def test_refuses_a_partitioned_table(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """``FROM ONLY`` a partitioned parent reads nothing: before, the load copied 0 of its rows
    and recorded the table done."""
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.m (id int PRIMARY KEY) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE public.m_low PARTITION OF public.m FOR VALUES FROM (0) TO (100)")
        conn.execute("INSERT INTO public.m SELECT generate_series(1, 10)")
    _, settings = bulk_config(local_stack, databases, unique("br"), ["public.m"], tmp_path)
    with pytest.raises(BulkLoadError, match=r"source table public\.m is partitioned"):
        run_bulk_load(settings, settings.sources[0], register=lambda: None)
    assert slots_of(databases) == []
