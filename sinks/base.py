"""The Sink contract: apply one reduced batch atomically, with the offsets it covers.

Timing rules (one sentence each, like arroyo's strategy interface):

- ``stored_offsets`` may block on I/O; it is called from the runner's rebalance callback.
- ``apply`` writes rows, deletes, truncates and offsets in ONE transaction and returns only
  after the commit; it never sleeps: a transient failure raises :class:`TransientSinkError`
  (the runner backs off and calls ``apply`` again with the same batch), anything else raises
  :class:`BatchRejectedError` or another exception (the runner isolates the bad event or stops).
- ``close`` releases connections; the sink is unusable afterwards.

Offsets map ``(topic, partition)`` to the *next* offset to consume (last applied + 1), and
are stored per consumer group in the target's control schema (design invariant 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson
import psycopg

from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import FatalError, TransientError
from pipeline.core.events import Column, TableId

TopicPartition = tuple[str, int]
OffsetMap = Mapping[TopicPartition, int]
KeyBound = tuple[Any, ...]
KeyRange = tuple[KeyBound | None, KeyBound | None]
"""``(low, high)``: rows with ``low < key <= high`` (row-value order); None is unbounded on that side."""
Checksum = tuple[int, str | None]
"""``(row count, md5 hex or None when empty)``."""


class TransientSinkError(TransientError):
    """A target failure worth retrying with backoff: connection loss, serialization failure,
    deadlock, a stalled target. ``retry_after_s`` is a hint (seconds) or None."""


class TargetSchemaError(FatalError):
    """A target table or column the pipeline wrote was dropped behind its back.

    Not retried and not dead-lettered: every later event of the table would fail the same way,
    and re-creating the column empty would silently lose its values. The worker stops without
    committing; the message says which table/columns and how to recover.
    """


class BatchRejectedError(Exception):
    """The target refused the batch for a reason that retrying will not fix (bad data, a
    constraint, a dropped column). The runner bisects the batch to find the event at fault."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a committed ``apply`` wrote: rows upserted and deleted (after the version guard),
    tables truncated, the commit wall-clock time (seconds since the epoch), and ``stale``: per
    target table, the keys (``Upsert.key`` / ``Delete.key`` of the batch) of the rows that had
    no effect because the target already held them at a position at least as new (the version
    guard; a replay), a newer tombstone or the truncate watermark covered them. A delete is
    stale when the key's tombstone was already at or past its position. Tables without stale
    rows are absent."""

    upserted: int
    deleted: int
    truncated: int
    committed_at: float
    stale: Mapping[TableId, frozenset[str]] = field(default_factory=dict)

    @property
    def stale_rows(self) -> int:
        """Number of rows of the batch that were stale (all tables)."""
        return sum(len(keys) for keys in self.stale.values())


class Sink(Protocol):
    """A target database; see the module docstring for the timing rules."""

    def stored_offsets(self, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offsets stored for ``group``; partitions never written are absent."""

    def apply(self, batch: ReducedBatch, group: str, offsets: OffsetMap) -> ApplyResult:
        """Apply ``batch`` and store ``offsets`` in one transaction (see module docstring)."""

    def reset_offsets(self, group: str) -> int:
        """Delete the stored offsets of ``group`` (replay from Kafka); returns rows deleted."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    """A column as a database's catalog reports it: name, type text (PostgreSQL ``format_type``),
    type name (PostgreSQL ``pg_type.typname``; other backends repeat the type text) and effective
    collation (None when not collatable or when the backend orders text by code point)."""

    name: str
    type: str
    typname: str
    collation: str | None = None


@dataclass(frozen=True, slots=True)
class CompareColumn:
    """A compared column: its source and target names, the *source* ``pg_type.typname`` (which
    decides the canonical text) and whether the target's type equals the source's."""

    source: str
    target: str
    typname: str
    same_type: bool = True


@dataclass(frozen=True, slots=True)
class ChecksumPlan:
    """What a verifier checksums for one table: source and target table, compared columns, the
    key (empty: keyless, the target keyed by ``__cdc_row_id``), ``collate_c`` (key comparisons
    under the "C" collation because the two sides' key collations differ), ``target_exists``
    (False before the sink created the table: the target side is then empty) and
    ``numeric_text_exact`` (``numeric`` columns compared by their text, display scale included:
    ``1.50`` differs from ``1.5``; by value otherwise)."""

    table: TableId
    target: TableId
    columns: tuple[CompareColumn, ...]
    key: tuple[CompareColumn, ...]
    collate_c: bool = False
    target_exists: bool = True
    numeric_text_exact: bool = False

    @property
    def keyless(self) -> bool:
        """True when the source table has no primary key."""
        return not self.key


@dataclass(frozen=True, slots=True)
class VersionedKey:
    """A target row's key (target column order of the plan's key) and its version columns
    ``(__cdc_commit_lsn, __cdc_lsn)`` as read, for a guarded delete."""

    key: KeyBound
    versions: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """The last verification of one table, as stored in ``<control_schema>.verify_results``:
    row counts, chunk counts, when (aware) and ``detail`` (the JSON form of the table's result)."""

    table: str
    ok: bool
    status: str
    rows_source: int
    rows_target: int
    chunks: int
    mismatched_chunks: int
    verified_at: datetime
    target_table: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowImage:
    """One row as a :class:`ChecksumSide` read it, for key-level comparison.

    ``key``: the key values as this side's driver returned them (plan key order; empty for a
    keyless plan); ``key_text``: the canonical text of the key (keyed) or of the whole row
    (keyless), equal on both sides of a pair for equal data; ``texts``: the canonical text of
    each compared column (plan column order; None is SQL NULL); ``version``: on a PostgreSQL
    source side the row version's ``xmin`` (PostgreSQL "System Columns"), which changes with
    every update of the row; None on target sides.
    """

    key: KeyBound
    key_text: str
    texts: tuple[str | None, ...]
    version: str | None = None


def key_text(texts: Sequence[str | None]) -> str:
    """The canonical text of a key from its columns' canonical texts: a JSON array (pure)."""
    return orjson.dumps(list(texts)).decode()


class ChecksumSide(Protocol):
    """One side of a comparison of a planned table; both sides of a pair compute the same
    canonical row text (docs/design/verify.md), so equal data gives equal checksums."""

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        """The rows of ``key_range`` (keyed plans), only those whose key is in ``keys`` when given
        (key values in plan key order, as either side read them)."""

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        """The rows of ``key_range`` (keyed plans) as digests: ``texts`` is the one md5 (hex) of
        the row's canonical text, equal on both sides for equal rows; key and version as in
        :meth:`rows`. Cheaper than :meth:`rows` for narrowing a chunk to its differing keys."""

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        """Every row (keyless plans) of the hash buckets ``selected`` of ``buckets`` (the buckets
        of :meth:`buckets`); ``key_text`` is the row text, duplicates are separate images."""

    def chunk(self, key_range: KeyRange) -> Checksum:
        """Row count and checksum of the rows in ``key_range``."""

    def buckets(self, buckets: int) -> dict[int, Checksum]:
        """Per hash bucket ``0..buckets-1`` (first two bytes of the md5 of the row text, modulo
        ``buckets``): row count and checksum of the sorted multiset of row texts; empty buckets absent."""

    def count(self) -> int:
        """Rows of the table on this side."""


class TargetVerification(Protocol):
    """What the verifier needs from a target (design "Seams": checksums, results, guarded deletes).

    Opened by :meth:`Target.verification`; holds its own session, released by ``close``. Each call
    may block on I/O and raises :class:`TransientSinkError` when the target is unreachable.
    """

    def columns(self, table: TableId) -> list[CatalogColumn]:
        """The target table's columns in order; empty when it does not exist."""

    def sides(self, source: psycopg.Connection[Any], plan: ChecksumPlan) -> tuple[ChecksumSide, ChecksumSide]:
        """``(source side, target side)`` of ``plan``: the comparison's canonical form belongs to
        the target backend, so it also says how the (PostgreSQL) ``source`` is read."""

    def versioned_keys(self, plan: ChecksumPlan, key_range: KeyRange) -> list[VersionedKey]:
        """Keys and version columns of the target rows in ``key_range`` (keyed plans only)."""

    def guarded_delete(self, plan: ChecksumPlan, rows: Sequence[VersionedKey]) -> int:
        """Delete each row of ``rows`` only while its version columns still hold the values read
        (a row the pipeline rewrote meanwhile is kept), in one transaction; rows deleted."""

    def store_results(self, pipeline: str, records: Sequence[VerificationRecord]) -> None:
        """Upsert ``records`` (one per table) into ``<control_schema>.verify_results``."""

    def load_results(self, pipeline: str) -> dict[str, VerificationRecord]:
        """The stored last result per table name of ``pipeline``; empty when none was stored."""

    def close(self) -> None:
        """Release the session."""


class Target(Sink, Protocol):
    """The ``Target`` seam (design "Seams"): everything either plane needs from one target database.

    One implementation per backend (:class:`sinks.postgres.target.PostgresTarget`,
    :class:`sinks.sqlalchemy.target.SqlAlchemyTarget` for MariaDB/MySQL and SQLite), built by
    :func:`sinks.factory.make_target`. Nothing outside an implementation branches on the target
    kind or opens its own connection to the control tables. Reads may block on I/O; each raises
    :class:`TransientSinkError` when the target is unreachable.
    """

    @property
    def kind(self) -> str:
        """``postgresql``, ``mysql`` (MariaDB too) or ``sqlite``."""

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        """Every ``(topic, partition) -> next offset`` stored for ``group``; empty for a new group."""

    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        """The heartbeat ``ts`` (aware, UTC) of ``source_name`` applied into ``table``; None while
        the table or its row does not exist yet."""

    def verification(self, statement_timeout_s: float = 600.0) -> TargetVerification:
        """A :class:`TargetVerification` whose queries stop after ``statement_timeout_s`` seconds
        (where the backend supports a statement timeout); the caller closes it."""

    def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int | None]) -> int:
        """Overwrite stored offsets of ``group`` in ONE transaction (``cdc-pipeline offsets reset``):
        an int stores that next offset, None deletes the partition's row (its workers then start
        from the beginning); partitions not in ``offsets`` are left alone. Returns rows written
        or deleted. Only safe while no worker of the group runs (the caller checks)."""


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """A source sequence the cutover carries over: its ``schema.name`` on the source, ``kind``
    (``owned``: a serial column's, ``pg_depend`` deptype 'a'; ``identity``: deptype 'i';
    ``free``: configured free-standing) and, for owned and identity ones, the *target* table and
    column it feeds (None for free-standing ones)."""

    name: TableId
    kind: str
    table: TableId | None = None
    column: str | None = None


