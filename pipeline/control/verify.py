"""Source-vs-target verification for a safe cutover: row counts and checksums of key-ordered
chunks, computed server-side on both databases over a canonical text of each row.

How one pipeline is verified (:func:`verify_pipeline`):

1. **Catch up** (:func:`wait_caught_up`, bounded by ``max_wait_s``): write the source's
   heartbeat row (``<control_schema>.heartbeat``, captured and applied like any table), wait
   until the target's copy shows it (Debezium has streamed the WAL up to that commit and the
   pipeline applied that partition), then wait until the offsets the pipeline stored in its
   target reach the Kafka high watermarks of every change topic (everything published before
   the heartbeat is applied). What is still behind is reported per table, never as a mismatch.
2. **Plan** each table (:func:`plan_table`): source columns and primary key from the catalog,
   the transforms' column mapping (:meth:`pipeline.transform.transforms.Transformer.column_report`):
   renamed columns compared under their target names, masked and excluded columns reported as
   excluded, transform-added columns ignored, the pipeline's own ``__cdc_*`` columns never
   compared; a table whose rows the transforms filter (``ops``/``where``) or a hook may rewrite
   is *not verifiable* (the reason is reported).
3. **Chunks** (:func:`chunk_bounds`): key ranges of ``chunk_size`` rows computed on the source by
   keyset pagination (``ORDER BY key OFFSET chunk_size - 1 LIMIT 1`` from the previous bound);
   the first range is open below and the last open above, so target rows outside the source's
   key span are caught. Per chunk and side: ``count(*)`` and
   ``md5(string_agg(<row text>, E'\\n' ORDER BY <row text> COLLATE "C"))`` (one statement per
   side, identifiers through :class:`psycopg.sql.Identifier`; ordering by the row text under the
   "C" collation makes the checksum independent of each server's collation).
   Tables without a primary key (target keyed by ``__cdc_row_id``): the rows are spread over
   buckets by the first two bytes of ``md5(<row text>)`` and each bucket's sorted multiset is
   checksummed, so duplicated or missing copies of a row are detected.
4. **Recheck**: differing chunks are recomputed after another catch-up; a chunk is a confirmed
   mismatch only when both sides gave the same result twice while the pipeline was caught up;
   one that changes or cannot be confirmed is reported *in flight*.

Canonical row text (:func:`canonical_expr`), so that equal data compares equal across what
Debezium changes: ``numeric`` through ``trim_scale`` (Debezium drops trailing zeros of
unconstrained NUMERIC: ``VariableScaleDecimal``; ``NaN`` stays ``NaN``); ``timetz``
``AT TIME ZONE 'UTC'`` (Debezium sends ``ZonedTime`` normalised to UTC); ``json`` and ``jsonb``
through ``jsonb`` text (key order and white space normalised); ``bytea`` as hex; everything else
its text output under pinned session settings (``TimeZone=UTC``, ``DateStyle=ISO, YMD``,
``IntervalStyle=postgres``, ``extra_float_digits=1``: shortest exact floats, PostgreSQL
"Floating-Point Types"). The row is ``ROW(c1, ..., cn)::text`` of those texts, which tells NULL
(empty field) from the empty string (``""``) (PostgreSQL "Composite Types" > "Composite Type
Input and Output Syntax").

MariaDB/MySQL and SQLite targets (:func:`is_portable_target`): the same plans and chunks, but
both sides' rows are fetched and each row's canonical text is computed in Python by the
*source* column type (:mod:`sinks.sqlalchemy.canonical`: :class:`PortableSourceSide`,
:class:`PortableTargetSide`); catch-up reads the stored offsets through the SQLAlchemy sink
(:func:`wait_caught_up_portable`). Results are stored, and cutover readiness and repair are
available, for PostgreSQL targets only (``docs/targets.md``).

Repair (:func:`repair_pipeline`): per mismatched chunk of a keyed table, (a) a *guarded* DELETE
of target rows whose key the source lacks - only rows whose version columns still hold the
values read before the source was checked, so a row the pipeline (re)wrote meanwhile is kept -
and (b) a filtered incremental snapshot of the chunk's key range through the snapshot
coordinator (``additional-conditions``), which rewrites every source row of the range with a
newer position than the stale target copy. A keyless table is not repaired (a re-read would
append duplicates: its rows are keyed by position).

Cutover readiness (:class:`CutoverReadiness`, exported by :class:`CutoverMonitor`):
``cdc_cutover_ready`` is 1 only while the heartbeat lag has stayed below ``cutover_max_lag_s``
for ``cutover_hold_s`` AND the last verification of every table of the pipeline (stored in the
target's ``<control_schema>.verify_results``) was clean.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from connectors.debezium import TableRef, change_topic, heartbeat_table
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.monitor import PollingMonitor, heartbeat_target_table, read_heartbeat
from pipeline.control.snapshot import (
    Condition,
    ConsumerLagProbe,
    KeyRange,
    SnapshotCoordinator,
    SnapshotKind,
    SnapshotRequest,
    SnapshotSettings,
    key_range_filters,
    lag_per_partition,
    pipeline_offsets,
    topic_regex,
)
from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings, VerifyConfig
from pipeline.core.settings.root import Settings
from pipeline.transform.transformer import ColumnReport, build_transformer
from sinks.sqlalchemy import canonical
from sinks.sqlalchemy.ddl import dialect_kind, physical, read_shape
from sinks.sqlalchemy.types import adapt

log = get_logger(__name__)

Conn = psycopg.Connection[dict[str, Any]]

OWN_PREFIX = "__cdc_"
VERSION_COLUMNS = ("__cdc_commit_lsn", "__cdc_lsn")
RESULTS_TABLE = "verify_results"
MAX_BUCKETS = 65536

SESSION_SETTINGS = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)


# =========================================================================== settings


@dataclass(frozen=True, slots=True)
class VerifySettings:
    """Verifier and cutover settings (to become ``verify:`` in the YAML; defaults until then).

    - ``chunk_size``: rows per compared chunk (and per bucket of keyless tables).
    - ``max_wait_s``: bound of each catch-up wait (heartbeat, then offsets), seconds.
    - ``recheck_attempts``: catch-up + recompute rounds for differing chunks.
    - ``statement_timeout_s``: PostgreSQL ``statement_timeout`` of verification queries.
    - ``repair_timeout_s``: how long ``--repair`` waits for its snapshots to complete.
    - ``cutover_max_lag_s``/``cutover_hold_s``: ``cdc_cutover_ready`` needs the heartbeat lag
      below the former for the latter (seconds); keep the lag threshold above the connector's
      ``heartbeat_interval_ms`` (an idle source's heartbeat ages by that much between beats).
    - ``cutover_interval_s``: seconds between :class:`CutoverMonitor` polls.
    """

    @classmethod
    def from_config(cls, config: VerifyConfig) -> VerifySettings:
        """The verifier settings of the configuration file's ``verify:`` section."""
        return cls(**config.model_dump())

    chunk_size: int = 10_000
    max_wait_s: float = 300.0
    recheck_attempts: int = 2
    statement_timeout_s: float = 600.0
    repair_timeout_s: float = 3600.0
    cutover_max_lag_s: float = 30.0
    cutover_hold_s: float = 60.0
    cutover_interval_s: float = 15.0


# =========================================================================== canonical text


class Kind(StrEnum):
    """How a column's value is turned into canonical text (see the module docstring)."""

    TEXT = "text"
    NUMERIC = "numeric"
    JSON = "json"
    TIMETZ = "timetz"
    BYTEA = "bytea"


_KINDS = {
    "numeric": Kind.NUMERIC,
    "json": Kind.JSON,
    "jsonb": Kind.JSON,
    "timetz": Kind.TIMETZ,
    "bytea": Kind.BYTEA,
}


def canonical_kind(typname: str) -> Kind:
    """The :class:`Kind` of a column from its ``pg_type.typname`` (arrays, ``_numeric`` etc., are TEXT)."""
    return _KINDS.get(typname, Kind.TEXT)


def canonical_expr(column: sql.Composable, kind: Kind, native: bool = True) -> sql.Composable:
    """SQL giving the canonical text of ``column`` (an identifier).

    ``native`` is True when the column has the kind's own type on this side; False when it
    holds the value in another type (e.g. the target stored it as text): it is then cast
    through ``text`` first.
    """
    value: sql.Composable = column
    if kind is Kind.TEXT:
        return sql.SQL("({})::text").format(value)
    if not native:
        value = sql.SQL("({})::text::{}").format(
            value,
            sql.SQL({Kind.NUMERIC: "numeric", Kind.JSON: "jsonb", Kind.TIMETZ: "timetz", Kind.BYTEA: "bytea"}[kind]),
        )
    if kind is Kind.NUMERIC:
        return sql.SQL("trim_scale({})::text").format(value)
    if kind is Kind.JSON:
        return sql.SQL("({})::jsonb::text").format(value)
    if kind is Kind.TIMETZ:
        return sql.SQL("(({}) AT TIME ZONE 'UTC')::text").format(value)
    return sql.SQL("encode({}, 'hex')").format(value)


# =========================================================================== plans


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A catalog column: name, ``format_type`` text, ``pg_type.typname`` and effective
    collation (``default`` resolved to the database's ``datcollate``; None if not collatable)."""

    name: str
    type: str
    typname: str
    collation: str | None = None


@dataclass(frozen=True, slots=True)
class ComparedColumn:
    """A compared column: its source and target names, kind and whether the target's type
    equals the source's."""

    source: str
    target: str
    kind: Kind
    same_type: bool = True


@dataclass(frozen=True, slots=True)
class TablePlan:
    """What is compared for one source table.

    ``key`` are the compared key columns (empty for a keyless table); ``excluded`` maps source
    columns not compared to why (masked, excluded by a transform); ``added`` lists target
    columns a transform adds (ignored); ``not_verifiable`` is the reason when the comparison
    would be meaningless; ``collate_c`` tells whether key comparisons use the "C" collation
    (the two sides' key collations differ); ``target_exists`` is False before the sink created
    the table.
    """

    table: TableId
    target: TableId
    columns: tuple[ComparedColumn, ...]
    key: tuple[ComparedColumn, ...]
    excluded: dict[str, str] = field(default_factory=dict)
    added: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)
    not_verifiable: str | None = None
    collate_c: bool = False
    target_exists: bool = True
    problem: str | None = None

    @property
    def keyless(self) -> bool:
        """True when the source table has no primary key."""
        return not self.key


def read_columns(conn: psycopg.Connection[Any], table: TableId) -> list[ColumnInfo]:
    """Columns of ``table`` in order (empty when it does not exist)."""
    rows = conn.execute(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,"
        " CASE WHEN a.attcollation = 0 THEN NULL WHEN co.collname = 'default'"
        "  THEN (SELECT datcollate::text FROM pg_database WHERE datname = current_database())"
        "  ELSE co.collname::text END"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_collation co ON co.oid = a.attcollation"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table.schema, table.table),
    ).fetchall()
    return [ColumnInfo(*_values(r)) for r in rows]


def read_primary_key(conn: psycopg.Connection[Any], table: TableId) -> list[str]:
    """Primary-key columns of ``table`` in key order (empty when none)."""
    rows = conn.execute(
        "SELECT a.attname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
        (table.schema, table.table),
    ).fetchall()
    return [str(_values(r)[0]) for r in rows]


def _values(row: Any) -> list[Any]:
    return list(row.values()) if isinstance(row, dict) else list(row)


def build_plan(
    table: TableId,
    target: TableId,
    source_columns: Sequence[ColumnInfo],
    source_key: Sequence[str],
    target_columns: Sequence[ColumnInfo],
    report: ColumnReport,
) -> TablePlan:
    """The :class:`TablePlan` from catalog facts and the transforms' column report (pure).

    Raises nothing: problems (a compared column missing in the target, a key column not
    compared) are put in ``problem``.
    """
    excluded = dict(report.excluded)
    for target_name, (source_name, mode) in report.masked.items():
        excluded[source_name] = (
            f"masked ({mode}) as {target_name}" if target_name != source_name else f"masked ({mode})"
        )
    reasons = [*report.row_filters, *report.hooks]
    by_source = {c.name: c for c in source_columns}
    by_target = {c.name: c for c in target_columns if not c.name.startswith(OWN_PREFIX)}
    compared: list[ComparedColumn] = []
    problems: list[str] = []
    target_exists = bool(target_columns)
    for target_name, source_name in report.comparable.items():
        src = by_source.get(source_name)
        if src is None:
            continue
        tgt = by_target.get(target_name)
        if tgt is None and target_exists:
            problems.append(f"target column {target_name!r} (source {source_name!r}) is missing")
            continue
        compared.append(
            ComparedColumn(source_name, target_name, canonical_kind(src.typname), tgt is None or tgt.type == src.type)
        )
    by_name = {c.source: c for c in compared}
    key: list[ComparedColumn] = []
    for name in source_key:
        column = by_name.get(name)
        if column is None:
            problems.append(f"key column {name!r} is not compared ({excluded.get(name, 'dropped')})")
        else:
            key.append(column)
    collate_c = False
    for column in key:
        src = by_source[column.source]
        tgt = by_target.get(column.target)
        if src.collation is not None and tgt is not None and tgt.collation != src.collation:
            collate_c = True
    renamed = {c.source: c.target for c in compared if c.source != c.target}
    return TablePlan(
        table=table,
        target=target,
        columns=tuple(compared),
        key=tuple(key) if len(key) == len(source_key) else (),
        excluded=excluded,
        added=tuple(report.added),
        renamed=renamed,
        not_verifiable="; ".join(reasons) if reasons else None,
        collate_c=collate_c,
        target_exists=target_exists,
        problem="; ".join(problems) if problems else None,
    )


def target_table(pipeline: PipelineSettings, table: TableId, report: ColumnReport) -> TableId:
    """Where the sink writes ``table``: the transforms' route, else the target's default schema."""
    return report.target or TableId(pipeline.target.schema_name, table.table)


# =========================================================================== SQL of one side


def _key_idents(plan: TablePlan, side: str) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for column in plan.key:
        ident: sql.Composable = sql.Identifier(column.source if side == "source" else column.target)
        if plan.collate_c:
            ident = sql.SQL("{} COLLATE {}").format(ident, sql.Identifier("C"))
        out.append(ident)
    return out


def row_text(plan: TablePlan, side: str) -> sql.Composable:
    """``ROW(<canonical c1>, ...)::text`` of the compared columns on ``side`` (source|target)."""
    parts = [
        canonical_expr(
            sql.Identifier(c.source if side == "source" else c.target),
            c.kind,
            native=(side == "source" or c.same_type),
        )
        for c in plan.columns
    ]
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(parts))


