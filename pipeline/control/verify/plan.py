"""What is compared for one table: the source catalog and the transforms' column report mapped
onto the target's columns (renamed columns under their target names, masked and excluded ones
reported, transform-added and the pipeline's own ``__cdc_*`` columns ignored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from pipeline.transform.transformer import ColumnReport, build_transformer
from sinks.base import CatalogColumn, ChecksumPlan, CompareColumn, TargetVerification
from sinks.pg_canonical import read_columns, read_primary_key

OWN_PREFIX = "__cdc_"


@dataclass(frozen=True, slots=True)
class TablePlan:
    """The :class:`sinks.base.ChecksumPlan` of one source table (``checks``, what the target's
    side computes) and what the report says about it: ``excluded`` maps source columns not
    compared to why (masked, excluded by a transform); ``added`` lists target columns a
    transform adds (ignored); ``not_verifiable`` is the reason when the comparison would be
    meaningless (row filters, hooks); ``problem`` a compared column missing in the target or a
    key column not compared. Schema differences, apart from data: ``missing`` lists the target
    columns a compared source column has no counterpart for (a schema mismatch), ``target_only``
    the target's columns the source no longer has (dropped at the source, or added on the
    target; ignored by the comparison).
    """

    checks: ChecksumPlan
    excluded: dict[str, str] = field(default_factory=dict)
    added: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)
    not_verifiable: str | None = None
    problem: str | None = None
    missing: tuple[str, ...] = ()
    target_only: tuple[str, ...] = ()

    @property
    def table(self) -> TableId:
        """The source table."""
        return self.checks.table

    @property
    def target(self) -> TableId:
        """The target table."""
        return self.checks.target

    @property
    def columns(self) -> tuple[CompareColumn, ...]:
        """The compared columns."""
        return self.checks.columns

    @property
    def key(self) -> tuple[CompareColumn, ...]:
        """The compared key columns (empty: keyless)."""
        return self.checks.key

    @property
    def keyless(self) -> bool:
        """True when the source table has no primary key."""
        return self.checks.keyless

    @property
    def collate_c(self) -> bool:
        """True when key comparisons use the "C" collation."""
        return self.checks.collate_c

    @property
    def target_exists(self) -> bool:
        """False before the sink created the target table."""
        return self.checks.target_exists


def _excluded(report: ColumnReport) -> dict[str, str]:
    excluded = dict(report.excluded)
    for target_name, (source_name, mode) in report.masked.items():
        excluded[source_name] = (
            f"masked ({mode}) as {target_name}" if target_name != source_name else f"masked ({mode})"
        )
    return excluded


def _compared(
    report: ColumnReport, by_source: dict[str, CatalogColumn], by_target: dict[str, CatalogColumn], exists: bool
) -> tuple[list[CompareColumn], list[str]]:
    compared: list[CompareColumn] = []
    problems: list[str] = []
    for target_name, source_name in report.comparable.items():
        src = by_source.get(source_name)
        if src is None:
            continue
        tgt = by_target.get(target_name)
        if tgt is None and exists:
            problems.append(f"target column {target_name!r} (source {source_name!r}) is missing")
            continue
        compared.append(CompareColumn(source_name, target_name, src.typname, tgt is None or tgt.type == src.type))
    return compared, problems


def _collate_c(
    key: Sequence[CompareColumn], by_source: dict[str, CatalogColumn], by_target: dict[str, CatalogColumn]
) -> bool:
    """True when a key column's collation differs between the sides (both reporting one)."""
    for column in key:
        src, tgt = by_source[column.source], by_target.get(column.target)
        if (
            src.collation is not None
            and tgt is not None
            and tgt.collation is not None
            and tgt.collation != src.collation
        ):
            return True
    return False


def build_plan(
    table: TableId,
    target: TableId,
    source_columns: Sequence[CatalogColumn],
    source_key: Sequence[str],
    target_columns: Sequence[CatalogColumn],
    report: ColumnReport,
) -> TablePlan:
    """The :class:`TablePlan` from catalog facts and the transforms' column report (pure).

    A target column without a collation (not collatable, or a backend ordering text by code
    point) never asks for "C" comparisons. Raises nothing: problems go to ``problem``.
    """
    excluded = _excluded(report)
    reasons = [*report.row_filters, *report.hooks]
    by_source = {c.name: c for c in source_columns}
    by_target = {c.name: c for c in target_columns if not c.name.startswith(OWN_PREFIX)}
    target_exists = bool(target_columns)
    compared, problems = _compared(report, by_source, by_target, target_exists)
    missing = tuple(c for c in report.comparable if report.comparable[c] in by_source and c not in by_target)
    known_targets = set(report.comparable) | set(report.added) | {t for t, _ in report.masked.items()}
    target_only = tuple(c for c in by_target if c not in known_targets and c not in report.comparable)
    by_name = {c.source: c for c in compared}
    key: list[CompareColumn] = []
    for name in source_key:
        column = by_name.get(name)
        if column is None:
            problems.append(f"key column {name!r} is not compared ({excluded.get(name, 'dropped')})")
        else:
            key.append(column)
    checks = ChecksumPlan(
        table=table,
        target=target,
        columns=tuple(compared),
        key=tuple(key) if len(key) == len(source_key) else (),
        collate_c=_collate_c(key, by_source, by_target),
        target_exists=target_exists,
    )
    return TablePlan(
        checks=checks,
        excluded=excluded,
        added=tuple(report.added),
        renamed={c.source: c.target for c in compared if c.source != c.target},
        not_verifiable="; ".join(reasons) if reasons else None,
        problem="; ".join(problems) if problems else None,
        missing=missing if target_exists else (),
        target_only=target_only,
    )


def target_table(pipeline: PipelineSettings, table: TableId, report: ColumnReport) -> TableId:
    """Where the sink writes ``table``: the transforms' route, else the target's default schema."""
    return report.target or TableId(pipeline.target.schema_name, table.table)


def pipeline_tables(settings: Settings, pipeline: PipelineSettings) -> list[TableId]:
    """The source tables ``pipeline`` applies (its ``tables``, else all of its source's)."""
    source = settings.source(pipeline.source)
    return [TableId(*name.split(".", 1)) for name in (pipeline.tables or source.tables)]


def read_source_side(
    sconn: psycopg.Connection[Any], pipeline: PipelineSettings, table: TableId
) -> tuple[list[CatalogColumn], ColumnReport, TableId]:
    """``(source columns from the catalog, the transforms' column report, the target table the
    sink writes)``. Raises LookupError when the source table does not exist."""
    source_columns = read_columns(sconn, table)
    if not source_columns:
        raise LookupError(f"source table {table} does not exist")
    transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
    report = transformer.column_report(table, [c.name for c in source_columns])
    return source_columns, report, target_table(pipeline, table, report)


def plan_table(
    sconn: psycopg.Connection[Any], verification: TargetVerification, pipeline: PipelineSettings, table: TableId
) -> TablePlan:
    """Read the source catalog, the target's columns (through ``verification``) and the
    transforms, and build the table's :class:`TablePlan`.

    Raises LookupError when the source table does not exist.
    """
    source_columns, report, target = read_source_side(sconn, pipeline, table)
    return build_plan(
        table, target, source_columns, read_primary_key(sconn, table), verification.columns(target), report
    )
