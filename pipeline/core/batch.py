"""The reduced batch: what one sink transaction applies, per target table (the sink contract's input).

Built by :func:`pipeline.core.reduce.reduce_events`; read by every sink.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.core.events import ChangeEvent, Column, Op, Position, Row, TableId


@dataclass(slots=True)
class Upsert:
    """A row to insert or update when ``position`` is newer than the stored version.

    ``row`` holds every available column (no TOAST placeholders); ``unavailable`` names the
    columns that must keep their stored value.
    """

    key: str
    key_values: Row
    row: Row
    position: Position
    ts_ms: int
    op: Op
    unavailable: frozenset[str] = frozenset()


@dataclass(slots=True)
class Delete:
    """A key to delete when ``position`` is newer than the stored version; leaves a tombstone.

    For keyless tables ``key_values`` is the whole ``before`` image.
    """

    key: str
    key_values: Row
    position: Position
    ts_ms: int


@dataclass(slots=True)
class TableChanges:
    """Reduced changes of one target table in one batch."""

    table: TableId
    source: TableId
    key_columns: tuple[str, ...]
    columns: tuple[Column, ...] | None
    upserts: dict[str, Upsert] = field(default_factory=dict)
    deletes: dict[str, Delete] = field(default_factory=dict)
    truncate: Position | None = None
    events: int = 0
    max_ts_ms: int = 0

    @property
    def keyless(self) -> bool:
        """True for tables without a primary key (``append_dedup`` mode)."""
        return not self.key_columns


@dataclass(slots=True)
class ReducedBatch:
    """What one sink transaction applies: changes per target table, in first-seen order."""

    tables: dict[TableId, TableChanges] = field(default_factory=dict)

    @property
    def events(self) -> int:
        """Number of change events reduced into this batch."""
        return sum(t.events for t in self.tables.values())


def key_text(values: Iterable[Any]) -> str:
    """Canonical text of a key's values, stable across replays: a JSON array.

    Decimals, UUIDs, dates and times are written by their ``str()``; bytes as hex.
    """
    return orjson.dumps(list(values), default=_json_default).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def row_id(position: Position) -> str:
    """Synthetic row identity of keyless tables: the position of the change that wrote the row."""
    return f"{position.commit_lsn}:{position.lsn}"


def read_row_id(event: ChangeEvent) -> str:
    """Row identity of a keyless table's snapshot read: its Kafka coordinates.

    Every read of one initial snapshot has the same position, so the position cannot tell
    rows apart; the message's topic, partition and offset can, and they stay the same when
    the topic is consumed again (replays dedup). A snapshot Debezium re-runs from scratch
    produces new messages: see the keyless-mode notes in the README.
    """
    return f"r:{event.topic}:{event.partition}:{event.offset}"