def range_where(plan: TablePlan, side: str, key_range: KeyRange) -> tuple[sql.Composable, list[Any]]:
    """``WHERE`` text and parameters selecting ``low < key <= high`` (row-value comparison)."""
    keys = sql.SQL("ROW({})").format(sql.SQL(", ").join(_key_idents(plan, side)))
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    low, high = key_range
    if low is not None:
        conditions.append(sql.SQL("{} > ROW({})").format(keys, sql.SQL(", ").join(sql.Placeholder() for _ in low)))
        params.extend(low)
    if high is not None:
        conditions.append(sql.SQL("{} <= ROW({})").format(keys, sql.SQL(", ").join(sql.Placeholder() for _ in high)))
        params.extend(high)
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


def _qualified(table: TableId) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.table))


def chunk_bounds(conn: psycopg.Connection[Any], plan: TablePlan, chunk_size: int) -> list[KeyRange]:
    """Key ranges of about ``chunk_size`` source rows each, by keyset pagination on the source.

    The first range is open below, the last open above (an empty table gives one unbounded
    range). Raises ValueError for a keyless plan or ``chunk_size < 1``.
    """
    if plan.keyless:
        raise ValueError(f"{plan.table} has no key: use buckets")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    keys = _key_idents(plan, "source")
    order = sql.SQL(", ").join(keys)
    columns = sql.SQL(", ").join(sql.Identifier(c.source) for c in plan.key)
    bounds: list[tuple[Any, ...]] = []
    last: tuple[Any, ...] | None = None
    while True:
        where, params = range_where(plan, "source", (last, None))
        row = conn.execute(
            sql.SQL("SELECT {cols} FROM {t}{w} ORDER BY {o} OFFSET %s LIMIT 1").format(
                cols=columns, t=_qualified(plan.table), w=where, o=order
            ),
            [*params, chunk_size - 1],
        ).fetchone()
        if row is None:
            break
        last = tuple(_values(row))
        bounds.append(last)
    ranges: list[KeyRange] = []
    low: tuple[Any, ...] | None = None
    for bound in bounds:
        ranges.append((low, bound))
        low = bound
    ranges.append((low, None))
    return ranges


