"""The ``Target`` contract (design "Seams"), asserted on every backend: PostgreSQL (the stack's
target cluster), MariaDB (the stack's server) and SQLite (a file in ``tmp_path``), each built by
``sinks.factory.make_target`` on a fresh database per test.

Version guard, tombstones, truncate watermark, TOAST preservation, keyless tables, replays,
schema evolution, the dropped-column guard, offsets, heartbeat reads and the error taxonomy
(transient vs rejected vs fatal), including a target that stops answering (stall guard)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.batch import ReducedBatch
from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId
from sinks.base import BatchRejectedError, TargetSchemaError, TransientSinkError
from tests.integration.targets import GROUP, KINDS, VERSIONS, Backend, closed_port, ev, open_backend, run_bounded

STALL_S = 5.0  # far above a CREATE TABLE on a busy machine, far below a test timeout


@pytest.fixture(params=[(k, v) for v in VERSIONS for k in KINDS], ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    kind, versions = request.param
    with open_backend(kind, request, tmp_path, unique, versions) as b:
        yield b


def row(key: int, name: str | None, amount: str | None = None) -> dict[str, object]:
    return {"id": key, "name": name, "amount": None if amount is None else Decimal(amount)}


def test_kind_names_the_backend(backend: Backend) -> None:
    assert backend.target().kind == {"postgresql": "postgresql", "mariadb": "mysql", "sqlite": "sqlite"}[backend.kind]


def test_changes_and_offsets_apply_together_and_a_replay_is_a_no_op(backend: Backend) -> None:
    target = backend.target()
    stream = [
        ev(Op.CREATE, (10, 10), 1, row(1, "a", "1.50")),
        ev(Op.CREATE, (20, 20), 2, row(2, "b")),
        ev(Op.UPDATE, (30, 30), 1, row(1, "a2", "2.25")),
        ev(Op.DELETE, (40, 40), 2),
    ]
    backend.apply(target, *stream[:2], offsets={("t", 0): 2})
    backend.apply(target, *stream[2:], offsets={("t", 0): 4})
    expected = [(1, "a2", Decimal("2.25"))]
    assert backend.rows() == expected
    assert target.stored_offsets(GROUP, [("t", 0), ("t", 1)]) == {("t", 0): 4}
    for event in stream:  # replay one by one, and all at once: nothing changes, nothing resurrects
        backend.apply(target, event)
    backend.apply(target, *stream)
    assert backend.rows() == expected


def test_a_replayed_batch_changes_nothing(backend: Backend) -> None:
    target = backend.target()
    first = [ev(Op.CREATE, (i, i), i, row(i, f"n{i}", "1.00")) for i in range(1, 6)]
    backend.apply(target, *first)
    batch = [
        ev(Op.UPDATE, (10, 10), 1, row(1, "u1")),
        ev(Op.DELETE, (11, 11), 2),
        ev(Op.UPDATE, (12, 12), 3, {"id": 3, "amount": Decimal("7.00")}, unavailable=frozenset({"name"})),
        ev(Op.CREATE, (13, 13), 9, row(9, "new")),
    ]
    backend.apply(target, *batch, offsets={("t", 0): 10})
    cols = ("id", "name", "amount")
    after_once = backend.rows(cols=cols), backend.positions([1, 2, 3, 4, 5, 9])
    backend.apply(target, *batch, offsets={("t", 0): 10})
    assert (backend.rows(cols=cols), backend.positions([1, 2, 3, 4, 5, 9])) == after_once
    after_once = after_once[0]
    assert [r[:3] for r in after_once] == [
        (1, "u1", None),
        (3, "n3", Decimal("7.00")),
        (4, "n4", Decimal("1.00")),
        (5, "n5", Decimal("1.00")),
        (9, "new", None),
    ]
    assert target.group_offsets(GROUP) == {("t", 0): 10}


def test_stored_group_and_reset_offsets(backend: Backend) -> None:
    target = backend.target()
    assert target.group_offsets(GROUP) == {}
    assert target.stored_offsets(GROUP, [("t", 0)]) == {}
    backend.apply(target, offsets={("t", 0): 9, ("t", 1): 2})
    target.apply(ReducedBatch(), "other", {("t", 0): 100})
    backend.apply(target, offsets={("t", 1): 3, ("u", 0): 1})  # later offsets overwrite earlier ones
    assert target.stored_offsets(GROUP, [("t", 0), ("t", 1), ("t", 2)]) == {("t", 0): 9, ("t", 1): 3}
    assert target.group_offsets(GROUP) == {("t", 0): 9, ("t", 1): 3, ("u", 0): 1}
    assert target.reset_offsets(GROUP) == 3
    assert target.group_offsets(GROUP) == {}
    assert target.group_offsets("other") == {("t", 0): 100}  # other groups untouched
    fresh = backend.target()  # a restarted worker reads what was committed
    assert fresh.group_offsets("other") == {("t", 0): 100}


def test_older_position_never_overwrites_newer_and_equal_is_idempotent(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.UPDATE, (50, 55), 1, row(1, "new")))
    backend.apply(target, ev(Op.UPDATE, (50, 40), 1, row(1, "older-same-commit")))
    backend.apply(target, ev(Op.CREATE, (30, 90), 1, row(1, "older-commit-higher-lsn")))
    assert backend.rows() == [(1, "new", None)]
    backend.apply(target, ev(Op.UPDATE, (50, 55), 1, row(1, "same-position-other-data")))
    assert backend.rows() == [(1, "new", None)]  # an equal position is the same change: no effect
    backend.apply(target, ev(Op.DELETE, (50, 55), 1))
    backend.apply(target, ev(Op.DELETE, (49, 99), 1))
    assert backend.rows() == [(1, "new", None)]  # a delete not newer than the row leaves it
    # Newer by lsn only (same commit), then newer by commit with a lower lsn: both apply.
    backend.apply(target, ev(Op.UPDATE, (50, 60), 1, row(1, "newer-lsn")))
    assert backend.rows() == [(1, "newer-lsn", None)]
    backend.apply(target, ev(Op.UPDATE, (70, 5), 1, row(1, "newer-commit")))
    assert backend.rows() == [(1, "newer-commit", None)]
    assert backend.positions([1]) == [(70, 5)]


def test_tombstone_stops_a_replayed_older_insert(backend: Backend) -> None:
    target = backend.target()
    insert = ev(Op.CREATE, (10, 10), 1, row(1, "a"))
    backend.apply(target, insert)
    backend.apply(target, ev(Op.DELETE, (20, 20), 1))
    backend.apply(target, insert)  # replayed
    backend.apply(target, ev(Op.UPDATE, (15, 15), 1, row(1, "older-update")))
    assert backend.rows() == []
    backend.apply(target, ev(Op.CREATE, (30, 30), 1, row(1, "re-created")))  # newer than the delete
    assert backend.rows() == [(1, "re-created", None)]


def test_truncate_watermark_ignores_older_changes_and_applies_newer(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (10, 10), 1, row(1, "a")))
    backend.apply(target, ev(Op.CREATE, (30, 30), 3, row(3, "after")))
    backend.apply(target, ev(Op.TRUNCATE, (20, 20), None))
    backend.apply(target, ev(Op.CREATE, (15, 15), 2, row(2, "late-older")))
    assert backend.rows() == [(3, "after", None)]
    backend.apply(target, ev(Op.CREATE, (40, 40), 4, row(4, "newer")), ev(Op.UPDATE, (41, 41), 1, row(1, "back")))
    assert backend.rows() == [(1, "back", None), (3, "after", None), (4, "newer", None)]


def test_toast_unavailable_column_keeps_stored_value(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (10, 10), 1, row(1, "big text", "1.00")))
    backend.apply(
        target, ev(Op.UPDATE, (20, 20), 1, {"id": 1, "amount": Decimal("9.99")}, unavailable=frozenset({"name"}))
    )
    assert backend.rows() == [(1, "big text", Decimal("9.99"))]


HISTORY = TableId("public", "history")
HISTORY_COLUMNS = (Column("aid", "int32"), Column("delta", "int32"))


def test_keyless_table_keeps_duplicates_dedups_replays_and_deletes_once(backend: Backend) -> None:
    target = backend.target()
    kw: dict[str, Any] = {"table": HISTORY, "columns": HISTORY_COLUMNS, "key_columns": ()}
    ins = [ev(Op.CREATE, (i, i), None, {"aid": 1, "delta": 5}, **kw) for i in (10, 11, 12)]
    delete = ev(Op.DELETE, (20, 20), None, None, before={"aid": 1, "delta": 5}, **kw)
    backend.apply(target, *ins)
    assert backend.rows(TableId(backend.schema, "history"), ("aid", "delta")) == [(1, 5)] * 3
    backend.apply(target, delete)
    for _ in range(2):  # full replay, twice
        backend.apply(target, *ins, delete)
    assert backend.rows(TableId(backend.schema, "history"), ("aid", "delta")) == [(1, 5), (1, 5)]


def test_keyless_snapshot_reads_keep_every_row_and_dedup_on_replay(backend: Backend) -> None:
    target = backend.target()
    # An initial snapshot: every read has the same position, and two rows are identical.
    reads = [
        ChangeEvent("t", 0, 100 + i, HISTORY, Op.READ, Position(0, 500), 0, after=r, columns=HISTORY_COLUMNS,
                    snapshot=True)
        for i, r in enumerate([{"aid": 1, "delta": 5}, {"aid": 1, "delta": 5}, {"aid": 2, "delta": 7}])
    ]  # fmt: skip
    backend.apply(target, *reads)
    backend.apply(target, *reads)  # the topic consumed again
    assert backend.rows(TableId(backend.schema, "history"), ("aid", "delta")) == [(1, 5), (1, 5), (2, 7)]


ITEM_COLUMNS_WITH_ADDED = (
    Column("id", "int32", optional=False),
    Column("name", "string"),
    Column("amount", "bytes", logical="org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"}),
    Column("added", "string"),
)


def test_tables_are_created_and_new_source_columns_added(backend: Backend) -> None:
    target = backend.target()
    assert not backend.has_table(backend.items)
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    assert backend.rows(cols=("id",)) == [(1,)]
    assert backend.positions([1]) == [(1, 1)]
    if backend.versions == "table":  # the source's columns only
        assert backend.columns_of() == ["id", "name", "amount"]
    cols = ITEM_COLUMNS_WITH_ADDED
    backend.apply(target, ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": None, "added": "x"}, columns=cols))
    assert backend.rows(cols=("id", "added")) == [(1, "x")]


def test_schema_evolution_off_rejects_instead_of_changing_the_target(backend: Backend) -> None:
    target = backend.target(create_tables=False)
    with pytest.raises(BatchRejectedError, match="create_tables is off"):
        backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    assert not backend.has_table(backend.items)
    backend.apply(backend.target(), ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    fixed = backend.target(add_columns=False)
    with pytest.raises(BatchRejectedError, match="added"):
        backend.apply(
            fixed,
            ev(
                Op.UPDATE,
                (2, 2),
                1,
                {"id": 1, "name": "b", "amount": None, "added": "x"},
                columns=ITEM_COLUMNS_WITH_ADDED,
            ),
            offsets={("t", 0): 7},
        )
    assert backend.rows() == [(1, "a", None)]
    assert fixed.group_offsets(GROUP) == {}  # rows and offsets fail together


def test_hostile_identifiers(backend: Backend) -> None:
    target = backend.target()
    table = TableId(backend.schema + ' Odd "Schema`', 'select; DROP TABLE x; --"`')
    cols = (Column("Key Col", "int32", optional=False), Column('we"ird`%s', "string"), Column("order", "string"))
    kw: dict[str, Any] = {"target": table, "columns": cols, "key_columns": ("Key Col",), "key_values": {"Key Col": 1}}
    insert = ev(Op.CREATE, (1, 1), None, {"Key Col": 1, 'we"ird`%s': "v", "order": "o"}, **kw)
    backend.apply(target, insert)
    assert backend.rows(table, ("Key Col", 'we"ird`%s', "order")) == [(1, "v", "o")]
    backend.apply(target, ev(Op.DELETE, (2, 2), None, **kw))
    backend.apply(target, insert)  # the replayed insert stays deleted
    assert backend.rows(table, ("Key Col", 'we"ird`%s', "order")) == []


def test_keys_are_case_and_space_sensitive(backend: Backend) -> None:
    target = backend.target()
    table = TableId("public", "codes")
    cols = (Column("code", "string", optional=False), Column("n", "int32"))
    evs = [
        ev(Op.CREATE, (i, i), None, {"code": code, "n": i}, table=table, columns=cols, key_columns=("code",),
           key_values={"code": code})
        for i, code in enumerate(["a", "A", "a ", "é"], start=1)
    ]  # fmt: skip
    backend.apply(target, *evs)
    assert sorted(backend.rows(TableId(backend.schema, "codes"), ("code", "n"))) == [
        ("A", 2),
        ("a", 1),
        ("a ", 3),
        ("é", 4),
    ]


BAD_AMOUNT = {"postgresql": "not-a-number", "mariadb": float("nan"), "sqlite": float("nan")}
"""A value each backend cannot store in ``amount`` (PostgreSQL numeric takes NaN; MariaDB's
LONGTEXT and SQLite's TEXT decimal columns take any text, but no float column takes NaN)."""


def test_a_batch_the_target_cannot_take_is_rejected_with_its_offsets(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")), offsets={("t", 0): 1})
    bad = ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": BAD_AMOUNT[backend.kind]})
    with pytest.raises(BatchRejectedError):
        backend.apply(target, ev(Op.CREATE, (2, 2), 2, row(2, "b")), bad, offsets={("t", 0): 3})
    assert backend.rows() == [(1, "a", None)]  # nothing of the batch, not even the good row
    assert target.group_offsets(GROUP) == {("t", 0): 1}
    backend.apply(target, ev(Op.UPDATE, (3, 3), 1, row(1, "ok")))  # the target recovers
    assert backend.rows() == [(1, "ok", None)]


HEARTBEAT = TableId("cdc", "heartbeat")
HEARTBEAT_COLUMNS = (
    Column("source", "string", optional=False),
    Column("ts", "string", logical="io.debezium.time.ZonedTimestamp", parameters={"__debezium.source.column.type": "TIMESTAMPTZ"}),
)  # fmt: skip


def test_read_heartbeat_is_none_until_a_heartbeat_row_is_applied(backend: Backend) -> None:
    target = backend.target()
    table = TableId(backend.schema, "heartbeat")
    assert target.read_heartbeat(table, "app") is None  # no table yet
    ts = dt.datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=dt.UTC)
    beat = ev(Op.UPDATE, (5, 5), None, {"source": "app", "ts": ts}, table=HEARTBEAT, target=table,
              columns=HEARTBEAT_COLUMNS, key_columns=("source",), key_values={"source": "app"})  # fmt: skip
    backend.apply(target, beat)
    assert target.read_heartbeat(table, "app") == ts
    assert target.read_heartbeat(table, "other") is None  # no row for that source
    later = ts + dt.timedelta(seconds=10)
    backend.apply(target, ev(Op.UPDATE, (6, 6), None, {"source": "app", "ts": later}, table=HEARTBEAT, target=table,
                             columns=HEARTBEAT_COLUMNS, key_columns=("source",), key_values={"source": "app"}))  # fmt: skip
    got = backend.target().read_heartbeat(table, "app")
    assert got == later and got.tzinfo is not None


def test_unreachable_target_is_transient(backend: Backend) -> None:
    if backend.kind == "sqlite":
        pytest.skip("an embedded file has no server to be unreachable; SQLite's transient case is a locked file")
    port = backend.engine.url.port
    url = backend.settings["url"].replace(f":{port}/", f":{closed_port()}/", 1)  # a port nothing listens on
    target = backend.target(url=url)
    with pytest.raises(TransientSinkError):
        target.group_offsets(GROUP)
    with pytest.raises(TransientSinkError):
        backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    with pytest.raises(TransientSinkError):
        target.read_heartbeat(backend.items, "app")


def test_blocked_target_is_cut_at_the_stall_timeout_and_reported_transient(backend: Backend) -> None:
    """A transaction that gets no answer within ``stall_timeout_s`` (blocked behind a lock held
    elsewhere, as a frozen server would block it) fails as TransientSinkError instead of
    hanging; once the block is gone the same batch applies."""
    target = backend.target(stall_timeout_s=STALL_S)
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    update = ev(Op.UPDATE, (2, 2), 1, row(1, "b"))
    with backend.locked(backend.items):
        finished, error, elapsed = run_bounded(lambda: backend.apply(target, update), STALL_S + 20)
        if not finished:
            pytest.fail(f"apply still blocked after {elapsed:.0f}s with stall_timeout_s={STALL_S:g}")
    assert isinstance(error, TransientSinkError), error
    assert elapsed < STALL_S + 10
    backend.apply(target, update)
    assert backend.rows() == [(1, "b", None)]


def test_column_dropped_by_hand_stops_instead_of_coming_back_empty(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    backend.execute(f"ALTER TABLE {backend.qualified(backend.items)} DROP COLUMN name")
    update = ev(Op.UPDATE, (2, 2), 1, row(1, "b"))
    with pytest.raises(TransientSinkError, match="schema changed"):  # the cached shape is stale
        backend.apply(target, update)
    with pytest.raises(TargetSchemaError, match=rf"\['name'\] of {backend.schema}\.items"):  # the catalog says why
        backend.apply(target, update)
    fresh = backend.target()  # a restarted worker: nothing cached
    with pytest.raises(TargetSchemaError):
        backend.apply(fresh, update)
    backend.execute(f"DROP TABLE {backend.qualified(backend.items)}")
    with pytest.raises(TargetSchemaError, match="dropped"):
        backend.apply(fresh, ev(Op.UPDATE, (3, 3), 1, row(1, "c")))
    assert not backend.has_table(backend.items)  # not re-created behind the operator's back


def test_a_replayed_batch_reports_every_row_stale_and_none_applied(backend: Backend) -> None:
    """Issue 22, defect 6: rows the version guard, a tombstone or the truncate watermark turned
    into no-ops are reported in ``ApplyResult.stale`` (per table, by row key), never as written."""
    target = backend.target()
    kw: dict[str, Any] = {"table": HISTORY, "columns": HISTORY_COLUMNS, "key_columns": ()}
    history = TableId(backend.schema, "history")
    backend.apply(target, *(ev(Op.CREATE, (i, i), i, row(i, f"n{i}", "1.00")) for i in range(1, 5)))
    batch = [
        ev(Op.UPDATE, (10, 10), 1, row(1, "u1")),
        ev(Op.DELETE, (11, 11), 2),
        ev(Op.CREATE, (12, 12), 9, row(9, "new")),
        ev(Op.CREATE, (13, 13), None, {"aid": 1, "delta": 5}, **kw),
        ev(Op.DELETE, (14, 14), None, None, before={"aid": 1, "delta": 5}, **kw),
    ]
    first = backend.apply(target, *batch, offsets={("t", 0): 5})
    assert (first.upserted, first.deleted, first.stale) == (3, 2, {})
    again = backend.apply(target, *batch, offsets={("t", 0): 5})
    assert (again.upserted, again.deleted) == (0, 0)
    assert again.stale == {
        backend.items: frozenset({"[1]", "[2]", "[9]"}),
        history: frozenset({"13:13", "d:14:14"}),
    }
    assert again.stale_rows == 5
    # A mixed batch: an older change (version guard), a replayed insert of the deleted row
    # (tombstone), a newer change: only the last one is written.
    mixed = backend.apply(
        target,
        ev(Op.UPDATE, (2, 2), 3, row(3, "older")),
        ev(Op.CREATE, (1, 1), 2, row(2, "resurrected?")),
        ev(Op.UPDATE, (20, 20), 4, row(4, "newer")),
    )
    assert (mixed.upserted, mixed.stale) == (1, {backend.items: frozenset({"[3]", "[2]"})})
    # Older than the truncate watermark: stale.
    backend.apply(target, ev(Op.TRUNCATE, (30, 30), None))
    late = backend.apply(target, ev(Op.UPDATE, (25, 25), 4, row(4, "before the truncate")))
    assert (late.upserted, late.stale) == (0, {backend.items: frozenset({"[4]"})})
    assert backend.rows() == []


def test_a_batch_starting_with_a_truncate_then_keyed_changes_applies(backend: Backend) -> None:
    """A truncate event carries no key (Debezium sends it without one), so a batch whose first
    event of a table is a truncate reduces that table's later changes without key values; the
    stale-row accounting must still read the keys from the rows it writes."""
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "old")))
    batch = [ev(Op.TRUNCATE, (5, 5), None, key_columns=()), ev(Op.CREATE, (6, 6), 2, row(2, "new"))]
    backend.apply(target, *batch)
    assert backend.rows() == [(2, "new", None)]
    again = backend.apply(target, *batch)
    assert (again.upserted, again.stale_rows) == (0, 1)
    assert backend.rows() == [(2, "new", None)]
