"""What a verification produces: settings, per-table and per-pipeline results, their JSON and
text forms, the records stored in the target, and the ``cdc_verify_*`` gauges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.settings.models import VerifyConfig
from sinks.base import Checksum, KeyRange, VerificationRecord


@dataclass(frozen=True, slots=True)
class VerifySettings:
    """Verifier settings (to become ``verify:`` in the YAML; defaults until then).

    - ``chunk_size``: rows per compared chunk (and per bucket of keyless tables).
    - ``max_wait_s``: bound of each catch-up wait (heartbeat, then offsets), seconds.
    - ``recheck_attempts``: catch-up + row recheck rounds for differing chunks (at least 2 run).
    - ``statement_timeout_s``: PostgreSQL ``statement_timeout`` of verification queries.
    - ``repair_timeout_s``: how long ``--repair`` waits for its snapshots to complete.
    - ``numeric_text_exact``: compare ``numeric`` columns by text, display scale included.
    - ``hot_key_lock_s``: longest hold of the ``FOR SHARE`` lock on hot source rows (0: never lock).
    - ``max_hot_keys``: most source rows of one table locked at once.
    - ``max_reported_rows``: differing rows listed per table (the counts are complete).
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
    schedule_interval_s: float | None = None
    numeric_text_exact: bool = False
    hot_key_lock_s: float = 10.0
    max_hot_keys: int = 1000
    max_reported_rows: int = 100


class Status(StrEnum):
    """Outcome of one table."""

    MATCH = "match"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"
    NOT_VERIFIABLE = "not_verifiable"
    ERROR = "error"
    SCHEMA_MISMATCH = "schema_mismatch"  # the target lacks a compared column: a schema difference, not data


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


def _show(text: str | None) -> str:
    return "NULL" if text is None else repr(text)