Checksum = tuple[int, str | None]
"""``(row count, md5 hex or None when empty)``."""


def chunk_checksum(conn: psycopg.Connection[Any], plan: TablePlan, side: str, key_range: KeyRange) -> Checksum:
    """Row count and checksum of ``key_range`` on ``side`` (0/None when the target table is absent)."""
    table = plan.table if side == "source" else plan.target
    if side == "target" and not plan.target_exists:
        return (0, None)
    where, params = range_where(plan, side, key_range)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), md5(string_agg(rt, E'\\n' ORDER BY rt COLLATE {c}))"
            " FROM (SELECT {rt} AS rt FROM {t}{w}) s"
        ).format(c=sql.Identifier("C"), rt=row_text(plan, side), t=_qualified(table), w=where),
        params,
    ).fetchone()
    values = _values(row)
    return (int(values[0]), values[1])


def bucket_checksums(conn: psycopg.Connection[Any], plan: TablePlan, side: str, buckets: int) -> dict[int, Checksum]:
    """Per hash bucket (``0..buckets-1``, by the first two bytes of ``md5(row text)``): count and
    checksum of the sorted multiset of row texts (empty buckets are absent)."""
    table = plan.table if side == "source" else plan.target
    if side == "target" and not plan.target_exists:
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT b, count(*), md5(string_agg(rt, E'\\n' ORDER BY rt COLLATE {c})) FROM ("
            " SELECT rt, ((get_byte(d, 0) << 8) | get_byte(d, 1)) %% %s AS b FROM ("
            "  SELECT rt, decode(md5(rt), 'hex') AS d FROM (SELECT {rt} AS rt FROM {t}) s0) s1) s GROUP BY b"
        ).format(c=sql.Identifier("C"), rt=row_text(plan, side), t=_qualified(table)),
        (buckets,),
    ).fetchall()
    return {int(v[0]): (int(v[1]), v[2]) for v in (_values(r) for r in rows)}


def count_rows(conn: psycopg.Connection[Any], table: TableId) -> int:
    """``count(*)`` of ``table``."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_qualified(table))).fetchone()
    return int(_values(row)[0])


# =========================================================================== results


class Status(StrEnum):
    """Outcome of one table."""

    MATCH = "match"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"
    NOT_VERIFIABLE = "not_verifiable"
    ERROR = "error"


def _json_key(value: tuple[Any, ...] | None) -> list[Any] | None:
    if value is None:
        return None
    return [v if isinstance(v, int | str | bool) or v is None else str(v) for v in value]


def format_range(key_range: KeyRange) -> str:
    """``(low, high]`` with ``-inf``/``+inf`` for open ends (single-column keys unwrapped)."""

    def show(value: tuple[Any, ...] | None, infinite: str) -> str:
        if value is None:
            return infinite
        return str(value[0]) if len(value) == 1 else "(" + ", ".join(str(v) for v in value) + ")"

    return f"({show(key_range[0], '-inf')}, {show(key_range[1], '+inf')}]"


@dataclass(frozen=True, slots=True)
class ChunkDiff:
    """A chunk (or bucket) whose count or checksum differs; ``bucket`` is set for keyless tables."""

    index: int
    key_range: KeyRange
    source: Checksum
    target: Checksum
    bucket: int | None = None
    buckets: int | None = None

    def describe(self) -> str:
        """One line for humans."""
        where = f"bucket {self.bucket}" if self.bucket is not None else format_range(self.key_range)
        return f"chunk {self.index} {where}: source {self.source[0]} rows, target {self.target[0]} rows"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "index": self.index,
            "low": _json_key(self.key_range[0]),
            "high": _json_key(self.key_range[1]),
            "range": format_range(self.key_range) if self.bucket is None else None,
            "bucket": self.bucket,
            "source_rows": self.source[0],
            "target_rows": self.target[0],
            "source_checksum": self.source[1],
            "target_checksum": self.target[1],
        }


@dataclass
class TableResult:
    """Verification of one table (counts are whole-table sums of the compared chunks)."""

    table: TableId
    target: TableId | None
    status: Status
    reason: str | None = None
    rows_source: int = 0
    rows_target: int = 0
    chunks: int = 0
    mismatched: list[ChunkDiff] = field(default_factory=list)
    in_flight: list[ChunkDiff] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    added: tuple[str, ...] = ()
    keyless: bool = False
    pending_messages: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the table matched."""
        return self.status is Status.MATCH

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "table": str(self.table),
            "target": str(self.target) if self.target is not None else None,
            "status": self.status.value,
            "ok": self.ok,
            "reason": self.reason,
            "rows_source": self.rows_source,
            "rows_target": self.rows_target,
            "chunks": self.chunks,
            "mismatched_chunks": [c.to_dict() for c in self.mismatched],
            "in_flight_chunks": [c.to_dict() for c in self.in_flight],
            "excluded_columns": self.excluded,
            "renamed_columns": self.renamed,
            "added_columns": list(self.added),
            "keyless": self.keyless,
            "pending_messages": self.pending_messages,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Outcome of :func:`wait_caught_up`: ``caught_up`` when the heartbeat was applied and no
    message was left behind; ``pending`` is messages behind per change topic."""

    caught_up: bool
    heartbeat_applied: bool
    waited_s: float
    pending: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "caught_up": self.caught_up,
            "heartbeat_applied": self.heartbeat_applied,
            "waited_s": round(self.waited_s, 3),
            "pending_messages": self.pending,
            "detail": self.detail,
        }


@dataclass
class VerifyResult:
    """Verification of a pipeline."""

    pipeline: str
    source: str
    started_at: datetime
    finished_at: datetime
    catch_up: CatchUp | None
    tables: list[TableResult]
    chunk_size: int

    @property
    def ok(self) -> bool:
        """True when every table matched."""
        return all(t.ok for t in self.tables)

    def exit_code(self, allow_unverifiable: bool = False) -> int:
        """0 when everything matched (``allow_unverifiable``: not-verifiable tables do not count),
        else 1."""
        for t in self.tables:
            if t.ok or (allow_unverifiable and t.status is Status.NOT_VERIFIABLE):
                continue
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``verify --json``)."""
        return {
            "pipeline": self.pipeline,
            "source": self.source,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "chunk_size": self.chunk_size,
            "catch_up": self.catch_up.to_dict() if self.catch_up is not None else None,
            "tables": [t.to_dict() for t in self.tables],
        }


