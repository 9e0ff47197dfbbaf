"""The bulk load's rows path (:mod:`pipeline.control.bulkload.rows`) against real databases.

- Values: the rows of ``tests/integration/test_decode_real_types.py`` are read from a fresh source
  by the rows path and must equal, value and type, what the decoder made of the real Debezium
  messages of the same rows (``tests/unit/fixtures/debezium/real_all_types.json``), with the
  columns those messages described. Types that fixture lacks are pinned against the decoder's
  converter fed with the value Debezium sends.
- Targets: MariaDB and SQLite get a keyed and a keyless table (duplicate rows included) through
  the pipeline's sink; the target rows equal the source's, the keyless ones as a multiset with
  ``__cdc_row_id = r:bulk:<slot>:<schema.table>:<chunk>:<n>``; the bulk state, counts and truncation work there.
- A hook transform on a PostgreSQL target rewrites every bulk row as it would a Debezium read.
- The orchestrator (``run_bulk_load``) loads MariaDB and SQLite targets by the rows path.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from pipeline.control.bulkload.catalog import read_source_table
from pipeline.control.bulkload.model import BulkLoadError, Chunk, CopyTask, ExportedSnapshot, SourceTable
from pipeline.control.bulkload.rows import copy_chunk_rows
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.core.batch import ReducedBatch
from pipeline.core.events import ChangeEvent, Column, TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.decode.converters import converter_for
from pipeline.decode.decoder import Decoder
from pipeline.localstack import LocalStack
from pipeline.transform.transformer import build_transformer
from sinks.base import ApplyResult, open_bulk_load
from sinks.factory import make_sink, make_target
from sinks.sqlalchemy.ddl import physical
from tests.conftest import Databases
from tests.integration.bulk_env import bulk_config, slots_of
from tests.integration.targets import drop_mariadb_databases
from tests.integration.test_decode_real_types import DDL, INSERT, _rows

FIXTURE = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "debezium" / "real_all_types.json"
LSN = 0x1_2345_6789
SLOT = "bulk_slot"


class Capture:
    """A Sink that keeps the batches (the value tests look at events, not at a database)."""

    def __init__(self) -> None:
        self.batches: list[ReducedBatch] = []

    def apply(self, batch: ReducedBatch, group: str, offsets: Any) -> ApplyResult:
        assert offsets == {}
        self.batches.append(batch)
        return ApplyResult(0, 0, 0, 0.0, {})

    def stored_offsets(self, group: str, partitions: Any) -> dict[Any, int]:
        return {}

    def reset_offsets(self, group: str) -> int:
        return 0

    def close(self) -> None:
        pass

    def rows(self) -> dict[Any, dict[str, Any]]:
        return {up.key: up.row for b in self.batches for t in b.tables.values() for up in t.upserts.values()}


def _pipeline(target: dict[str, Any], transforms: list[dict[str, Any]] | None = None) -> PipelineSettings:
    return PipelineSettings.model_validate(
        {"name": "bulkp", "source": "src", "target": target, "transforms": transforms or []}
    )


def _task(pipeline: PipelineSettings, table: SourceTable, index: int = 0) -> CopyTask:
    return CopyTask(pipeline, table, Chunk(index, 0, None), ExportedSnapshot(SLOT, LSN, "unused"))


def _copy(dsn: str, task: CopyTask, sink: Any, progress: list[int] | None = None) -> int:
    transformer = build_transformer(task.pipeline.transforms, task.pipeline.mask_salt)
    # as the orchestrator's copy session (slot.open_copy_session): autocommit, an explicit
    # REPEATABLE READ READ ONLY transaction (here without an imported snapshot)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        written = copy_chunk_rows(task, conn, sink, transformer, (progress if progress is not None else []).append)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # left open
        conn.execute("ROLLBACK")
    return written


def _decoded() -> dict[int, ChangeEvent]:
    decoder = Decoder()
    out: dict[int, ChangeEvent] = {}
    for m in json.loads(FIXTURE.read_text())["messages"]:
        if not m["topic"].endswith(".all_types") or m["value"] is None:
            continue
        event = decoder.decode(m["topic"], m["partition"], m["offset"], m["key"].encode(), m["value"].encode())
        if isinstance(event, ChangeEvent) and event.op.value in ("r", "c") and event.after is not None:
            out.setdefault(int(event.after["id"]), event)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type, element by element (NaN equals NaN)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b


def test_rows_path_values_equal_the_decoders_of_real_debezium_messages(databases: Databases) -> None:
    decoded = _decoded()
    assert sorted(decoded) == [1, 2, 3]
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(DDL)
        for row in _rows():
            conn.execute(INSERT, row)
    columns = decoded[1].columns
    assert columns is not None
    table = SourceTable(TableId("public", "all_types"), columns, ("id",), 3, 1)
    sink = Capture()
    progress: list[int] = []
    pipeline = _pipeline({"url": "sqlite:///unused.db"})
    assert _copy(databases.source_dsn, _task(pipeline, table), sink, progress) == 3
    assert progress == [3]
    got = {int(r["id"]): r for r in sink.rows().values()}
    for rid, event in decoded.items():
        assert event.after is not None
        wrong = {c: (got[rid][c], v) for c, v in event.after.items() if not _same(got[rid][c], v)}
        assert not wrong, f"row {rid}: rows path value != decoder value: {wrong}"
    # The same position and shape as a Debezium snapshot read, for the version guard.
    up = next(iter(sink.batches[0].tables.values())).upserts
    assert {u.position.commit_lsn for u in up.values()} == {0} and {u.position.lsn for u in up.values()} == {LSN}


def test_rows_path_with_catalog_columns_gives_the_decoders_values(databases: Databases) -> None:
    """The same rows with the columns the bulk load really uses (bulkcore's catalog, the
    production connector settings): every value as the decoder's, the interval as Debezium's
    ``interval.handling.mode=string`` text (the fixture's connector used the numeric default)."""
    decoded = _decoded()
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(DDL)
        for row in _rows():
            conn.execute(INSERT, row)
        table = read_source_table(conn, TableId("public", "all_types")).table
    sink = Capture()
    assert _copy(databases.source_dsn, _task(_pipeline({"url": "sqlite:///unused.db"}), table), sink) == 3
    got = {int(r["id"]): r for r in sink.rows().values()}
    intervals = {1: "P0Y0M3DT4H5M6.789S", 2: "P0Y0M-1DT0H0M-0.000001S", 3: "P0Y0M0DT0H0M0S"}
    for rid, event in decoded.items():
        assert event.after is not None
        want = {**event.after}
        if rid in intervals:
            want["c_interval"] = intervals[rid]
        wrong = {c: (got[rid][c], v) for c, v in want.items() if not _same(got[rid][c], v)}
        assert not wrong, f"row {rid}: {wrong}"


def _col(name: str, kind: str, logical: str | None = None, source: str = "", **params: str) -> Column:
    return Column(name, kind, True, logical, {"__debezium.source.column.type": source, **params})


def _wire(kind: str, logical: str | None = None, **extra: Any) -> Callable[[Any], Any]:
    schema: dict[str, Any] = {"type": kind, **extra}
    if logical:
        schema["name"] = logical
    return converter_for(schema)


# (column, source SQL value, the value Debezium sends -> through the decoder's converter)
EXTRA: list[tuple[Column, str, Any]] = [
    (_col("iv", "string", "io.debezium.time.Interval", "INTERVAL"), "'1 year 2 mons 3 days 04:05:06.78'::interval",
     _wire("string", "io.debezium.time.Interval")("P1Y2M3DT4H5M6.78S")),
    (_col("ivz", "string", "io.debezium.time.Interval", "INTERVAL"), "'0'::interval",
     _wire("string", "io.debezium.time.Interval")("P0Y0M0DT0H0M0S")),
    (_col("ivn", "string", "io.debezium.time.Interval", "INTERVAL"), "'-1 days -00:00:00.5'::interval",
     _wire("string", "io.debezium.time.Interval")("P0Y0M-1DT0H0M-0.5S")),
    (_col("tz", "string", "io.debezium.time.ZonedTime", "TIMETZ"), "'23:30:00-02'::timetz",
     _wire("string", "io.debezium.time.ZonedTime")("01:30:00Z")),
    (_col("dinf", "int32", "io.debezium.time.Date", "DATE"), "'infinity'::date",
     _wire("int32", "io.debezium.time.Date")(-2147472692)),
    (_col("tsinf", "int64", "io.debezium.time.MicroTimestamp", "TIMESTAMP"), "'-infinity'::timestamp",
     _wire("int64", "io.debezium.time.MicroTimestamp")(-9223372036832400000)),
    (_col("tstzinf", "string", "io.debezium.time.ZonedTimestamp", "TIMESTAMPTZ"), "'infinity'::timestamptz",
     _wire("string", "io.debezium.time.ZonedTimestamp")("infinity")),
    (_col("t24", "int64", "io.debezium.time.MicroTime", "TIME"), "'24:00:00'::time",
     _wire("int64", "io.debezium.time.MicroTime")(86_400_000_000)),
    (_col("r", "float", None, "FLOAT4"), "'1.1'::real", 1.1),
    (_col("nnan", "struct", "io.debezium.data.VariableScaleDecimal", "NUMERIC"), "'NaN'::numeric", None),
    (_col("m", "bytes", "org.apache.kafka.connect.data.Decimal", "MONEY", scale="2"), "'12.30'::money",
     _wire("bytes", "org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"})("BM4=")),
    (_col("pt", "struct", "io.debezium.data.geometry.Point", "POINT"), "'(1.5,-2)'::point",
     _wire("struct", "io.debezium.data.geometry.Point")(
         {"x": 1.5, "y": -2.0, "wkb": "AQEAAAAAAAAAAAD4PwAAAAAAAADA", "srid": None})),
    (_col("b1", "boolean", None, "BIT"), "B'1'::bit(1)", True),
    (_col("bits", "bytes", "io.debezium.data.Bits", "BIT", length="10"), "B'1000000001'::bit(10)",
     _wire("bytes", "io.debezium.data.Bits")("AQI=")),
    (_col("inet", "string", None, "INET"), "'10.0.0.1/8'::inet", "10.0.0.1/8"),
    (_col("js", "array", None, "_JSONB", ), "ARRAY['{\"a\": 1}'::jsonb]", ['{"a": 1}']),
]  # fmt: skip