@dataclass(frozen=True, slots=True)
class RowDiff:
    """One differing row, found key by key (docs/design-notes.md, "Verification that concludes
    under load").

    Keyed tables: ``key`` maps each key column (source name) to its canonical text; ``columns``
    maps each differing compared column (source name) to ``(source text, target text)`` (None
    is SQL NULL); ``source_rows``/``target_rows`` are 1, or 0 on the side that lacks the key.
    Keyless tables: ``row`` is the row's canonical text and the counts are its copies per side.
    ``state`` is ``mismatch`` (conclusive) or ``in_flight`` (still changing when rechecks ended).
    """

    key: dict[str, str | None]
    columns: dict[str, tuple[str | None, str | None]]
    source_rows: int = 1
    target_rows: int = 1
    row: str | None = None
    state: str = "mismatch"

    def describe(self) -> str:
        """One line for humans: the key, then the differing columns with both values."""
        if self.row is not None:
            return f"row {self.row}: {self.source_rows} on the source, {self.target_rows} on the target"
        key = ", ".join(f"{name}={_show(value)}" for name, value in self.key.items())
        if self.target_rows == 0:
            return f"key {key}: missing on the target"
        if self.source_rows == 0:
            return f"key {key}: not on the source (extra row on the target)"
        cols = "; ".join(f"{name}: source {_show(s)}, target {_show(t)}" for name, (s, t) in self.columns.items())
        return f"key {key}: {cols}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "key": self.key,
            "columns": {name: {"source": s, "target": t} for name, (s, t) in self.columns.items()},
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "row": self.row,
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class ChunkDiff:
    """A chunk (or bucket) whose count or checksum differs; ``bucket`` is set for keyless tables.
    ``rows``: the differing rows found in it key by key (at most ``max_reported_rows`` per
    table), ``differing_rows`` their full number."""

    index: int
    key_range: KeyRange
    source: Checksum
    target: Checksum
    bucket: int | None = None
    buckets: int | None = None
    rows: tuple[RowDiff, ...] = ()
    differing_rows: int = 0

    def describe(self) -> str:
        """One line for humans."""
        where = f"bucket {self.bucket}" if self.bucket is not None else format_range(self.key_range)
        line = f"chunk {self.index} {where}: source {self.source[0]} rows, target {self.target[0]} rows"
        if self.differing_rows:
            line += f", {self.differing_rows} differing row(s)"
        return line

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
            "differing_rows": self.differing_rows,
            "rows": [r.to_dict() for r in self.rows],
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
    not_in_source: tuple[str, ...] = ()

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
            "not_in_source_columns": list(self.not_in_source),
            "pending_messages": self.pending_messages,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Outcome of :func:`pipeline.control.verify.catchup.wait_caught_up`: ``caught_up`` when the
    heartbeat was applied and no message was left behind; ``pending`` is messages behind per
    change topic."""

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
        for c in t.mismatched:
            details.append(f"  mismatch {c.describe()}")
            details += [f"    {r.describe()}" for r in c.rows]
        for c in t.in_flight:
            details.append(f"  in flight {c.describe()}")
            details += [f"    still changing: {r.describe()}" for r in c.rows]
        details += [f"  excluded column {name}: {why}" for name, why in sorted(t.excluded.items())]
        details += [f"  renamed column {src} -> {tgt}" for src, tgt in sorted(t.renamed.items())]
        details += [
            f"  target column {name}: not in the source (dropped at source, or added on the target); ignored"
            for name in t.not_in_source
        ]
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


def to_records(result: VerifyResult) -> list[VerificationRecord]:
    """One :class:`sinks.base.VerificationRecord` per table of ``result`` (stamped ``finished_at``)."""
    return [
        VerificationRecord(
            table=str(t.table),
            ok=t.ok,
            status=t.status.value,
            rows_source=t.rows_source,
            rows_target=t.rows_target,
            chunks=t.chunks,
            mismatched_chunks=len(t.mismatched),
            verified_at=result.finished_at,
            target_table=str(t.target) if t.target is not None else None,
            detail=t.to_dict(),
        )
        for t in result.tables
    ]


def verification_clean(stored: Mapping[str, VerificationRecord], tables: Sequence[TableId]) -> bool:
    """True when every table of ``tables`` has a stored result and all are ok (pure)."""
    return bool(tables) and all(str(t) in stored and stored[str(t)].ok for t in tables)


def export_verify_metrics(result: VerifyResult, now: float | None = None) -> None:
    """Set the ``cdc_verify_*`` gauges from ``result`` (``now``: the run's timestamp, seconds since the epoch)."""
    stamp = now if now is not None else result.finished_at.timestamp()
    for t in result.tables:
        export_table(
            result.pipeline, str(t.table), t.rows_source, t.rows_target, t.chunks, len(t.mismatched), stamp, t.ok
        )


def export_stored(pipeline: str, stored: Mapping[str, VerificationRecord]) -> None:
    """Set the ``cdc_verify_*`` gauges from results stored in the target."""
    for name, r in stored.items():
        export_table(
            pipeline, name, r.rows_source, r.rows_target, r.chunks, r.mismatched_chunks, r.verified_at.timestamp(), r.ok
        )


def export_table(
    pipeline: str, table: str, rows_source: int, rows_target: int, chunks: int, mismatched: int, stamp: float, ok: bool
) -> None:
    """Set the ``cdc_verify_*`` gauges of one table (``stamp``: seconds since the epoch)."""
    metrics.VERIFY_ROWS.labels(pipeline, table, "source").set(rows_source)
    metrics.VERIFY_ROWS.labels(pipeline, table, "target").set(rows_target)
    metrics.VERIFY_CHUNKS.labels(pipeline, table).set(chunks)
    metrics.VERIFY_MISMATCHED_CHUNKS.labels(pipeline, table).set(mismatched)
    metrics.VERIFY_LAST_RUN.labels(pipeline, table).set(stamp)
    metrics.VERIFY_OK.labels(pipeline, table).set(1 if ok else 0)