def format_result(result: VerifyResult, allow_unverifiable: bool = False) -> str:
    """A human-readable table, one row per table, then details per table, then the verdict
    (:meth:`VerifyResult.exit_code` with ``allow_unverifiable``)."""
    lines: list[str] = []
    cu = result.catch_up
    if cu is not None:
        state = "caught up" if cu.caught_up else f"NOT caught up ({cu.detail})"
        lines.append(f"pipeline {result.pipeline} (source {result.source}): {state}, waited {cu.waited_s:.1f} s")
    header = ("TABLE", "TARGET", "STATUS", "ROWS SRC", "ROWS TGT", "CHUNKS", "MISMATCHED", "IN FLIGHT")
    rows = [
        (
            str(t.table),
            str(t.target) if t.target is not None else "-",
            t.status.value,
            str(t.rows_source),
            str(t.rows_target),
            str(t.chunks),
            str(len(t.mismatched)),
            str(len(t.in_flight)),
        )
        for t in result.tables
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for t in result.tables:
        details: list[str] = []
        if t.reason:
            details.append(f"  {t.status.value}: {t.reason}")
        details += [f"  mismatch {c.describe()}" for c in t.mismatched]
        details += [f"  in flight {c.describe()}" for c in t.in_flight]
        details += [f"  excluded column {name}: {why}" for name, why in sorted(t.excluded.items())]
        details += [f"  renamed column {src} -> {tgt}" for src, tgt in sorted(t.renamed.items())]
        if t.pending_messages:
            details.append(f"  {t.pending_messages} message(s) not applied yet")
        if details:
            lines.append(f"{t.table}:")
            lines.extend(details)
    skipped = sum(1 for t in result.tables if t.status is Status.NOT_VERIFIABLE)
    if result.ok:
        lines.append("OK: source and target match")
    elif result.exit_code(allow_unverifiable) == 0:
        lines.append(f"OK: every verifiable table matches ({skipped} not verifiable)")
    else:
        lines.append("NOT OK: see above")
    return "\n".join(lines)


# =========================================================================== connections


def _set_session(conn: psycopg.Connection[Any], statement_timeout_s: float) -> None:
    for name, value in SESSION_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(int(statement_timeout_s * 1000)),))


def connect_source(source: SourceSettings, purpose: str, statement_timeout_s: float = 600.0) -> Conn:
    """An autocommit dict-row connection to ``source`` with the canonical session settings."""
    conn = psycopg.connect(source_conninfo(source, f"cdc-pipeline {purpose}"), autocommit=True, row_factory=dict_row)
    _set_session(conn, statement_timeout_s)
    return conn


def connect_target(pipeline: PipelineSettings, purpose: str, statement_timeout_s: float = 600.0) -> Conn:
    """An autocommit dict-row connection to ``pipeline``'s PostgreSQL target (canonical session).

    Raises :class:`sinks.factory.UnsupportedTargetError` for another target.
    """
    from sinks.factory import target_conninfo  # noqa: PLC0415 - app imports the runner

    conn = psycopg.connect(
        target_conninfo(pipeline.target),
        autocommit=True,
        row_factory=dict_row,
        application_name=f"cdc-pipeline {purpose}",
        connect_timeout=10,
    )
    _set_session(conn, statement_timeout_s)
    return conn


# =========================================================================== catch-up


def write_heartbeat(conn: psycopg.Connection[Any], source: SourceSettings) -> datetime:
    """Upsert the source's heartbeat row with ``clock_timestamp()``; returns the value written."""
    hb = heartbeat_table(source)
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {t} (source, ts) VALUES (%s, clock_timestamp())"
            " ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts RETURNING ts"
        ).format(t=hb.identifier()),
        (source.name,),
    ).fetchone()
    value = _values(row)[0]
    assert isinstance(value, datetime)
    return value


def _wait_for_heartbeat(
    read: Callable[[], datetime | None], written: datetime, deadline: float, sleep_s: float
) -> bool:
    """Poll ``read`` (the heartbeat time the target holds) every ``sleep_s`` seconds until it
    reaches ``written`` (True) or ``time.monotonic()`` passes ``deadline`` (False)."""
    while True:
        seen = read()
        if seen is not None and seen >= written:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(sleep_s)


def _wait_pending(
    read_pending: Callable[[], dict[str, int]],
    applied: bool,
    written: datetime,
    hb_target: TableId,
    start: float,
    max_wait_s: float,
    sleep_s: float,
) -> CatchUp:
    """Poll ``read_pending`` (messages not yet applied, by topic; only counts > 0) every
    ``sleep_s`` seconds until nothing is pending and the heartbeat ``written`` was ``applied``
    to ``hb_target``, or ``start + max_wait_s`` (monotonic seconds) passes; the outcome."""
    deadline = start + max_wait_s
    while True:
        pending = read_pending()
        if (not pending and applied) or time.monotonic() >= deadline:
            break
        time.sleep(sleep_s)
    parts = []
    if not applied:
        parts.append(f"heartbeat {written.isoformat()} not applied to {hb_target} within {max_wait_s:.0f} s")
    if pending:
        parts.append(f"{sum(pending.values())} message(s) not applied")
    return CatchUp(applied and not pending, applied, time.monotonic() - start, pending, "; ".join(parts))


def wait_caught_up(
    settings: Settings,
    pipeline: PipelineSettings,
    max_wait_s: float,
    probe: ConsumerLagProbe | None = None,
    sleep_s: float = 0.5,
) -> CatchUp:
    """Wait (at most ``max_wait_s``) until ``pipeline`` has applied everything the source had
    committed when this was called; see the module docstring. Never raises for lag: the
    outcome says what is still behind. Raises psycopg.Error when a database is unreachable."""
    source = settings.source(pipeline.source)
    start = time.monotonic()
    deadline = start + max_wait_s
    with connect_source(source, "verify heartbeat", 30) as sconn:
        written = write_heartbeat(sconn, source)
    hb_target = heartbeat_target_table(source, pipeline)
    with connect_target(pipeline, "verify catch-up", 30) as tconn:
        applied = _wait_for_heartbeat(lambda: read_heartbeat(tconn, hb_target, source.name), written, deadline, sleep_s)
    own = probe is None
    probe = probe or ConsumerLagProbe(
        settings.kafka.client_config(),
        topic_regex(source),
        [p for p in pipeline_offsets(settings, source) if p.pipeline == pipeline.name],
    )

    def read_pending() -> dict[str, int]:
        return {t: n for lag in probe.read() for t, n in lag.by_topic().items() if n > 0}

    try:
        return _wait_pending(read_pending, applied, written, hb_target, start, max_wait_s, sleep_s)
    finally:
        if own:
            probe.close()


# =========================================================================== verification


def pipeline_tables(settings: Settings, pipeline: PipelineSettings) -> list[TableId]:
    """The source tables ``pipeline`` applies (its ``tables``, else all of its source's)."""
    source = settings.source(pipeline.source)
    return [TableId(*name.split(".", 1)) for name in (pipeline.tables or source.tables)]


def read_source_side(
    sconn: psycopg.Connection[Any], pipeline: PipelineSettings, table: TableId
) -> tuple[list[ColumnInfo], ColumnReport, TableId]:
    """What every target kind's plan starts from: ``(source columns from the catalog, the
    transforms' column report, the target table the sink writes)``.

    Raises LookupError when the source table does not exist.
    """
    source_columns = read_columns(sconn, table)
    if not source_columns:
        raise LookupError(f"source table {table} does not exist")
    transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
    report = transformer.column_report(table, [c.name for c in source_columns])
    return source_columns, report, target_table(pipeline, table, report)


def plan_table(
    sconn: psycopg.Connection[Any], tconn: psycopg.Connection[Any], pipeline: PipelineSettings, table: TableId
) -> TablePlan:
    """Read both catalogs and the transforms and build the table's :class:`TablePlan`
    (PostgreSQL target).

    Raises LookupError when the source table does not exist.
    """
    source_columns, report, target = read_source_side(sconn, pipeline, table)
    return build_plan(
        table, target, source_columns, read_primary_key(sconn, table), read_columns(tconn, target), report
    )


@dataclass
class _Pending:
    result: TableResult
    plan: TablePlan
    diff: ChunkDiff


class Side(Protocol):
    """One side of a comparison: chunk and bucket checksums and row counts of a planned table."""

    def chunk(self, plan: TablePlan, key_range: KeyRange) -> Checksum:
        """Row count and checksum of ``key_range``."""

    def buckets(self, plan: TablePlan, buckets: int) -> dict[int, Checksum]:
        """Per-bucket row count and checksum (keyless tables)."""

    def count(self, plan: TablePlan) -> int:
        """Rows of the table on this side."""