class TargetCutover(Protocol):
    """What the cutover needs from a target (design "Seams"): its durable state and the
    sequences. Opened by :func:`open_cutover`; holds its own session, released by ``close``.

    The state is one row per pipeline in ``<control_schema>.cutover_state`` (created on first
    save): the phase and the whole state document (JSON). Sequences are the backend's own
    (PostgreSQL ``setval``; MariaDB/MySQL ``AUTO_INCREMENT`` of the table, MariaDB ``SETVAL``
    for free-standing ones; SQLite ``sqlite_sequence``). Each call may block on I/O; an
    unreachable target raises :class:`TransientSinkError`.
    """

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored state document of ``pipeline``, or None when none was saved."""

    def save_state(self, pipeline: str, phase: str, state: Mapping[str, Any]) -> None:
        """Upsert ``pipeline``'s row (phase, JSON document, updated_at) and commit before returning."""

    def read_sequence(self, spec: SequenceSpec) -> int | None:
        """The target's last value of ``spec`` (the value a ``setval(..., true)`` would have set;
        MariaDB/MySQL: ``AUTO_INCREMENT - 1``), or None when the target has none."""

    def set_sequence(self, spec: SequenceSpec, value: int) -> str:
        """Make the target's next generated value of ``spec`` greater than ``value`` (PostgreSQL:
        ``setval(seq, value, true)``, creating a missing sequence; never changes a table's
        default). Returns what was set (e.g. ``public.items_id_seq``). Raises ValueError when the
        backend has no such object (a free-standing sequence on SQLite or MySQL)."""

    def close(self) -> None:
        """Release the session."""


