"""The PostgreSQL sink against a real target: version guard, tombstones, truncate watermark,
TOAST preservation, keyless tables, hostile identifiers, offsets in the same transaction."""

from __future__ import annotations

from decimal import Decimal
from itertools import count

import psycopg
import pytest
from psycopg import sql

from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId
from pipeline.dataplane.reduce import reduce_events
from sinks.base import BatchRejectedError, TransientSinkError
from sinks.postgres.ddl import TargetSchemaError
from sinks.postgres.sink import PostgresSink
from tests.conftest import Databases

GROUP = "cdc.test"
ITEMS = TableId("public", "items")
_offsets = count()


def ev(
    op: Op,
    pos: tuple[int, int],
    key: int | None,
    after: dict[str, object] | None = None,
    *,
    table: TableId = ITEMS,
    columns: tuple[Column, ...] | None = None,
    before: dict[str, object] | None = None,
    unavailable: frozenset[str] = frozenset(),
    key_columns: tuple[str, ...] = ("id",),
) -> ChangeEvent:
    cols = columns or (
        Column("id", "int32", optional=False),
        Column("name", "string"),
        Column("amount", "bytes", logical="org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"}),
    )
    return ChangeEvent(
        topic="t",
        partition=0,
        offset=next(_offsets),
        table=table,
        op=op,
        position=Position(*pos),
        ts_ms=0,
        key={"id": key} if key is not None and key_columns else None,
        after=after,
        before=before,
        columns=cols,
        key_columns=key_columns,
        unavailable=unavailable,
    )


def apply(sink: PostgresSink, *events: ChangeEvent, offsets: dict[tuple[str, int], int] | None = None) -> None:
    sink.apply(reduce_events(events, "public"), GROUP, offsets or {})


def rows(dsn: str, table: str = '"public"."items"', cols: str = "id, name, amount") -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1").fetchall()


@pytest.fixture
def sink(databases: Databases) -> PostgresSink:
    s = PostgresSink(databases.target_dsn)
    yield s
    s.close()


def test_insert_update_delete_and_replay_is_a_no_op(sink: PostgresSink, databases: Databases) -> None:
    stream = [
        ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "amount": Decimal("1.50")}),
        ev(Op.CREATE, (20, 20), 2, {"id": 2, "name": "b", "amount": None}),
        ev(Op.UPDATE, (30, 30), 1, {"id": 1, "name": "a2", "amount": Decimal("2.25")}),
        ev(Op.DELETE, (40, 40), 2),
    ]
    apply(sink, *stream[:2])
    apply(sink, *stream[2:], offsets={("t", 0): 4})
    expected = [(1, "a2", Decimal("2.25"))]
    assert rows(databases.target_dsn) == expected
    for event in stream:  # replay one by one, and all at once: nothing changes, nothing resurrects
        apply(sink, event)
    apply(sink, *stream)
    assert rows(databases.target_dsn) == expected
    assert sink.stored_offsets(GROUP, [("t", 0), ("t", 1)]) == {("t", 0): 4}


def test_older_change_never_overwrites_newer(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.UPDATE, (50, 55), 1, {"id": 1, "name": "new", "amount": None}))
    apply(sink, ev(Op.UPDATE, (50, 40), 1, {"id": 1, "name": "older-in-same-commit-window", "amount": None}))
    apply(sink, ev(Op.CREATE, (30, 90), 1, {"id": 1, "name": "older-commit-higher-lsn", "amount": None}))
    assert rows(databases.target_dsn) == [(1, "new", None)]


def test_toast_unavailable_column_keeps_stored_value(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "big text", "amount": Decimal("1.00")}))
    apply(sink, ev(Op.UPDATE, (20, 20), 1, {"id": 1, "amount": Decimal("9.99")}, unavailable=frozenset({"name"})))
    assert rows(databases.target_dsn) == [(1, "big text", Decimal("9.99"))]


def test_truncate_watermark_blocks_older_changes(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "amount": None}))
    apply(sink, ev(Op.CREATE, (30, 30), 3, {"id": 3, "name": "after", "amount": None}))
    apply(sink, ev(Op.TRUNCATE, (20, 20), None, key_columns=("id",)))
    apply(sink, ev(Op.CREATE, (15, 15), 2, {"id": 2, "name": "late-older", "amount": None}))
    assert rows(databases.target_dsn) == [(3, "after", None)]


def test_keyless_table_inserts_dedup_and_deletes_once(sink: PostgresSink, databases: Databases) -> None:
    table = TableId("public", "history")
    cols = (Column("aid", "int32"), Column("delta", "int32"))
    kw = {"table": table, "columns": cols, "key_columns": ()}
    ins = [ev(Op.CREATE, (i, i), None, {"aid": 1, "delta": 5}, **kw) for i in (10, 11, 12)]
    delete = ev(Op.DELETE, (20, 20), None, None, before={"aid": 1, "delta": 5}, **kw)
    apply(sink, *ins)
    apply(sink, delete)
    for _ in range(2):  # full replay, twice
        apply(sink, *ins, delete)
    got = rows(databases.target_dsn, '"public"."history"', "aid, delta")
    assert got == [(1, 5), (1, 5)]