@dataclass
class PgSide:
    """A PostgreSQL side: everything computed server-side in SQL (the fast path)."""

    conn: Conn
    side: str  # "source" or "target"

    def chunk(self, plan: TablePlan, key_range: KeyRange) -> Checksum:
        """See :func:`chunk_checksum`."""
        return chunk_checksum(self.conn, plan, self.side, key_range)

    def buckets(self, plan: TablePlan, buckets: int) -> dict[int, Checksum]:
        """See :func:`bucket_checksums`."""
        return bucket_checksums(self.conn, plan, self.side, buckets)

    def count(self, plan: TablePlan) -> int:
        """See :func:`count_rows`."""
        return count_rows(self.conn, plan.table if self.side == "source" else plan.target)


def _compare_keyed(
    sconn: Conn, src_side: Side, tgt_side: Side, plan: TablePlan, chunk_size: int, result: TableResult
) -> list[ChunkDiff]:
    diffs: list[ChunkDiff] = []
    ranges = chunk_bounds(sconn, plan, chunk_size)
    for index, key_range in enumerate(ranges, start=1):
        src = src_side.chunk(plan, key_range)
        tgt = tgt_side.chunk(plan, key_range)
        result.rows_source += src[0]
        result.rows_target += tgt[0]
        if src != tgt:
            diffs.append(ChunkDiff(index, key_range, src, tgt))
    result.chunks = len(ranges)
    return diffs


def bucket_count(rows: int, chunk_size: int) -> int:
    """Buckets for a keyless table of ``rows`` rows: about ``chunk_size`` rows each, at least 1,
    at most :data:`MAX_BUCKETS` (pure)."""
    return max(1, min(MAX_BUCKETS, math.ceil(rows / max(1, chunk_size))))


def _compare_keyless(
    sconn: Conn, src_side: Side, tgt_side: Side, plan: TablePlan, chunk_size: int, result: TableResult
) -> list[ChunkDiff]:
    buckets = bucket_count(src_side.count(plan), chunk_size)
    src = src_side.buckets(plan, buckets)
    tgt = tgt_side.buckets(plan, buckets)
    result.rows_source = sum(c[0] for c in src.values())
    result.rows_target = sum(c[0] for c in tgt.values())
    result.chunks = buckets
    empty: Checksum = (0, None)
    return [
        ChunkDiff(b + 1, (None, None), src.get(b, empty), tgt.get(b, empty), bucket=b, buckets=buckets)
        for b in range(buckets)
        if src.get(b, empty) != tgt.get(b, empty)
    ]


def _recompute(src_side: Side, tgt_side: Side, plan: TablePlan, diff: ChunkDiff) -> ChunkDiff:
    if diff.bucket is None or diff.buckets is None:
        return ChunkDiff(
            diff.index,
            diff.key_range,
            src_side.chunk(plan, diff.key_range),
            tgt_side.chunk(plan, diff.key_range),
        )
    empty: Checksum = (0, None)
    src = src_side.buckets(plan, diff.buckets).get(diff.bucket, empty)
    tgt = tgt_side.buckets(plan, diff.buckets).get(diff.bucket, empty)
    return ChunkDiff(diff.index, diff.key_range, src, tgt, bucket=diff.bucket, buckets=diff.buckets)


# =========================================================================== targets other than PostgreSQL


def is_portable_target(pipeline: PipelineSettings) -> bool:
    """True when ``pipeline`` writes to a MariaDB/MySQL or SQLite target (the Python path).

    Raises :class:`sinks.factory.UnsupportedTargetError` for an unknown scheme."""
    from sinks.factory import target_kind  # noqa: PLC0415 - app imports the runner

    return target_kind(pipeline.target) == "sqlalchemy"


def _portable_engine(pipeline: PipelineSettings) -> sa.Engine:
    from sinks.factory import target_sqlalchemy_url  # noqa: PLC0415 - app imports the runner

    return sa.create_engine(target_sqlalchemy_url(pipeline.target), poolclass=sa.pool.NullPool)


def _source_select(plan: TablePlan, typnames: Mapping[str, str]) -> sql.Composable:
    """Compared source columns, intervals as Debezium ``MicroDuration`` microseconds."""
    parts: list[sql.Composable] = []
    for c in plan.columns:
        ident = sql.Identifier(c.source)
        if typnames[c.source] == "interval":
            parts.append(sql.SQL(canonical.interval_micros_sql("{c}")).format(c=ident))
        else:
            parts.append(ident)
    return sql.SQL(", ").join(parts)


@dataclass
class PortableSourceSide:
    """The PostgreSQL source compared with a MariaDB/SQLite target: rows are fetched and their
    canonical text computed in Python (:mod:`sinks.sqlalchemy.canonical`), like the target's."""

    conn: Conn
    typnames: dict[str, str]  # source column -> pg_type.typname

    def _texts(self, plan: TablePlan, key_range: KeyRange | None) -> list[str]:
        where, params = range_where(plan, "source", key_range) if key_range else (sql.SQL(""), [])
        rows = self.conn.execute(
            sql.SQL("SELECT {} FROM {}{}").format(_source_select(plan, self.typnames), _qualified(plan.table), where),
            params,
        ).fetchall()
        types = [self.typnames[c.source] for c in plan.columns]
        return [canonical.row_text(_values(r), types) for r in rows]

    def chunk(self, plan: TablePlan, key_range: KeyRange) -> Checksum:
        """Count and checksum of the canonical row texts of ``key_range``."""
        return canonical.checksum(self._texts(plan, key_range))

    def buckets(self, plan: TablePlan, buckets: int) -> dict[int, Checksum]:
        """Per-bucket count and checksum of the canonical row texts."""
        return _bucketed(self._texts(plan, None), buckets)

    def count(self, plan: TablePlan) -> int:
        """``count(*)`` of the source table."""
        return count_rows(self.conn, plan.table)


@dataclass
class PortableTargetSide:
    """A MariaDB/MySQL or SQLite target: rows fetched through SQLAlchemy, canonical text in Python
    by the *source* column types. Key ranges are SQL row-value comparisons in the target (its
    binary collation orders text keys by code point, like the source's "C" collation)."""

    engine: sa.Engine
    dialect: str
    typnames: dict[str, str]

    def _table(self, plan: TablePlan) -> sa.TableClause:
        schema, name = physical(plan.target, self.dialect)
        return sa.table(name, *(sa.column(c.target) for c in plan.columns), schema=schema)

    def _texts(self, plan: TablePlan, key_range: KeyRange | None) -> list[str]:
        if not plan.target_exists:
            return []
        t = self._table(plan)
        query = sa.select(*(t.c[c.target] for c in plan.columns))
        if key_range is not None:
            keys = sa.tuple_(*(t.c[c.target] for c in plan.key))
            low, high = key_range
            if low is not None:
                query = query.where(keys > sa.tuple_(*(sa.literal(adapt(v, self.dialect)) for v in low)))
            if high is not None:
                query = query.where(keys <= sa.tuple_(*(sa.literal(adapt(v, self.dialect)) for v in high)))
        types = [self.typnames[c.source] for c in plan.columns]
        with self.engine.connect() as conn:
            return [canonical.row_text(tuple(r), types) for r in conn.execute(query)]

    def chunk(self, plan: TablePlan, key_range: KeyRange) -> Checksum:
        """Count and checksum of the canonical row texts of ``key_range``."""
        return canonical.checksum(self._texts(plan, key_range))

    def buckets(self, plan: TablePlan, buckets: int) -> dict[int, Checksum]:
        """Per-bucket count and checksum of the canonical row texts."""
        return _bucketed(self._texts(plan, None), buckets)

    def count(self, plan: TablePlan) -> int:
        """Rows of the target table."""
        return len(self._texts(plan, None))