@runtime_checkable
class CutoverCapable(Protocol):
    """A :class:`Target` that can open a :class:`TargetCutover` (every backend of this build)."""

    def cutover(self) -> TargetCutover:
        """A :class:`TargetCutover` on a session of its own; the caller closes it."""


def open_cutover(target: Target) -> TargetCutover:
    """``target.cutover()``; raises TypeError for a target without cutover support."""
    if not isinstance(target, CutoverCapable):
        raise TypeError(f"{type(target).__name__} has no cutover support")
    return target.cutover()


@dataclass(frozen=True, slots=True)
class PreparedTable:
    """A target table ready for a bulk load: its ``column_types`` (target column -> SQL type
    text: ``format_type`` on PostgreSQL, the SQLAlchemy type's text elsewhere), whether it is
    ``keyless`` (keyed by ``__cdc_row_id`` in columns mode) and the ``extra_columns`` that follow
    the data columns in a COPY (``("__cdc_commit_lsn", "__cdc_lsn"[, "__cdc_row_id"])``)."""

    table: TableId
    column_types: dict[str, str]
    keyless: bool
    extra_columns: tuple[str, ...]


class CopyWriter(Protocol):
    """The target end of a ``COPY ... FROM STDIN``: takes the COPY data stream in pieces."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (any slice of the COPY stream, text or binary format)."""


