"""The SQLAlchemy sink against real MariaDB (local stack) and SQLite: version guard, tombstones,
truncate watermark, TOAST preservation, keyless tables, hostile identifiers, types, offsets."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId
from pipeline.dataplane.reduce import reduce_events
from pipeline.localstack import LocalStack
from sinks.base import BatchRejectedError
from sinks.sqlalchemy.ddl import physical
from sinks.sqlalchemy.sink import SqlAlchemySink

GROUP = "cdc.test"
_offsets = count()


def ev(
    op: Op,
    pos: tuple[int, int],
    key: int | None,
    after: dict[str, object] | None = None,
    *,
    table: TableId,
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
        target=table,
    )


class Target:
    """A sink on a fresh target plus helpers to read it back."""

    def __init__(self, sink: SqlAlchemySink, schema: str) -> None:
        self.sink = sink
        self.schema = schema
        self.items = TableId(schema, "items")

    def apply(self, *events: ChangeEvent, offsets: dict[tuple[str, int], int] | None = None) -> None:
        self.sink.apply(reduce_events(events, self.schema), GROUP, offsets or {})

    def rows(self, table: TableId | None = None, cols: tuple[str, ...] = ("id", "name", "amount")) -> list[Any]:
        schema, name = physical(table or self.items, self.sink.dialect)
        t = sa.table(name, *(sa.column(c) for c in cols), schema=schema)
        with self.sink.engine.connect() as conn:
            got = conn.execute(sa.select(*t.c).order_by(*t.c)).all()
        return [tuple(_norm(v) for v in r) for r in got]


def _norm(value: Any) -> Any:
    return Decimal(value) if isinstance(value, str) and value.replace(".", "", 1).isdigit() and "." in value else value


@pytest.fixture(params=["sqlite", "mariadb"])
def target(request: pytest.FixtureRequest, tmp_path: Path, unique: Any) -> Iterator[Target]:
    schema = unique("s")
    if request.param == "sqlite":
        url = make_url(f"sqlite:///{tmp_path / 'target.db'}")
        sink = SqlAlchemySink(url, control_schema=unique("ctl"))
        yield Target(sink, schema)
        sink.close()
        return
    stack: LocalStack = request.getfixturevalue("local_stack")
    control = unique("ctl")
    sink = SqlAlchemySink(make_url(stack.settings.mariadb_url()), control_schema=control)
    yield Target(sink, schema)
    sink.close()
    conn = stack.mariadb.connect()
    with conn.cursor() as cur:
        for db in (schema, control):
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    conn.close()


def test_insert_update_delete_and_replay_is_a_no_op(target: Target) -> None:
    t = target.items
    stream = [
        ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "amount": Decimal("1.50")}, table=t),
        ev(Op.CREATE, (20, 20), 2, {"id": 2, "name": "b", "amount": None}, table=t),
        ev(Op.UPDATE, (30, 30), 1, {"id": 1, "name": "a2", "amount": Decimal("2.25")}, table=t),
        ev(Op.DELETE, (40, 40), 2, table=t),
    ]
    target.apply(*stream[:2])
    target.apply(*stream[2:], offsets={("t", 0): 4})
    expected = [(1, "a2", Decimal("2.25"))]
    assert target.rows() == expected
    for event in stream:  # replay one by one, and all at once: nothing changes, nothing resurrects
        target.apply(event)
    target.apply(*stream)
    assert target.rows() == expected
    assert target.sink.stored_offsets(GROUP, [("t", 0), ("t", 1)]) == {("t", 0): 4}
    target.apply(offsets={("t", 0): 9, ("t", 1): 2})
    assert target.sink.stored_offsets(GROUP, [("t", 0), ("t", 1)]) == {("t", 0): 9, ("t", 1): 2}
    assert target.sink.reset_offsets(GROUP) == 2
    assert target.sink.stored_offsets(GROUP, [("t", 0)]) == {}


def test_older_change_never_overwrites_newer(target: Target) -> None:
    t = target.items
    target.apply(ev(Op.UPDATE, (50, 55), 1, {"id": 1, "name": "new", "amount": None}, table=t))
    target.apply(ev(Op.UPDATE, (50, 40), 1, {"id": 1, "name": "older-same-commit", "amount": None}, table=t))
    target.apply(ev(Op.CREATE, (30, 90), 1, {"id": 1, "name": "older-commit-higher-lsn", "amount": None}, table=t))
    assert target.rows() == [(1, "new", None)]
    # Newer by lsn only (same commit window), then newer by commit with a lower lsn: both apply.
    target.apply(ev(Op.UPDATE, (50, 60), 1, {"id": 1, "name": "newer-lsn", "amount": None}, table=t))
    assert target.rows() == [(1, "newer-lsn", None)]
    target.apply(ev(Op.UPDATE, (70, 5), 1, {"id": 1, "name": "newer-commit", "amount": None}, table=t))
    assert target.rows() == [(1, "newer-commit", None)]
    assert target.rows(cols=("__cdc_commit_lsn", "__cdc_lsn")) == [(70, 5)]


def test_toast_unavailable_column_keeps_stored_value(target: Target) -> None:
    t = target.items
    target.apply(ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "big text", "amount": Decimal("1.00")}, table=t))
    target.apply(
        ev(Op.UPDATE, (20, 20), 1, {"id": 1, "amount": Decimal("9.99")}, unavailable=frozenset({"name"}), table=t)
    )
    assert target.rows() == [(1, "big text", Decimal("9.99"))]


def test_truncate_watermark_blocks_older_changes(target: Target) -> None:
    t = target.items
    target.apply(ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "amount": None}, table=t))
    target.apply(ev(Op.CREATE, (30, 30), 3, {"id": 3, "name": "after", "amount": None}, table=t))
    target.apply(ev(Op.TRUNCATE, (20, 20), None, table=t))
    target.apply(ev(Op.CREATE, (15, 15), 2, {"id": 2, "name": "late-older", "amount": None}, table=t))
    assert target.rows() == [(3, "after", None)]


def test_keyless_table_inserts_dedup_and_deletes_once(target: Target) -> None:
    table = TableId(target.schema, "history")
    cols = (Column("aid", "int32"), Column("delta", "int32"))
    kw: dict[str, Any] = {"table": table, "columns": cols, "key_columns": ()}
    ins = [ev(Op.CREATE, (i, i), None, {"aid": 1, "delta": 5}, **kw) for i in (10, 11, 12)]
    delete = ev(Op.DELETE, (20, 20), None, None, before={"aid": 1, "delta": 5}, **kw)
    target.apply(*ins)
    target.apply(delete)
    for _ in range(2):  # full replay, twice
        target.apply(*ins, delete)
    assert target.rows(table, ("aid", "delta")) == [(1, 5), (1, 5)]


def test_hostile_identifiers(target: Target) -> None:
    table = TableId(target.schema + ' Odd "Schema`', 'select; DROP TABLE x; --"`')
    cols = (Column("Key Col", "int32", optional=False), Column('we"ird`%s', "string"), Column("order", "string"))
    e = ev(
        Op.CREATE,
        (1, 1),
        None,
        {"Key Col": 1, 'we"ird`%s': "v", "order": "o"},
        table=table,
        columns=cols,
        key_columns=("Key Col",),
    )
    e = ChangeEvent(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "key": {"Key Col": 1}})
    target.apply(e)
    target.apply(
        ChangeEvent(
            **{
                **{f: getattr(e, f) for f in e.__dataclass_fields__},
                "op": Op.DELETE,
                "after": None,
                "position": Position(2, 2),
            }
        )
    )
    target.apply(e)  # the replayed insert stays deleted
    assert target.rows(table, ("Key Col", 'we"ird`%s', "order")) == []
    if target.sink.dialect == "mysql":
        conn = target.sink.engine.raw_connection()
        try:
            cur = conn.cursor()
            cur.execute("DROP DATABASE IF EXISTS `" + table.schema.replace("`", "``") + "`")
        finally:
            conn.close()


def test_new_source_column_is_added(target: Target) -> None:
    t = target.items
    target.apply(ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}, table=t))
    cols = (
        Column("id", "int32", optional=False),
        Column("name", "string"),
        Column("amount", "float64"),
        Column("added", "string"),
    )
    target.apply(ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": None, "added": "x"}, columns=cols, table=t))
    assert target.rows(cols=("id", "added")) == [(1, "x")]


def test_bad_data_is_rejected_not_retried(target: Target) -> None:
    t = target.items
    target.apply(ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}, table=t))
    with pytest.raises(BatchRejectedError):
        target.apply(ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "a", "amount": float("nan")}, table=t))
    target.apply(ev(Op.UPDATE, (3, 3), 1, {"id": 1, "name": "ok", "amount": None}, table=t))  # the sink recovers
    assert target.rows() == [(1, "ok", None)]


def test_keys_are_case_and_space_sensitive(target: Target) -> None:
    table = TableId(target.schema, "codes")
    cols = (Column("code", "string", optional=False), Column("n", "int32"))
    evs = [
        ChangeEvent("t", 0, next(_offsets), table, Op.CREATE, Position(i, i), 0, key={"code": code},
                    after={"code": code, "n": i}, columns=cols, key_columns=("code",), target=table)
        for i, code in enumerate(["a", "A", "a ", "é"], start=1)
    ]  # fmt: skip
    target.apply(*evs)
    assert sorted(target.rows(table, ("code", "n"))) == [("A", 2), ("a", 1), ("a ", 3), ("é", 4)]


def test_types_round_trip(target: Target) -> None:
    table = TableId(target.schema, "typed")
    src = "__debezium.source.column.type"
    cols = (
        Column("id", "int64", optional=False),
        Column("n38", "bytes", logical="org.apache.kafka.connect.data.Decimal",
               parameters={"scale": "10", src: "NUMERIC", "__debezium.source.column.length": "38",
                           "__debezium.source.column.scale": "10"}),
        Column("nfree", "struct", logical="io.debezium.data.VariableScaleDecimal", parameters={src: "NUMERIC"}),
        Column("ts", "int64", logical="io.debezium.time.MicroTimestamp", parameters={src: "TIMESTAMP"}),
        Column("tstz", "string", logical="io.debezium.time.ZonedTimestamp", parameters={src: "TIMESTAMPTZ"}),
        Column("tmtz", "string", logical="io.debezium.time.ZonedTime", parameters={src: "TIMETZ"}),
        Column("u", "string", logical="io.debezium.data.Uuid", parameters={src: "UUID"}),
        Column("j", "string", logical="io.debezium.data.Json", parameters={src: "JSONB"}),
        Column("ba", "bytes", parameters={src: "BYTEA"}),
        Column("ta", "array", parameters={src: "_TEXT"}, items=Column("", "string")),
        Column("iv", "int64", logical="io.debezium.time.MicroDuration", parameters={src: "INTERVAL"}),
        Column("b", "boolean", parameters={src: "BOOL"}),
    )  # fmt: skip
    big = Decimal("3.14159265358979323846264338327950288419716939937510")
    after = {
        "id": 1,
        "n38": Decimal("1234567890123456789012345678.0123456789"),
        "nfree": big,
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        "tstz": dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        "tmtz": dt.time(10, 34, 56, 123456, tzinfo=dt.UTC),
        "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "j": '{"b": {"c": null}}',
        "ba": b"\xde\xad\xbe\xef\x00",
        "ta": ["x", None, "z y"],
        "iv": dt.timedelta(days=3, seconds=5, microseconds=7),
        "b": True,
    }
    e = ChangeEvent("t", 0, next(_offsets), table, Op.CREATE, Position(1, 1), 0, key={"id": 1}, after=after,
                    columns=cols, key_columns=("id",), target=table)  # fmt: skip
    target.apply(e)
    names = tuple(c.name for c in cols)
    (row,) = target.rows(table, names)
    got = dict(zip(names, row, strict=True))
    assert Decimal(str(got["n38"])) == after["n38"]
    assert Decimal(str(got["nfree"])) == big  # exact: stored as text where DECIMAL(65,30) would round
    assert str(got["ts"]).startswith("2024-01-02 03:04:05.678901")
    assert str(got["tstz"]).startswith("2024-01-01 21:34:05.678901")  # normalised to UTC
    assert str(got["tmtz"]).startswith("10:34:56.123456")
    assert got["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert got["j"] == '{"b": {"c": null}}'
    assert bytes(got["ba"]) == b"\xde\xad\xbe\xef\x00"
    assert got["ta"] == '["x",null,"z y"]'
    assert got["iv"] == (3 * 86400 + 5) * 1_000_000 + 7
    assert got["b"] in (1, True)


def test_mariadb_table_with_another_unique_index_is_refused(local_stack: LocalStack, unique: Any) -> None:
    """ON DUPLICATE KEY UPDATE fires on any unique index: the sink refuses such a table."""
    schema, control = unique("s"), unique("ctl")
    conn = local_stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{schema}`")
            cur.execute(
                f"CREATE TABLE `{schema}`.items (id INT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(10,2),"
                " __cdc_commit_lsn BIGINT NOT NULL, __cdc_lsn BIGINT NOT NULL, UNIQUE KEY by_name (name))"
            )
        # A plain mysql:// URL to a MariaDB server works too (the server kind is learnt on connect).
        url = make_url(local_stack.settings.mariadb_url().replace("mariadb+pymysql", "mysql+pymysql"))
        sink = SqlAlchemySink(url, control_schema=control)
        t = Target(sink, schema)
        with pytest.raises(BatchRejectedError, match="unique index"):
            t.apply(ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}, table=t.items))
        assert sink.stored_offsets(GROUP, [("t", 0)]) == {}
        sink.close()
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
            cur.execute(f"DROP DATABASE IF EXISTS `{control}`")
        conn.close()


def test_transient_errors_are_retryable(tmp_path: Path, local_stack: LocalStack) -> None:
    """An unreachable server is a TransientSinkError (retry with backoff), not a rejected batch."""
    from sinks.base import TransientSinkError  # noqa: PLC0415

    dead = make_url(f"mariadb+pymysql://cdc:cdc@127.0.0.1:{local_stack.settings.mariadb_port + 50}/")
    sink = SqlAlchemySink(dead)
    with pytest.raises(TransientSinkError):
        sink.stored_offsets(GROUP, [("t", 0)])
    sink.close()