def _bucketed(texts: Sequence[str], buckets: int) -> dict[int, Checksum]:
    by_bucket: dict[int, list[str]] = {}
    for text in texts:
        by_bucket.setdefault(canonical.bucket_of(text, buckets), []).append(text)
    return {b: canonical.checksum(items) for b, items in by_bucket.items()}


class _PgTargetAccess:
    """Plans and sides of a PostgreSQL target (server-side checksums)."""

    def __init__(self, tconn: Conn) -> None:
        self.tconn = tconn

    def plan(self, sconn: Conn, pipeline: PipelineSettings, table: TableId) -> TablePlan:
        return plan_table(sconn, self.tconn, pipeline, table)

    def sides(self, sconn: Conn, plan: TablePlan) -> tuple[Side, Side]:
        return PgSide(sconn, "source"), PgSide(self.tconn, "target")


class _PortableTargetAccess:
    """Plans and sides of a MariaDB/MySQL or SQLite target (Python checksums on both sides)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.dialect = dialect_kind(conn.dialect)

    def target_columns(self, target: TableId) -> list[ColumnInfo]:
        with self.engine.connect() as conn:
            shape = read_shape(conn, target)
        if shape is None:
            return []
        return [ColumnInfo(name, type_, type_) for name, type_ in shape.columns.items()]

    def plan(self, sconn: Conn, pipeline: PipelineSettings, table: TableId) -> TablePlan:
        source_columns, report, target = read_source_side(sconn, pipeline, table)
        # Collations are not compared across engines: text keys are ordered by code point on
        # both sides ("C" source collation, binary target collation; see PortableTargetSide).
        plain = [ColumnInfo(c.name, c.type, c.typname) for c in source_columns]
        return build_plan(table, target, plain, read_primary_key(sconn, table), self.target_columns(target), report)

    def sides(self, sconn: Conn, plan: TablePlan) -> tuple[Side, Side]:
        typnames = {c.name: c.typname for c in read_columns(sconn, plan.table)}
        return PortableSourceSide(sconn, typnames), PortableTargetSide(self.engine, self.dialect, typnames)


@contextlib.contextmanager
def _target_access(
    pipeline: PipelineSettings, statement_timeout_s: float
) -> Iterator[_PgTargetAccess | _PortableTargetAccess]:
    if is_portable_target(pipeline):
        engine = _portable_engine(pipeline)
        try:
            yield _PortableTargetAccess(engine)
        finally:
            engine.dispose()
        return
    with connect_target(pipeline, "verify", statement_timeout_s) as tconn:
        yield _PgTargetAccess(tconn)


def read_heartbeat_portable(engine: sa.Engine, table: TableId, source_name: str) -> datetime | None:
    """The heartbeat ``ts`` of ``source_name`` in a MariaDB/SQLite target (UTC), or None when the
    table or row does not exist yet. The sink stored it in UTC without zone."""
    with engine.connect() as conn:
        schema, name = physical(table, dialect_kind(conn.dialect))
        t = sa.table(name, sa.column("ts"), sa.column("source"), schema=schema)
        try:
            value = conn.execute(sa.select(t.c.ts).where(t.c.source == source_name)).scalar()
        except sa.exc.DBAPIError:
            return None
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def wait_caught_up_portable(
    settings: Settings, pipeline: PipelineSettings, max_wait_s: float, sleep_s: float = 0.5
) -> CatchUp:
    """:func:`wait_caught_up` for a MariaDB/SQLite target (at most ``max_wait_s``): the
    heartbeat written now must show in the target, then the offsets the pipeline stored in its
    target (read through :class:`sinks.sqlalchemy.sink.SqlAlchemySink`) must reach the Kafka
    high watermarks of every change topic. Raises sqlalchemy/psycopg errors when a database is
    unreachable."""
    from sinks.factory import target_sqlalchemy_url  # noqa: PLC0415 - app imports the runner
    from sinks.sqlalchemy.sink import SqlAlchemySink  # noqa: PLC0415 - only for these targets

    source = settings.source(pipeline.source)
    start = time.monotonic()
    deadline = start + max_wait_s
    with connect_source(source, "verify heartbeat", 30) as sconn:
        written = write_heartbeat(sconn, source)
    hb_target = heartbeat_target_table(source, pipeline)
    engine = _portable_engine(pipeline)
    try:
        applied = _wait_for_heartbeat(
            lambda: read_heartbeat_portable(engine, hb_target, source.name), written, deadline, sleep_s
        )
    finally:
        engine.dispose()
    probe = ConsumerLagProbe(settings.kafka.client_config(), topic_regex(source), [])
    sink = SqlAlchemySink(target_sqlalchemy_url(pipeline.target), control_schema=pipeline.target.control_schema)

    def read_pending() -> dict[str, int]:
        marks = probe.watermarks()
        stored = sink.stored_offsets(pipeline.resolved_consumer_group, list(marks))
        pending: dict[str, int] = {}
        for (topic, _), lag in lag_per_partition(marks, stored).items():
            if lag > 0:
                pending[topic] = pending.get(topic, 0) + lag
        return pending

    try:
        return _wait_pending(read_pending, applied, written, hb_target, start, max_wait_s, sleep_s)
    finally:
        probe.close()
        sink.close()


def verify_pipeline(
    settings: Settings,
    pipeline: PipelineSettings,
    tables: Sequence[str] | None = None,
    config: VerifySettings | None = None,
    catch_up: Callable[[], CatchUp] | None = None,
) -> VerifyResult:
    """Verify ``pipeline`` (all its tables, or ``tables`` given as ``schema.table``).

    ``catch_up`` replaces :func:`wait_caught_up` (tests; return ``CatchUp(True, True, 0)`` to
    skip waiting). Raises KeyError for a table the pipeline does not apply, psycopg.Error (or
    sqlalchemy.exc.DBAPIError for a MariaDB/SQLite target) when a database is unreachable,
    :class:`sinks.factory.UnsupportedTargetError` for an unknown target scheme. Per-table
    problems are results, not exceptions.
    """
    cfg = config or VerifySettings()
    source = settings.source(pipeline.source)
    selected = pipeline_tables(settings, pipeline)
    if tables:
        wanted = {TableId(*t.split(".", 1)) for t in tables}
        unknown = sorted(str(t) for t in wanted - set(selected))
        if unknown:
            raise KeyError(f"not tables of pipeline {pipeline.name}: {', '.join(unknown)}")
        selected = [t for t in selected if t in wanted]

    portable = is_portable_target(pipeline)

    def default_catch_up() -> CatchUp:
        if portable:
            return wait_caught_up_portable(settings, pipeline, cfg.max_wait_s)
        return wait_caught_up(settings, pipeline, cfg.max_wait_s)

    catch = catch_up or default_catch_up
    started = datetime.now(UTC)
    first = catch()
    results: list[TableResult] = []
    pending: list[_Pending] = []
    sides: dict[TableId, tuple[Side, Side]] = {}
    topics = {t: change_topic(source, TableRef(t.schema, t.table)) for t in selected}
    with (
        connect_source(source, "verify", cfg.statement_timeout_s) as sconn,
        _target_access(pipeline, cfg.statement_timeout_s) as target_access,
    ):
        for table in selected:
            t0 = time.monotonic()
            try:
                plan = target_access.plan(sconn, pipeline, table)
            except LookupError as exc:
                results.append(TableResult(table, None, Status.ERROR, str(exc)))
                continue
            result = TableResult(
                table,
                plan.target,
                Status.MATCH,
                excluded=plan.excluded,
                renamed=plan.renamed,
                added=plan.added,
                keyless=plan.keyless,
            )
            results.append(result)
            if plan.not_verifiable is not None:
                result.status, result.reason = Status.NOT_VERIFIABLE, f"transforms change rows: {plan.not_verifiable}"
                continue
            if plan.problem is not None:
                result.status, result.reason = Status.ERROR, plan.problem
                continue
            src_side, tgt_side = target_access.sides(sconn, plan)
            sides[plan.table] = (src_side, tgt_side)
            compare = _compare_keyless if plan.keyless else _compare_keyed
            diffs = compare(sconn, src_side, tgt_side, plan, cfg.chunk_size, result)
            pending.extend(_Pending(result, plan, d) for d in diffs)
            result.seconds = time.monotonic() - t0
            if not plan.target_exists and result.rows_source == 0:
                result.reason = "target table not created yet (the source table is empty)"
        last = first
        for _ in range(cfg.recheck_attempts):
            if not pending:
                break
            last = catch()
            still: list[_Pending] = []
            for item in pending:
                again = _recompute(*sides[item.plan.table], item.plan, item.diff)
                if again.source == again.target:
                    _adjust_rows(item.result, item.diff, again)
                    continue
                if last.caught_up and again.source == item.diff.source and again.target == item.diff.target:
                    item.result.mismatched.append(again)
                    continue
                _adjust_rows(item.result, item.diff, again)
                still.append(_Pending(item.result, item.plan, again))
            pending = still
        for item in pending:
            if item.diff.source == item.diff.target:
                continue
            item.result.in_flight.append(item.diff)
    for result in results:
        result.pending_messages = last.pending.get(topics.get(result.table, ""), 0)
        if result.status is not Status.MATCH:
            continue
        if result.mismatched:
            result.status = Status.MISMATCH
        elif result.in_flight:
            result.status = Status.IN_FLIGHT
            result.reason = "rows still changing or not applied yet: " + (last.detail or "differences did not settle")
        result.mismatched.sort(key=lambda c: c.index)
        result.in_flight.sort(key=lambda c: c.index)
    return VerifyResult(pipeline.name, source.name, started, datetime.now(UTC), last, results, cfg.chunk_size)


def _adjust_rows(result: TableResult, before: ChunkDiff, after: ChunkDiff) -> None:
    result.rows_source += after.source[0] - before.source[0]
    result.rows_target += after.target[0] - before.target[0]


# =========================================================================== metrics and stored results


def export_verify_metrics(result: VerifyResult, now: float | None = None) -> None:
    """Set the ``cdc_verify_*`` gauges from ``result``."""
    stamp = now if now is not None else result.finished_at.timestamp()
    for t in result.tables:
        _export_table(
            result.pipeline, str(t.table), t.rows_source, t.rows_target, t.chunks, len(t.mismatched), stamp, t.ok
        )


def _export_table(
    pipeline: str, table: str, rows_source: int, rows_target: int, chunks: int, mismatched: int, stamp: float, ok: bool
) -> None:
    metrics.VERIFY_ROWS.labels(pipeline, table, "source").set(rows_source)
    metrics.VERIFY_ROWS.labels(pipeline, table, "target").set(rows_target)
    metrics.VERIFY_CHUNKS.labels(pipeline, table).set(chunks)
    metrics.VERIFY_MISMATCHED_CHUNKS.labels(pipeline, table).set(mismatched)
    metrics.VERIFY_LAST_RUN.labels(pipeline, table).set(stamp)
    metrics.VERIFY_OK.labels(pipeline, table).set(1 if ok else 0)


def _results_table(pipeline: PipelineSettings) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(pipeline.target.control_schema), sql.Identifier(RESULTS_TABLE))


def _ensure_results(conn: psycopg.Connection[Any], pipeline: PipelineSettings) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-verify-ddl', 0))")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(pipeline.target.control_schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, table_name text NOT NULL,"
                " target_table text, status text NOT NULL, ok boolean NOT NULL, rows_source bigint NOT NULL,"
                " rows_target bigint NOT NULL, chunks integer NOT NULL, mismatched_chunks integer NOT NULL,"
                " result jsonb NOT NULL, verified_at timestamptz NOT NULL, PRIMARY KEY (pipeline, table_name))"
            ).format(_results_table(pipeline))
        )


def store_result(conn: psycopg.Connection[Any], pipeline: PipelineSettings, result: VerifyResult) -> None:
    """Upsert each table's result into the target's ``<control_schema>.verify_results`` (the
    last result per table), for :class:`CutoverMonitor` and other processes."""
    _ensure_results(conn, pipeline)
    with conn.transaction():
        for t in result.tables:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (pipeline, table_name, target_table, status, ok, rows_source, rows_target, chunks,"
                    " mismatched_chunks, result, verified_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (pipeline, table_name) DO UPDATE SET target_table = EXCLUDED.target_table,"
                    " status = EXCLUDED.status, ok = EXCLUDED.ok, rows_source = EXCLUDED.rows_source,"
                    " rows_target = EXCLUDED.rows_target, chunks = EXCLUDED.chunks,"
                    " mismatched_chunks = EXCLUDED.mismatched_chunks, result = EXCLUDED.result,"
                    " verified_at = EXCLUDED.verified_at"
                ).format(_results_table(pipeline)),
                (
                    result.pipeline,
                    str(t.table),
                    str(t.target) if t.target is not None else None,
                    t.status.value,
                    t.ok,
                    t.rows_source,
                    t.rows_target,
                    t.chunks,
                    len(t.mismatched),
                    Jsonb(t.to_dict()),
                    result.finished_at,
                ),
            )


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One row of ``verify_results``."""

    table: str
    ok: bool
    status: str
    rows_source: int
    rows_target: int
    chunks: int
    mismatched_chunks: int
    verified_at: datetime