class TargetBulkLoad(Protocol):
    """Target side of a bulk initial load, on a session of its own. Each call may block on I/O;
    an unreachable target raises :class:`TransientSinkError`.

    The state is one JSON document per pipeline in ``<control_schema>.bulk_loads``.
    """

    supports_copy: bool
    """True when :meth:`copy_in` works (PostgreSQL); False on SQLAlchemy backends."""

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored load state of ``pipeline``, or None."""

    def save_state(self, pipeline: str, state: Mapping[str, Any]) -> None:
        """Upsert ``pipeline``'s state document and commit before returning."""

    def clear_state(self, pipeline: str) -> None:
        """Delete ``pipeline``'s state (no error when there is none) and commit."""

    def row_count(self, table: TableId) -> int:
        """The exact row count of ``table``; 0 when the table is absent."""

    def truncate(self, tables: Sequence[TableId]) -> None:
        """Empty ``tables`` (absent ones are ignored) and forget the pipeline bookkeeping of
        them (tombstones, truncation marks, row ids); one transaction, committed."""

    def prepare_table(self, table: TableId, columns: Sequence[Column], key_columns: Sequence[str]) -> PreparedTable:
        """Create ``table`` through the sink's own DDL when missing (adding missing columns
        otherwise), so the streaming path later finds it as its own. Raises
        :class:`TargetSchemaError` for a table the sink cannot take."""

    def copy_in(self, table: TableId, columns: Sequence[str], binary: bool) -> AbstractContextManager[CopyWriter]:
        """A ``COPY table (columns) FROM STDIN`` (binary or text format) in one target
        transaction, committed on a clean exit of the context and rolled back on an exception.
        Raises NotImplementedError unless :attr:`supports_copy`."""

    def close(self) -> None:
        """Release the session."""


@runtime_checkable
class BulkLoadCapable(Protocol):
    """A :class:`Target` that can open a :class:`TargetBulkLoad`."""

    def bulk_load(self) -> TargetBulkLoad:
        """A :class:`TargetBulkLoad` on a session of its own; the caller closes it."""


def open_bulk_load(target: Target) -> TargetBulkLoad:
    """``target.bulk_load()``; raises TypeError for a target without bulk-load support."""
    if not isinstance(target, BulkLoadCapable):
        raise TypeError(f"{type(target).__name__} has no bulk-load support")
    return target.bulk_load()
