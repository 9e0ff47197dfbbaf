"""Shapes shared by the bulk-load modules (planner, copiers, orchestrator, CLI): the exported
snapshot, the source tables and their ctid chunks, one copy task, progress callbacks and the
report. Pure data; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pipeline.core.events import Column, TableId
from pipeline.core.settings.models import PipelineSettings


class BulkLoadError(Exception):
    """A load that cannot start or go on; the message names the object and the fix."""


@dataclass(frozen=True, slots=True)
class ExportedSnapshot:
    """The result of ``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` (PostgreSQL docs,
    "Streaming Replication Protocol"): the slot, its ``consistent_point`` as a byte position
    (:func:`pipeline.core.events.parse_lsn`) and ``snapshot_name`` for ``SET TRANSACTION SNAPSHOT``."""

    slot_name: str
    consistent_lsn: int
    snapshot_name: str


@dataclass(frozen=True, slots=True)
class SourceTable:
    """A captured source table: ``columns`` as Debezium would describe them with
    ``column.propagate.source.type``; ``key_columns`` the primary key (or replica identity
    index) columns, ``()`` when keyless; ``estimated_rows`` is ``reltuples`` (>= 0) and
    ``pages`` the heap size in blocks."""

    table: TableId
    columns: tuple[Column, ...]
    key_columns: tuple[str, ...]
    estimated_rows: int
    pages: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A ctid range of a table: ``ctid >= (first_page, 0)`` and, unless ``end_page`` is None
    (to the end of the table), ``ctid < (end_page, 0)``; ``index`` is 0-based within the table."""

    index: int
    first_page: int
    end_page: int | None


@dataclass(frozen=True, slots=True)
class CopyTask:
    """One chunk of one (pipeline, table) pair to copy from ``snapshot``."""

    pipeline: PipelineSettings
    source: SourceTable
    chunk: Chunk
    snapshot: ExportedSnapshot


class LoadProgress(Protocol):
    """Receives the load's progress; ``table`` is the target ``schema.table``. Called from the
    copy threads: implementations must be thread-safe."""

    def planned(self, pipeline: str, table: str, estimated_rows: int) -> None:
        """A table is planned with about ``estimated_rows`` rows."""

    def copied(self, pipeline: str, table: str, rows: int) -> None:
        """``rows`` more rows were just copied (a delta)."""

    def table_done(self, pipeline: str, table: str, rows: int, seconds: float) -> None:
        """Every chunk of the table is copied: ``rows`` in all, ``seconds`` from its first chunk."""


@dataclass(frozen=True, slots=True)
class TableReport:
    """One loaded (pipeline, target table): rows, seconds and the strategy used."""

    pipeline: str
    table: str
    rows: int
    seconds: float
    path: Literal["copy", "rows"]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What ``load run`` did. ``copy_seconds`` is the wall time from the first chunk to the last;
    ``recovered`` says an interrupted previous load was cleaned up first; ``already_loaded``
    that every pipeline was already done (nothing copied)."""

    source: str
    slot_name: str
    consistent_lsn: int
    tables: tuple[TableReport, ...]
    rows: int
    copy_seconds: float
    rows_per_s: float
    recovered: bool
    already_loaded: bool
