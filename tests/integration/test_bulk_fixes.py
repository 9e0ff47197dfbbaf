"""Review fixes of the bulk load on the real stack: ACCESS SHARE locks held on the source tables for
the whole copy (a table rewrite cannot empty a table under the snapshot), a fresh load clearing the
leftover bookkeeping of its target tables and refusing stored offsets of the pipeline's group, and
the slot checked before ``done`` and before a finished load's connector is registered."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from connectors.connect_client import ConnectClient
from connectors.slots import drop_slot_when_free
from pipeline.cli import app
from pipeline.control.bulkload.model import BulkLoadError
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.localstack import LocalStack
from sinks.base import open_bulk_load
from sinks.factory import make_target
from tests.conftest import Databases
from tests.integration.bulk_env import bulk_config, load_state, slots_of

BIG_SMALL = [
    "CREATE TABLE public.big (id int PRIMARY KEY, v text)",
    "INSERT INTO public.big SELECT g, repeat('x', 40) FROM generate_series(1, 20000) g",
    "CREATE TABLE public.small (id int PRIMARY KEY, n int)",
    "INSERT INTO public.small SELECT g, g FROM generate_series(1, 50) g",
    "ANALYZE",
]
WATERMARK = 1 << 60


def _source(db: Databases, statements: list[str]) -> None:
    with psycopg.connect(db.source_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # fixed test table names
    assert row is not None
    return int(row[0])


class _OnFirstBigChunk:
    """LoadProgress running ``action`` once, in the copy thread, after the first chunk of public.big."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.ran = False
        self.lock = threading.Lock()

    def planned(self, pipeline: str, table: str, estimated_rows: int) -> None:
        pass

    def copied(self, pipeline: str, table: str, rows: int) -> None:
        with self.lock:
            if self.ran or table != "public.big":
                return
            self.ran = True
        self.action()

    def table_done(self, pipeline: str, table: str, rows: int, seconds: float) -> None:
        pass