def test_rows_path_types_beyond_the_fixture_equal_the_decoders(databases: Databases) -> None:
    """Each value as Debezium writes it (Debezium PostgreSQL docs, "Data type mappings";
    Interval.toIsoString, Point's little-endian WKB, Bits little-endian), through the decoder."""
    columns = [dataclasses.replace(c, items=Column("", "string")) if c.type == "array" else c for c, _, _ in EXTRA]
    select = ", ".join(f"{expr} AS {c.name}" for (c, expr, _) in EXTRA)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.extra AS SELECT {select}")
    table = SourceTable(TableId("public", "extra"), tuple(columns), (), 1, 1)
    sink = Capture()
    assert _copy(databases.source_dsn, _task(_pipeline({"url": "sqlite:///unused.db"}), table, 4), sink) == 1
    [(key, row)] = sink.rows().items()
    assert key == f"r:bulk:{SLOT}:public.extra:4:0"
    wrong = {c.name: (row[c.name], want) for c, _, want in EXTRA if not _same(row[c.name], want)}
    assert not wrong


# --------------------------------------------------------------------------- targets

KEYED = "CREATE TABLE public.items (id int PRIMARY KEY, name text, amount numeric(12,2), at timestamptz)"
KEYLESS = "CREATE TABLE public.events (kind text, n int)"
KEYLESS_ROWS = [("a", 1), ("a", 1), ("a", 1), ("b", 2), ("b", None), (None, None)]


