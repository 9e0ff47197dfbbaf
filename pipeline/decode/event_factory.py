"""Fast construction of :class:`~pipeline.core.events.ChangeEvent` for hot paths (decoding,
transforms): :func:`make_event` sets the slots of the frozen dataclass directly, about 3x
faster than its constructor, with the same result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId

__all__ = ["EVENT_FIELDS", "FAST_EVENTS", "make_event", "new_event"]

# ChangeEvent is a frozen slots dataclass: its generated __init__ sets each of its 18 fields with
# object.__setattr__ (~5 µs per event, a sixth of the decode time). On the hot path the slots are
# set through their member descriptors instead (~1.5 µs), which is what __init__ does minus the
# per-field lookups. This is only done while the field list is exactly the one below (checked at
# import); otherwise the regular constructor is used. tests/unit/test_decode.py checks both agree.
EVENT_FIELDS = (
    "topic",
    "partition",
    "offset",
    "table",
    "op",
    "position",
    "ts_ms",
    "key",
    "before",
    "after",
    "tx_id",
    "snapshot",
    "columns",
    "key_columns",
    "unavailable",
    "target",
    "extra",
    "size",
)
FAST_EVENTS = tuple(f.name for f in dataclasses.fields(ChangeEvent)) == EVENT_FIELDS and all(
    type(getattr(ChangeEvent, name, None)).__name__ == "member_descriptor" for name in EVENT_FIELDS
)


def _slow_event(*values: Any) -> ChangeEvent:
    return ChangeEvent(**dict(zip(EVENT_FIELDS, values, strict=True)))


def _fast_event_factory() -> Callable[..., ChangeEvent]:
    s = tuple(getattr(ChangeEvent, name).__set__ for name in EVENT_FIELDS)
    new = object.__new__

    def make(
        topic: str,
        partition: int,
        offset: int,
        table: TableId,
        op: Op,
        position: Position,
        ts_ms: int,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        tx_id: int | None,
        snapshot: bool,
        columns: tuple[Column, ...] | None,
        key_columns: tuple[str, ...],
        unavailable: frozenset[str],
        target: TableId | None,
        extra: dict[str, Any],
        size: int,
    ) -> ChangeEvent:
        event: ChangeEvent = new(ChangeEvent)
        s[0](event, topic)
        s[1](event, partition)
        s[2](event, offset)
        s[3](event, table)
        s[4](event, op)
        s[5](event, position)
        s[6](event, ts_ms)
        s[7](event, key)
        s[8](event, before)
        s[9](event, after)
        s[10](event, tx_id)
        s[11](event, snapshot)
        s[12](event, columns)
        s[13](event, key_columns)
        s[14](event, unavailable)
        s[15](event, target)
        s[16](event, extra)
        s[17](event, size)
        return event

    return make


new_event: Callable[..., ChangeEvent] = _fast_event_factory() if FAST_EVENTS else _slow_event
""":func:`make_event` without its own call frame (the decoder's hot path): the same positional
arguments, untyped."""


def make_event(
    topic: str,
    partition: int,
    offset: int,
    table: TableId,
    op: Op,
    position: Position,
    ts_ms: int,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tx_id: int | None,
    snapshot: bool,
    columns: tuple[Column, ...] | None,
    key_columns: tuple[str, ...],
    unavailable: frozenset[str],
    target: TableId | None,
    extra: dict[str, Any],
    size: int,
) -> ChangeEvent:
    """``ChangeEvent(...)`` with every field given positionally, in declaration order, about
    3x faster than the dataclass constructor (for hot paths: decoding, transforms). The result
    is an ordinary frozen ChangeEvent, equal to the one the constructor builds."""
    return new_event(
        topic,
        partition,
        offset,
        table,
        op,
        position,
        ts_ms,
        key,
        before,
        after,
        tx_id,
        snapshot,
        columns,
        key_columns,
        unavailable,
        target,
        extra,
        size,
    )
