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

    Compared as the pair ``(commit_lsn, lsn)``, derived from Debezium's ``source.sequence``
    (``["<last commit LSN>", "<event LSN>"]``, Debezium PostgreSQL connector docs, "source
    metadata") and ``source.lsn`` by :func:`position_from_source`.

    Facts it rests on, observed with Debezium 3.6 / pgoutput on the local stack (T1 writes
    first but commits after T2)::

        r id=1  lsn=102127688 txId=875 sequence=[null,"102127688"]        initial snapshot
        u id=2  lsn=102127808 txId=877 sequence=[null,"102127808"]        T2, first streamed tx
        u id=1  lsn=102127728 txId=876 sequence=["102127936","102127728"] T1 (commits second)
        u id=1  lsn=102127984 txId=878 sequence=["102127984","102127984"] T3

    - ``sequence[0]`` is the end LSN of the *previous* commit Debezium processed. pgoutput
      sends whole transactions in commit order, so it strictly increases from one transaction
      to the next and is constant within one. ``source.lsn`` orders changes inside a
      transaction but NOT across them (T1's 102127728 < T2's 102127808), and ``txId`` is not
      commit-ordered (876 committed after 877).
    - ``sequence[0]`` is null for initial-snapshot reads and for the first transaction streamed
      after the snapshot (no commit processed yet; the connector restores it from its offsets
      after a restart). Rule: a *read* with a null ``sequence[0]`` gets ``commit_lsn = 0``
      (every initial-snapshot read is older than every streamed change: the slot streams only
      transactions committed after the snapshot point); a *streamed* change with a null
      ``sequence[0]`` gets ``commit_lsn = lsn`` (> 0, so newer than the reads, and below the
      next transaction's ``sequence[0]``, which is its own commit end). Using ``lsn`` for reads
      too would be wrong: a transaction that began before the snapshot (lsn < snapshot LSN)
      but committed after it would look older than the stale read.
    - Incremental-snapshot reads are emitted from the streaming loop and carry a non-null
      ``sequence``, i.e. their real place in the stream (DBLog watermarks).

    LSNs are unsigned 64-bit byte positions in the WAL; they fit PostgreSQL ``bigint`` in
    practice (below 2**63).
    """

    commit_lsn: int
    lsn: int

    def __str__(self) -> str:
        return f"{format_lsn(self.commit_lsn)}/{format_lsn(self.lsn)}"


def position_from_source(sequence: tuple[int | None, int | None] | None, lsn: int | None, is_read: bool) -> Position:
    """The :class:`Position` of a change from ``source.sequence`` (parsed to integers, either
    element may be None) and ``source.lsn``; ``is_read`` is True for op ``r``.

    Raises ValueError when neither the sequence nor ``lsn`` gives the change's own LSN.
    """
    last_commit, own = sequence if sequence is not None else (None, None)
    if own is None:
        own = lsn
    if own is None:
        raise ValueError("the event has neither source.sequence nor source.lsn")
    if last_commit is None:
        last_commit = 0 if is_read else own
    return Position(last_commit, own)


def format_lsn(lsn: int) -> str:
    """PostgreSQL text form of an LSN, e.g. ``16/B374D848`` (pg_lsn output)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The byte position of a ``pg_lsn`` text ``'16/B374D848'`` (two hex halves of 32 bits,
    surrounding blanks ignored; PostgreSQL docs "pg_lsn Type"); inverse of :func:`format_lsn`.

    Raises ValueError for anything else.
    """
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a pg_lsn: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


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
    connector sets ``column.propagate.source.type``. ``default`` is the column's default value
    (the field schema's ``default``, converted like a row value; None when the schema has
    none): Debezium sets it when it knows the source column's default.
    """

    name: str
    type: str
    optional: bool = True
    logical: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    items: Column | None = None  # element schema of an array
    default: Any = None

    @property
    def source_type(self) -> str | None:
        """The source column type name (e.g. ``NUMERIC``, ``TIMESTAMPTZ``) if propagated."""
        return self.parameters.get("__debezium.source.column.type")


Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Point:
    """A PostgreSQL ``POINT`` value (Debezium ``io.debezium.data.geometry.Point``).

    Debezium PostgreSQL connector docs, "Data type mappings" > "Basic types": a struct of two
    ``FLOAT64`` coordinates ``x``/``y``; the JSON also carries ``wkb`` (Well-Known Binary of the
    point) and ``srid`` (null for the built-in type). ``str()`` gives PostgreSQL's text input
    form ``(x,y)``.
    """

    x: float
    y: float
    wkb: bytes | None = None
    srid: int | None = None

    def __str__(self) -> str:
        return f"({self.x!r},{self.y!r})"


@dataclass(frozen=True, slots=True)
class Geometry:
    """A PostGIS ``geometry``/``geography`` value: Well-Known Binary plus SRID.

    Debezium PostgreSQL connector docs, "Data type mappings" > "PostGIS types":
    ``io.debezium.data.geometry.Geometry`` (planar) and ``...Geography`` (spherical) are structs
    ``{wkb: BYTES, srid: INT32}``. ``geography`` tells which one it was.
    """

    wkb: bytes
    srid: int | None = None
    geography: bool = False


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
    ``transaction`` (transaction metadata), ``notification``, ``message`` (a logical decoding
    message, op ``m``, from ``pg_logical_emit_message``), ``filtered`` (dropped by a
    transform).
    """

    topic: str
    partition: int
    offset: int
    reason: str