def _seed(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(KEYED)
        conn.execute(KEYLESS)
        conn.execute("ALTER TABLE public.events REPLICA IDENTITY FULL")
        conn.execute(
            "INSERT INTO public.items SELECT g, 'name ' || g, g * 1.25, timestamptz '2024-01-01 00:00+00'"
            " + g * interval '1 second' FROM generate_series(1, %s) g",
            (rows,),
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO public.events VALUES (%s, %s)", KEYLESS_ROWS)


def _source_table(dsn: str, name: str, keys: tuple[str, ...]) -> SourceTable:
    """Columns as Debezium describes these types (int32, string, Decimal scale 2, ZonedTimestamp)."""
    shapes = {
        "id": _col("id", "int32", None, "INT4"),
        "name": _col("name", "string", None, "TEXT"),
        "amount": _col("amount", "bytes", "org.apache.kafka.connect.data.Decimal", "NUMERIC", scale="2"),
        "at": _col("at", "string", "io.debezium.time.ZonedTimestamp", "TIMESTAMPTZ"),
        "kind": _col("kind", "string", None, "TEXT"),
        "n": _col("n", "int32", None, "INT4"),
    }
    with psycopg.connect(dsn) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
                (f"public.{name}",),
            )
        ]
        pages = conn.execute("SELECT pg_relation_size(%s) / 8192", (f"public.{name}",)).fetchone()
    return SourceTable(TableId("public", name), tuple(shapes[n] for n in names), keys, 0, int(pages[0]) if pages else 0)