def load_results(conn: psycopg.Connection[Any], pipeline: PipelineSettings) -> dict[str, StoredResult]:
    """The stored last result per table of ``pipeline`` (empty when none was stored)."""
    try:
        rows = conn.execute(
            sql.SQL(
                "SELECT table_name, ok, status, rows_source, rows_target, chunks, mismatched_chunks, verified_at"
                " FROM {} WHERE pipeline = %s"
            ).format(_results_table(pipeline)),
            (pipeline.name,),
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    out: dict[str, StoredResult] = {}
    for row in rows:
        v = _values(row)
        out[str(v[0])] = StoredResult(
            str(v[0]), bool(v[1]), str(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]), v[7]
        )
    return out


def verification_clean(stored: Mapping[str, StoredResult], tables: Sequence[TableId]) -> bool:
    """True when every table of ``tables`` has a stored result and all are ok (pure)."""
    return bool(tables) and all(str(t) in stored and stored[str(t)].ok for t in tables)


# =========================================================================== cutover readiness


class CutoverReadiness:
    """Pure state of ``cdc_cutover_ready``: ready while the lag has stayed at or below
    ``max_lag_s`` for at least ``hold_s`` seconds and the last verification was clean.

    :meth:`observe` takes a monotonic ``now`` (seconds); an unknown lag (None) or one above the
    threshold restarts the hold.
    """

    def __init__(self, max_lag_s: float, hold_s: float) -> None:
        if max_lag_s < 0 or hold_s < 0:
            raise ValueError("max_lag_s and hold_s must not be negative")
        self.max_lag_s = max_lag_s
        self.hold_s = hold_s
        self._below_since: float | None = None

    @property
    def below_since(self) -> float | None:
        """When the lag went (and stayed) below the threshold, or None."""
        return self._below_since

    def observe(self, now: float, lag_s: float | None, verified_clean: bool) -> bool:
        """Record one observation; returns whether the pipeline is ready for cutover now."""
        if lag_s is None or lag_s > self.max_lag_s:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        held = self._below_since is not None and now - self._below_since >= self.hold_s
        return held and verified_clean