def test_table_rewrite_during_the_copy_waits_for_the_load(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    _source(databases, BIG_SMALL)
    name = unique("bfl")
    _, settings = bulk_config(
        local_stack, databases, name, ["public.big", "public.small"], tmp_path, bulk_load={"jobs": 1}
    )
    outcome: list[str] = []

    def alter_small() -> None:  # small is not read yet: only the load's own lock protects it
        with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute("ALTER TABLE public.small ALTER n TYPE bigint")
                outcome.append("altered")
            except psycopg.errors.LockNotAvailable:
                outcome.append("timed out")

    progress = _OnFirstBigChunk(alter_small)
    report = run_bulk_load(settings, settings.sources[0], progress=progress, register=lambda: None)
    assert outcome == ["timed out"]
    assert _count(databases.target_dsn, "public.small") == 50
    assert _count(databases.target_dsn, "public.big") == 20000
    assert {t.table: t.rows for t in report.tables} == {"public.big": 20000, "public.small": 50}
    # The locks are released once the load is done.
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '2s'")
        conn.execute("ALTER TABLE public.small ALTER n TYPE bigint")


def test_fresh_load_clears_a_stale_truncation_watermark(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    _source(databases, BIG_SMALL[2:])
    name = unique("bfw")
    db_file = tmp_path / "target.db"
    _, settings = bulk_config(
        local_stack,
        databases,
        name,
        ["public.small"],
        tmp_path,
        pipeline={"target": {"url": f"sqlite:///{db_file}"}},
    )
    pipeline = settings.pipelines[0]
    target = make_target(pipeline, purpose="test")
    bulk = open_bulk_load(target)
    bulk.truncate([])  # creates the control tables
    bulk.close()
    target.close()
    with sqlite3.connect(db_file) as conn:
        (truncations,) = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%truncations'"
        ).fetchone()
        conn.execute(
            f'INSERT INTO "{truncations}" (table_name, commit_lsn, lsn, truncated_at)'  # name read from the catalog
            " VALUES ('public.small', ?, ?, '2026-01-01 00:00:00')",
            (WATERMARK, WATERMARK),
        )
    report = run_bulk_load(settings, settings.sources[0], register=lambda: None)
    assert report.rows == 50
    with sqlite3.connect(db_file) as conn:
        (table,) = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%small'").fetchone()
        assert conn.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (50,)
        assert conn.execute(f'SELECT count(*) FROM "{truncations}"').fetchone() == (0,)


def test_fresh_load_refuses_stored_offsets_of_the_group(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    _source(databases, BIG_SMALL[2:])
    name = unique("bfo")
    _, settings = bulk_config(local_stack, databases, name, ["public.small"], tmp_path)
    pipeline = settings.pipelines[0]
    target = make_target(pipeline, purpose="test")
    try:
        target.set_offsets(pipeline.resolved_consumer_group, {(f"{name}.public.small", 0): 7})
    finally:
        target.close()
    with pytest.raises(BulkLoadError) as refused:
        run_bulk_load(settings, settings.sources[0], register=lambda: None)
    assert pipeline.resolved_consumer_group in str(refused.value)
    assert "cdc-pipeline offsets reset" in str(refused.value)
    assert slots_of(databases) == []
    assert load_state(databases, pipeline.name) is None


def test_a_finished_load_whose_slot_is_gone_is_not_registered(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    _source(databases, BIG_SMALL[2:])
    name = unique("bfs")
    path, settings = bulk_config(local_stack, databases, name, ["public.small"], tmp_path)
    run_bulk_load(settings, settings.sources[0], register=lambda: None)
    slot = f"cdc_{name}"
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    calls: list[str] = []
    with pytest.raises(BulkLoadError) as refused:
        run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    assert calls == []
    assert f"slot {slot} of the bulk load" in str(refused.value)
    assert "is gone (missing)" in str(refused.value)
    try:
        result = CliRunner().invoke(app, ["connectors", "apply", "-c", str(path), "-s", name, "--no-wait"])
    finally:
        with ConnectClient(settings.connect) as client:
            registered = client.delete(settings.sources[0].resolved_connector_name)
    assert not registered
    assert result.exit_code == 1, result.output
    assert f"slot {slot} of the bulk load" in result.output
    assert slots_of(databases) == []


def test_a_slot_dropped_during_the_copy_fails_the_load(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    _source(databases, BIG_SMALL)
    name = unique("bfd")
    _, settings = bulk_config(local_stack, databases, name, ["public.big"], tmp_path, bulk_load={"jobs": 1})
    slot = f"cdc_{name}"

    def drop() -> None:  # terminates the exporter; the copy session already imported the snapshot
        with psycopg.connect(databases.source_dsn, autocommit=True, row_factory=dict_row) as conn:
            drop_slot_when_free(conn, slot, timeout_s=1)

    with pytest.raises(BulkLoadError, match=f"replication slot {slot} .* is missing"):
        run_bulk_load(settings, settings.sources[0], progress=_OnFirstBigChunk(drop), register=lambda: None)
    state = load_state(databases, f"p_{name}")
    assert state is not None
    assert state["status"] == "copying"


def test_a_text_copy_means_the_same_whatever_the_sources_output_styles(
    local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """The source database's own IntervalStyle/DateStyle used to reach the text COPY: '-1 day
    -02:03:04' in sql_standard style reads back on the target as another interval."""
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.styles (id int PRIMARY KEY, d interval, t date, f float8)")
        conn.execute(
            "INSERT INTO public.styles VALUES (1, '-1 day -02:03:04', '2024-02-03', 0.1::float8 + 0.2::float8)"
        )
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET IntervalStyle = 'sql_standard'").format(
                psycopg.sql.Identifier(databases.name)
            )
        )
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET DateStyle = 'SQL, DMY'").format(
                psycopg.sql.Identifier(databases.name)
            )
        )
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET extra_float_digits = 0").format(
                psycopg.sql.Identifier(databases.name)
            )
        )
    _, settings = bulk_config(
        local_stack, databases, unique("bst"), ["public.styles"], tmp_path, bulk_load={"binary": False}
    )
    run_bulk_load(settings, settings.sources[0], register=lambda: None)
    query = "SELECT d::text, t::text, f FROM public.styles"
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("SET IntervalStyle = postgres")
        got = conn.execute(query).fetchone()
    assert got == ("-1 days -02:03:04", "2024-02-03", 0.1 + 0.2)