@pytest.fixture(params=["sqlite", "mariadb"])
def sa_target(
    request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str], local_stack: LocalStack
) -> Iterator[dict[str, Any]]:
    """The ``target`` section of a SQLite file or of a fresh MariaDB database."""
    if request.param == "sqlite":
        yield {"url": f"sqlite:///{tmp_path / 'bulk.db'}", "schema": "public", "control_schema": "ctl"}
        return
    prefix = unique("bulk")
    s = local_stack.settings
    yield {
        "url": s.mariadb_url(),
        "schema": f"{prefix}_data",
        "control_schema": f"{prefix}_ctl",
    }
    drop_mariadb_databases(local_stack, prefix)


def test_rows_path_into_sqlalchemy_targets_keyed_and_keyless_exact(
    databases: Databases, sa_target: dict[str, Any]
) -> None:
    _seed(databases.source_dsn, 12_000)  # more than BATCH_ROWS: three sink transactions
    pipeline = _pipeline(sa_target)
    target = make_target(pipeline)
    bulk = open_bulk_load(target)
    schema = sa_target["schema"]
    items, events = TableId(schema, "items"), TableId(schema, "events")
    try:
        assert bulk.supports_copy is False and bulk.row_count(items) == 0
        keyed, keyless = (
            _source_table(databases.source_dsn, "items", ("id",)),
            _source_table(databases.source_dsn, "events", ()),
        )
        prepared = bulk.prepare_table(items, keyed.columns, keyed.key_columns)
        assert not prepared.keyless and prepared.extra_columns == ("__cdc_commit_lsn", "__cdc_lsn")
        assert set(prepared.column_types) == {"id", "name", "amount", "at"}
        assert bulk.prepare_table(events, keyless.columns, ()).keyless
        sink = make_sink(pipeline)
        progress: list[int] = []
        assert _copy(databases.source_dsn, _task(pipeline, keyed), sink, progress) == 12_000
        assert progress == [5000, 5000, 2000]
        assert _copy(databases.source_dsn, _task(pipeline, keyless, 7), sink) == len(KEYLESS_ROWS)
        sink.close()
        assert bulk.row_count(items) == 12_000 and bulk.row_count(events) == len(KEYLESS_ROWS)

        engine = target.engine  # type: ignore[attr-defined]
        dialect = "sqlite" if sa_target["url"].startswith("sqlite") else "mysql"
        with engine.connect() as conn, psycopg.connect(databases.source_dsn) as src:
            s_name = physical(items, dialect)
            t = sa.table(s_name[1], sa.column("id"), sa.column("name"), sa.column("amount"), sa.column("__cdc_lsn"),
                         sa.column("__cdc_commit_lsn"), schema=s_name[0])  # fmt: skip
            got = {(int(r[0]), r[1], str(r[2])) for r in conn.execute(sa.select(t.c.id, t.c.name, t.c.amount))}
            want = {(r[0], r[1], str(r[2])) for r in src.execute("SELECT id, name, amount FROM public.items")}
            assert got == want
            assert set(conn.execute(sa.select(t.c.__cdc_commit_lsn, t.c.__cdc_lsn).distinct())) == {(0, LSN)}
            e_name = physical(events, dialect)
            e = sa.table(e_name[1], sa.column("kind"), sa.column("n"), sa.column("__cdc_row_id"), schema=e_name[0])
            got_rows = list(conn.execute(sa.select(e.c.kind, e.c.n, e.c.__cdc_row_id)))
        assert Counter((r[0], r[1]) for r in got_rows) == Counter(KEYLESS_ROWS)
        assert {r[2] for r in got_rows} == {f"r:bulk:{SLOT}:public.events:7:{n}" for n in range(len(KEYLESS_ROWS))}

        bulk.save_state("bulkp", {"state": "copying", "tables": [str(items)]})
        assert bulk.load_state("bulkp") == {"state": "copying", "tables": [str(items)]}
        bulk.truncate([items, events, TableId(schema, "absent")])
        assert bulk.row_count(items) == 0 and bulk.row_count(events) == 0
        bulk.clear_state("bulkp")
        assert bulk.load_state("bulkp") is None
        with pytest.raises(NotImplementedError):
            bulk.copy_in(items, ["id"], binary=False)
    finally:
        bulk.close()
        target.close()