class CutoverMonitor(PollingMonitor):
    """Exports ``cdc_cutover_ready{pipeline}`` and the stored ``cdc_verify_*`` results of one
    pipeline, every ``cutover_interval_s``: lag = source ``now()`` minus the heartbeat ``ts``
    applied in the target (as :mod:`pipeline.control.monitor` measures it); verification from the
    target's ``verify_results``."""

    kind: ClassVar[str] = "cutover"

    def __init__(self, settings: Settings, pipeline: PipelineSettings, config: VerifySettings | None = None) -> None:
        self.config = config or VerifySettings()
        super().__init__(pipeline.name, self.config.cutover_interval_s)
        self.settings = settings
        self.pipeline = pipeline
        self.source = settings.source(pipeline.source)
        self.readiness = CutoverReadiness(self.config.cutover_max_lag_s, self.config.cutover_hold_s)
        self.tables = pipeline_tables(settings, pipeline)
        self.ready = False

    def poll_once(self) -> None:
        """Measure lag, read stored results, export the gauges. Raises psycopg.Error."""
        lag: float | None = None
        with connect_source(self.source, "cutover", 30) as sconn:
            row = sconn.execute("SELECT now() AS now").fetchone()
            source_now = row["now"] if row is not None else None
        with connect_target(self.pipeline, "cutover", 30) as tconn:
            seen = read_heartbeat(tconn, heartbeat_target_table(self.source, self.pipeline), self.source.name)
            stored = load_results(tconn, self.pipeline)
        if seen is not None and source_now is not None:
            lag = max(0.0, (source_now - seen).total_seconds())
        for name, r in stored.items():
            _export_table(
                self.pipeline.name,
                name,
                r.rows_source,
                r.rows_target,
                r.chunks,
                r.mismatched_chunks,
                r.verified_at.timestamp(),
                r.ok,
            )
        self.ready = self.readiness.observe(time.monotonic(), lag, verification_clean(stored, self.tables))
        metrics.CUTOVER_READY.labels(self.pipeline.name).set(1 if self.ready else 0)
        self.healthy = True


# =========================================================================== repair


@dataclass
class RepairReport:
    """What :func:`repair_pipeline` did: target rows deleted per table, snapshot requests
    (final states), and tables it could not repair with the reason."""

    deleted: dict[str, int] = field(default_factory=dict)
    requests: list[SnapshotRequest] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """True when every snapshot request completed."""
        return all(r.state.value == "completed" for r in self.requests)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "deleted_target_rows": self.deleted,
            "snapshot_requests": [
                {"id": str(r.id), "tables": list(r.tables), "state": r.state.value, "detail": r.detail}
                for r in self.requests
            ],
            "skipped": self.skipped,
        }


def guarded_delete(sconn: Conn, tconn: Conn, plan: TablePlan, key_range: KeyRange) -> int:
    """Delete target rows of ``key_range`` whose key the source lacks, only while their
    version columns still hold the values read first (a row the pipeline rewrites meanwhile
    is kept); returns the rows deleted. No tombstone is written: if an older change of such a
    key is still in flight it may re-insert the row, and the delete that follows it in the
    stream removes it again."""
    if plan.keyless or not plan.target_exists:
        return 0
    tkeys = sql.SQL(", ").join(sql.Identifier(c.target) for c in plan.key)
    where, params = range_where(plan, "target", key_range)
    versions = sql.SQL(", ").join(sql.Identifier(v) for v in VERSION_COLUMNS)
    target_rows = tconn.execute(
        sql.SQL("SELECT {k}, {v} FROM {t}{w}").format(k=tkeys, v=versions, t=_qualified(plan.target), w=where), params
    ).fetchall()
    if not target_rows:
        return 0
    skeys = sql.SQL(", ").join(sql.Identifier(c.source) for c in plan.key)
    swhere, sparams = range_where(plan, "source", key_range)
    source_keys = {
        tuple(_values(r))
        for r in sconn.execute(
            sql.SQL("SELECT {k} FROM {t}{w}").format(k=skeys, t=_qualified(plan.table), w=swhere), sparams
        ).fetchall()
    }
    n = len(plan.key)
    doomed = [tuple(_values(r)) for r in target_rows if tuple(_values(r))[:n] not in source_keys]
    if not doomed:
        return 0
    match = sql.SQL(" AND ").join(
        sql.SQL("{} = %s").format(sql.Identifier(name)) for name in [*(c.target for c in plan.key), *VERSION_COLUMNS]
    )
    deleted = 0
    with tconn.transaction():
        for row in doomed:
            cur = tconn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(_qualified(plan.target), match), list(row))
            deleted += cur.rowcount
    log.info(
        "target rows absent from the source deleted",
        table=str(plan.target),
        rows=deleted,
        range=format_range(key_range),
    )
    return deleted


def repair_filters(sconn: Conn, plan: TablePlan, ranges: Sequence[KeyRange]) -> list[str | None]:
    """``additional-conditions`` filters (source column names, SQL literals rendered by the
    source connection) for ``ranges`` of ``plan``'s key."""

    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(sconn)

    def literal(value: Any) -> str:
        return sql.Literal(value).as_string(sconn)

    return key_range_filters([c.source for c in plan.key], ranges, ident, literal)


def repair_pipeline(
    settings: Settings,
    pipeline: PipelineSettings,
    result: VerifyResult,
    config: VerifySettings | None = None,
    coordinator: SnapshotCoordinator | None = None,
    on_progress: Callable[[list[SnapshotRequest]], None] | None = None,
) -> RepairReport:
    """Repair the confirmed mismatched chunks of ``result`` (see the module docstring) and wait
    (at most ``repair_timeout_s``) for the snapshots; ``coordinator`` defaults to one built for
    the source (it acts only if no other coordinator holds the source's lock; otherwise the
    running one sends the requests). Verify again afterwards. Raises psycopg.Error."""
    from pipeline.control.snapshot import build_coordinator  # noqa: PLC0415 - heavy wiring only when repairing

    cfg = config or VerifySettings()
    source = settings.source(pipeline.source)
    report = RepairReport()
    ids: list[uuid.UUID] = []
    coord = coordinator or build_coordinator(settings, source, with_lag=False)
    try:
        with (
            connect_source(source, "verify repair", cfg.statement_timeout_s) as sconn,
            connect_target(pipeline, "verify repair", cfg.statement_timeout_s) as tconn,
        ):
            for t in result.tables:
                if t.status is not Status.MISMATCH or not t.mismatched:
                    continue
                plan = plan_table(sconn, tconn, pipeline, t.table)
                if plan.keyless:
                    report.skipped[str(t.table)] = (
                        "no primary key: an incremental snapshot needs a key and would append duplicate rows "
                        "(rows are keyed by position); re-create the target table and re-snapshot instead"
                    )
                    continue
                ranges = [c.key_range for c in t.mismatched]
                report.deleted[str(t.table)] = sum(guarded_delete(sconn, tconn, plan, r) for r in ranges)
                for text in repair_filters(sconn, plan, ranges):
                    conditions = [Condition(str(t.table), text)] if text is not None else []
                    request = coord.queue.enqueue([str(t.table)], SnapshotKind.INCREMENTAL, conditions, origin="repair")
                    ids.append(request.id)
        if ids:
            report.requests = coord.wait_for(ids, cfg.repair_timeout_s, on_poll=on_progress)
    finally:
        if coordinator is None:
            coord.stop(5.0)
    return report


# =========================================================================== wiring


def coordination_monitors(
    settings: Settings,
    pipeline: PipelineSettings,
    snapshot: SnapshotSettings | None = None,
    verify: VerifySettings | None = None,
) -> list[PollingMonitor]:
    """The background pollers a ``cdc-pipeline run`` worker of ``pipeline`` starts next to its
    runner: the snapshot coordinator of its source (every worker runs one; only the holder of
    the source's coordinator lock acts) and the cutover monitor. Not started: call ``start()``
    on each, and ``stop(timeout_s)`` at shutdown (bounded joins)."""
    from pipeline.control.snapshot import build_coordinator  # noqa: PLC0415 - Connect/Kafka clients only when wired

    source = settings.source(pipeline.source)
    snapshot = snapshot or SnapshotSettings.from_config(settings.snapshot)
    verify = verify or VerifySettings.from_config(settings.verify)
    monitors: list[PollingMonitor] = [build_coordinator(settings, source, snapshot)]
    if is_portable_target(pipeline):
        # Verification results and the heartbeat are read from PostgreSQL targets only.
        log.info("cutover readiness not monitored for this target", pipeline=pipeline.name)
    else:
        monitors.append(CutoverMonitor(settings, pipeline, verify))
    return monitors
