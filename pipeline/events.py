"""Typed change events: what decoders produce, transforms rewrite and sinks apply.

One :class:`ChangeEvent` per Debezium change message (op ``c``/``u``/``d``/``r``/``t``),
whether it was streamed or read by a snapshot. Values are already converted to exact Python
types (``Decimal``, ``datetime`` with zone, ``uuid.UUID``, ``bytes``...). Nothing here knows
about Kafka clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Op(StrEnum):
    """Debezium ``op``: create, update, delete, read (snapshot) and truncate."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"
    TRUNCATE = "t"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a change stands in the source's commit order; the version key of target rows.

    Compared as the pair ``(commit_lsn, lsn)``:

    - ``commit_lsn`` is ``source.sequence[0]``, the LSN of the last commit Debezium had
      processed before this event (Debezium PostgreSQL connector docs, "source metadata":
      ``sequence`` is ``["<last committed LSN>", "<current LSN>"]``). pgoutput sends a
      transaction only after it commits, in commit order, so this component never decreases
      along the stream, and it grows from one transaction to the next.
    - ``lsn`` is ``source.lsn`` (= ``sequence[1]``), the change's own WAL position, which
      orders the changes inside one transaction.

    ``source.lsn`` alone is *not* monotonic across interleaved transactions and ``txId`` is
    not commit-ordered (see ``../shared/design.md``, invariant 2). When ``sequence`` is absent
    or its first element is null (snapshot reads), ``commit_lsn`` is ``source.lsn``.
    Both are unsigned 64-bit LSNs (bytes into the WAL), which fit PostgreSQL ``bigint`` in
    practice (LSNs below 2**63).
    """

    commit_lsn: int
    lsn: int

    def __str__(self) -> str:
        return f"{format_lsn(self.commit_lsn)}/{format_lsn(self.lsn)}"


def format_lsn(lsn: int) -> str:
    """PostgreSQL text form of an LSN, e.g. ``16/B374D848`` (pg_lsn output)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``16/B374D848`` (pg_lsn text) or a decimal string into an integer LSN.

    Raises ValueError on anything else.
    """
    if "/" in text:
        hi, lo = text.split("/", 1)
        return (int(hi, 16) << 32) | int(lo, 16)
    return int(text)


@dataclass(frozen=True, slots=True, order=True)
class TableId:
    """A table as ``schema.table`` (unquoted names, any characters)."""

    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a change event's row schema (Debezium JSON converter schema).

    ``type`` is the Connect type (``int32``, ``string``, ``bytes``, ``struct``...), ``logical``
    the Debezium/Connect semantic name (``io.debezium.time.MicroTimestamp``...), ``parameters``
    the schema parameters, among them ``__debezium.source.column.type``,
    ``__debezium.source.column.length`` and ``__debezium.source.column.scale`` when the
    connector sets ``column.propagate.source.type``.
    """

    name: str
    type: str
    optional: bool = True
    logical: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    items: Column | None = None  # element schema of an array

    @property
    def source_type(self) -> str | None:
        """The source column type name (e.g. ``NUMERIC``, ``TIMESTAMPTZ``) if propagated."""
        return self.parameters.get("__debezium.source.column.type")


Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A decoded Debezium change.

    Shapes: ``key`` maps primary-key columns to values (None for keyless tables);
    ``before``/``after`` map column names to exact Python values (``after`` is None for
    deletes and truncates). ``unavailable`` lists columns whose value was the TOAST
    placeholder ``__debezium_unavailable_value``; they are *absent* from ``after`` and must
    not overwrite stored values. ``ts_ms`` is the source commit time (``source.ts_ms``,
    milliseconds since the epoch). ``columns`` is the row schema when the message carried
    one (JSON with schemas, Avro), else None.
    """

    topic: str
    partition: int
    offset: int
    table: TableId
    op: Op
    position: Position
    ts_ms: int
    key: Row | None = None
    before: Row | None = None
    after: Row | None = None
    tx_id: int | None = None
    snapshot: bool = False
    columns: tuple[Column, ...] | None = None
    key_columns: tuple[str, ...] = ()
    unavailable: frozenset[str] = frozenset()
    target: TableId | None = None  # set by the route transform; sinks default to the target schema
    extra: Row = field(default_factory=dict)  # columns added by transforms
    size: int = 0  # bytes of the Kafka message (key + value)

    @property
    def row(self) -> Row | None:
        """The row image a sink writes: ``after`` plus transform-added columns."""
        if self.after is None:
            return None
        return {**self.after, **self.extra} if self.extra else self.after


@dataclass(frozen=True, slots=True)
class Skip:
    """A message that is consumed but not applied, with the reason.

    ``reason`` is one of ``tombstone`` (null value after a delete), ``heartbeat``,
    ``transaction`` (transaction metadata), ``notification``, ``filtered`` (dropped by a
    transform).
    """

    topic: str
    partition: int
    offset: int
    reason: str


class PoisonMessageError(Exception):
    """A message that can never be decoded, transformed or applied; it goes to the DLQ.

    Carries the origin (topic, partition, offset) and a human-readable ``reason``.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