def shout(event: ChangeEvent) -> ChangeEvent | None:
    """A hook: upper-case ``name``, drop the row with id 3."""
    if event.after is None:
        return event
    if event.after.get("id") == 3:
        return None
    return dataclasses.replace(event, after={**event.after, "name": str(event.after["name"]).upper()})


def test_rows_path_runs_a_hook_into_a_postgres_target(databases: Databases, local_stack: LocalStack) -> None:
    _seed(databases.source_dsn, 10)
    s = local_stack.settings
    target = {
        "url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{databases.name}",
        "password": "postgres",
        "schema": "public",
        "control_schema": "cdc_ctl",
    }
    pipeline = _pipeline(target, [{"match": "public.items", "hook": "tests.integration.test_bulk_rows:shout"}])
    sink = make_sink(pipeline)
    try:
        assert (
            _copy(databases.source_dsn, _task(pipeline, _source_table(databases.source_dsn, "items", ("id",))), sink)
            == 9
        )
    finally:
        sink.close()
    with psycopg.connect(databases.target_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, name, __cdc_commit_lsn, __cdc_lsn FROM public.items ORDER BY id")
        ).fetchall()
    assert [r[0] for r in rows] == [i for i in range(1, 11) if i != 3]
    assert all(r[1] == f"NAME {r[0]}" and (r[2], r[3]) == (0, LSN) for r in rows)


def test_run_bulk_load_into_sqlalchemy_targets_by_the_rows_path(
    databases: Databases,
    sa_target: dict[str, Any],
    local_stack: LocalStack,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The whole orchestrator (exported snapshot, several chunks on 3 jobs) into MariaDB/SQLite: every
    table goes by the rows path, the target equals the source (keyless as a multiset, duplicates
    included), the state is ``done`` in the target's control schema, one slot, and a non-empty
    target is refused on a fresh load."""
    _seed(databases.source_dsn, 12_000)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    name = unique("bl")
    _, settings = bulk_config(
        local_stack, databases, name, ["public.items", "public.events"], tmp_path, pipeline={"target": sa_target}
    )
    calls: list[str] = []
    report = run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("register"))
    schema = sa_target["schema"]
    assert calls == ["register"] and not report.already_loaded
    assert {t.table: (t.path, t.rows) for t in report.tables} == {
        f"{schema}.items": ("rows", 12_000),
        f"{schema}.events": ("rows", len(KEYLESS_ROWS)),
    }
    assert slots_of(databases) == [f"cdc_{name}"]
    target = make_target(settings.pipelines[0])
    bulk = open_bulk_load(target)
    try:
        state = bulk.load_state(settings.pipelines[0].name)
        assert state is not None and state["status"] == "done"
        engine = target.engine  # type: ignore[attr-defined]
        dialect = "sqlite" if sa_target["url"].startswith("sqlite") else "mysql"
        with engine.connect() as conn, psycopg.connect(databases.source_dsn) as src:
            s_name = physical(TableId(schema, "items"), dialect)
            t = sa.table(s_name[1], sa.column("id"), sa.column("name"), sa.column("__cdc_lsn"), schema=s_name[0])
            got = set(conn.execute(sa.select(t.c.id, t.c.name)))
            lsns = set(conn.execute(sa.select(t.c.__cdc_lsn).distinct()))
            e_name = physical(TableId(schema, "events"), dialect)
            e = sa.table(e_name[1], sa.column("kind"), sa.column("n"), sa.column("__cdc_row_id"), schema=e_name[0])
            keyless = list(conn.execute(sa.select(e.c.kind, e.c.n, e.c.__cdc_row_id)))
            want = set(src.execute("SELECT id, name FROM public.items").fetchall())
        assert {(int(i), n) for i, n in got} == want
        assert lsns == {(report.consistent_lsn,)}
        assert Counter((k, n) for k, n, _ in keyless) == Counter(KEYLESS_ROWS)
        assert all(str(r).startswith(f"r:bulk:cdc_{name}:") for _, _, r in keyless)
        assert len({r for _, _, r in keyless}) == len(KEYLESS_ROWS)

        bulk.clear_state(settings.pipelines[0].name)  # a fresh load now finds rows nobody recorded
        with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (f"cdc_{name}",))
        with pytest.raises(BulkLoadError, match=r"items has 12000 rows; a bulk load needs empty target tables"):
            run_bulk_load(settings, settings.sources[0], register=lambda: calls.append("again"))
        assert calls == ["register"]
    finally:
        bulk.close()
        target.close()
