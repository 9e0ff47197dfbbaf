"""Per-batch reduction: applying the reduced batch equals applying every event in order.

The model target below applies the version guard (newer position wins, tombstones block
older writes) and keeps unchanged TOASTed columns; hypothesis checks that reducing first
gives the same final state for any sequence of changes, including replays and reordering
across keys.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.batch import key_text
from pipeline.core.events import ChangeEvent, Op, Position, TableId, position_from_source
from pipeline.core.reduce import reduce_events

T = TableId("public", "t")
_offsets = count()


def event(op: Op, pos: int, key: int, row: dict[str, Any] | None, unavailable: frozenset[str]) -> ChangeEvent:
    return ChangeEvent(
        topic="x",
        partition=0,
        offset=next(_offsets),
        table=T,
        op=op,
        position=Position(pos, pos),
        ts_ms=pos,
        key={"id": key},
        after=None if op is Op.DELETE else {"id": key, **(row or {})},
        key_columns=("id",),
        unavailable=unavailable,
    )


Model = dict[str, tuple[Position, dict[str, Any] | None]]  # key -> (version, row or None = tombstone)


def apply_one(model: Model, e: ChangeEvent) -> None:
    key = key_text([e.key["id"]]) if e.key else ""
    current = model.get(key)
    if current is not None and current[0] >= e.position:
        return
    if e.op is Op.DELETE:
        model[key] = (e.position, None)
        return
    row = dict(e.after or {})
    old_row = current[1] if current else None
    for col in e.unavailable:
        if old_row is not None and col in old_row:
            row[col] = old_row[col]
    model[key] = (e.position, row)


def apply_reduced(model: Model, events: list[ChangeEvent]) -> None:
    batch = reduce_events(events, "public")
    for changes in batch.tables.values():
        for d in changes.deletes.values():
            current = model.get(d.key)
            if current is None or current[0] < d.position:
                model[d.key] = (d.position, None)
        for u in changes.upserts.values():
            current = model.get(u.key)
            if current is not None and current[0] >= u.position:
                continue
            row = dict(u.row)
            old_row = current[1] if current else None
            for col in u.unavailable:
                if old_row is not None and col in old_row:
                    row[col] = old_row[col]
            model[u.key] = (u.position, row)


def visible(model: Model) -> dict[str, dict[str, Any]]:
    return {k: r for k, (_, r) in model.items() if r is not None}


change = st.tuples(
    st.sampled_from([Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ]),
    st.integers(0, 4),  # key
    st.integers(0, 1000),  # value
    st.booleans(),  # the big column is an unchanged TOAST value
)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, max_size=40), st.integers(1, 40), st.integers(0, 39))
def test_reduction_equals_sequential_apply(changes: list[Any], batch_size: int, replay_from: int) -> None:
    stream: list[ChangeEvent] = []
    exists: set[int] = set()
    for pos, (op, key, value, maybe_toast) in enumerate(changes, start=1):
        # As in PostgreSQL: only an UPDATE of an existing row can leave a TOASTed value unsent.
        toast = maybe_toast and op is Op.UPDATE and key in exists
        row = {"v": value} if toast else {"v": value, "big": f"text-{value}"}
        stream.append(event(op, pos, key, row, frozenset({"big"}) if toast else frozenset()))
        if op is Op.DELETE:
            exists.discard(key)
        else:
            exists.add(key)
    # Delivery is at-least-once: a suffix of the stream is delivered again after a restart.
    delivered = stream + stream[min(replay_from, len(stream)) :]
    expected: Model = {}
    for e in delivered:
        apply_one(expected, e)
    got: Model = {}
    for i in range(0, len(delivered), batch_size):
        apply_reduced(got, delivered[i : i + batch_size])
    assert visible(got) == visible(expected)


def test_truncate_keeps_newest_position() -> None:
    t1 = event(Op.CREATE, 5, 1, {"v": 1}, frozenset())
    trunc = ChangeEvent("x", 0, 99, T, Op.TRUNCATE, Position(7, 7), 7, key_columns=("id",))
    older = ChangeEvent("x", 0, 100, T, Op.TRUNCATE, Position(3, 3), 3, key_columns=("id",))
    batch = reduce_events([t1, trunc, older], "public")
    assert batch.tables[T].truncate == Position(7, 7)
    assert batch.events == 3


def test_route_target_groups_by_target_table() -> None:
    e = event(Op.CREATE, 1, 1, {"v": 1}, frozenset())
    routed = ChangeEvent(**{**{f: getattr(e, f) for f in e.__dataclass_fields__}, "target": TableId("a", "b")})
    batch = reduce_events([e, routed], "tgt")
    assert set(batch.tables) == {TableId("tgt", "t"), TableId("a", "b")}


def test_positions_order_commit_first() -> None:
    # T1 writes at LSN 100 but commits after T2 (LSN 200): T1's change is newer.
    t2 = Position(commit_lsn=150, lsn=200)
    t1 = Position(commit_lsn=250, lsn=100)
    assert t1 > t2


def test_position_rules_from_observed_debezium_values() -> None:
    read = position_from_source((None, 102127688), 102127688, is_read=True)
    t2 = position_from_source((None, 102127808), 102127808, is_read=False)
    t1 = position_from_source((102127936, 102127728), 102127728, is_read=False)
    t3 = position_from_source((102127984, 102127984), 102127984, is_read=False)
    assert read < t2 < t1 < t3
    # A transaction that began before the snapshot point but committed after it is newer
    # than the snapshot's stale read, even though its own LSN is lower.
    long_tx = position_from_source((None, 102127000), 102127000, is_read=False)
    assert long_tx > read
    assert position_from_source(None, 5, is_read=False) == Position(5, 5)


def test_a_truncate_first_in_the_batch_does_not_make_the_table_keyless() -> None:
    """Truncate events carry no key: when one was a table's first event in a batch, the rest of
    the batch was reduced as if the table had no primary key, and a delete of key 2 was lost."""
    truncate = ChangeEvent(
        topic="x", partition=0, offset=next(_offsets), table=T, op=Op.TRUNCATE, position=Position(1, 1), ts_ms=1
    )
    events = [
        truncate,
        event(Op.CREATE, 2, 2, {"v": "a"}, frozenset()),
        event(Op.UPDATE, 3, 2, {"v": "b"}, frozenset()),
        event(Op.DELETE, 4, 2, None, frozenset()),
        event(Op.CREATE, 5, 3, {"v": "c"}, frozenset()),
    ]
    (changes,) = reduce_events(events, "public").tables.values()
    assert changes.key_columns == ("id",)
    assert not changes.keyless
    assert changes.truncate == Position(1, 1)
    assert set(changes.deletes) == {key_text([2])}
    assert set(changes.upserts) == {key_text([3])}