def test_hostile_identifiers(sink: PostgresSink, databases: Databases) -> None:
    table = TableId('Odd "Schema"', 'select; DROP TABLE x; --"')
    cols = (Column("Key Col", "int32", optional=False), Column('we"ird', "string"), Column("order", "string"))
    e = ev(
        Op.CREATE,
        (1, 1),
        None,
        {"Key Col": 1, 'we"ird': "v", "order": "o"},
        table=table,
        columns=cols,
        key_columns=("Key Col",),
    )
    e = ChangeEvent(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "key": {"Key Col": 1}, "target": table})
    apply(sink, e)
    with psycopg.connect(databases.target_dsn) as conn:
        got = conn.execute(
            sql.SQL("SELECT {}, {}, {} FROM {}.{}").format(
                sql.Identifier("Key Col"),
                sql.Identifier('we"ird'),
                sql.Identifier("order"),
                sql.Identifier(table.schema),
                sql.Identifier(table.table),
            )
        ).fetchall()
    assert got == [(1, "v", "o")]


def test_new_source_column_is_added(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}))
    cols = (
        Column("id", "int32", optional=False),
        Column("name", "string"),
        Column("amount", "float64"),
        Column("added", "string"),
    )
    apply(sink, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": None, "added": "x"}, columns=cols))
    assert rows(databases.target_dsn, cols="id, added") == [(1, "x")]


def test_bad_data_is_rejected_not_retried(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}))
    with pytest.raises(BatchRejectedError):
        apply(sink, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": "not-a-number"}))
    apply(sink, ev(Op.UPDATE, (3, 3), 1, {"id": 1, "name": "ok", "amount": None}))  # the sink recovers
    assert rows(databases.target_dsn) == [(1, "ok", None)]


def test_keyless_snapshot_reads_keep_every_row_and_dedup_on_replay(sink: PostgresSink, databases: Databases) -> None:
    table = TableId("public", "history")
    cols = (Column("aid", "int32"), Column("delta", "int32"))
    # An initial snapshot: every read has the same position, and two rows are identical.
    reads = [
        ChangeEvent("t", 0, 100 + i, table, Op.READ, Position(0, 500), 0, after=row, columns=cols, snapshot=True)
        for i, row in enumerate([{"aid": 1, "delta": 5}, {"aid": 1, "delta": 5}, {"aid": 2, "delta": 7}])
    ]
    apply(sink, *reads)
    apply(sink, *reads)  # the topic consumed again
    got = rows(databases.target_dsn, '"public"."history"', "aid, delta")
    assert got == [(1, 5), (1, 5), (2, 7)]


def test_stalled_target_is_cut_and_reported_transient(databases: Databases) -> None:
    """A transaction that gets no answer within ``stall_timeout_s`` (here: blocked behind a lock
    held elsewhere, as a frozen server would block it) fails as TransientSinkError; after the
    block is gone the same batch applies."""
    sink = PostgresSink(databases.target_dsn, stall_timeout_s=5)  # far above a CREATE TABLE on a busy machine
    try:
        apply(sink, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}))
        with psycopg.connect(databases.target_dsn) as blocker:
            blocker.execute("LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TransientSinkError, match="stalled"):
                apply(sink, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "b", "amount": None}))
        apply(sink, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "b", "amount": None}))
    finally:
        sink.close()
    assert rows(databases.target_dsn) == [(1, "b", None)]


def test_column_dropped_by_hand_stops_instead_of_coming_back_empty(sink: PostgresSink, databases: Databases) -> None:
    apply(sink, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}))
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.items DROP COLUMN name")
    update = ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "b", "amount": None})
    with pytest.raises(TransientSinkError, match="schema changed"):  # the cached shape is stale
        apply(sink, update)
    with pytest.raises(TargetSchemaError, match=r"\['name'\] of public\.items"):  # the catalog says why
        apply(sink, update)
    fresh = PostgresSink(databases.target_dsn)  # a restarted worker: nothing cached
    try:
        with pytest.raises(TargetSchemaError):
            apply(fresh, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "b", "amount": None}))
        with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE public.items")
        with pytest.raises(TargetSchemaError, match="dropped"):
            apply(fresh, ev(Op.UPDATE, (3, 3), 1, {"id": 1, "name": "c", "amount": None}))
        with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
            columns = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'items'")
            assert columns.fetchone() == (0,)  # not re-created behind the operator's back
    finally:
        fresh.close()
