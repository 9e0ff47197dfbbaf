"""Repair of confirmed mismatched chunks of keyed tables: a guarded delete of target rows the
source lacks, then a filtered incremental snapshot of each chunk's key range through the
snapshot coordinator (``additional-conditions``), which rewrites every source row of the range
with a newer position than the stale target copy (docs/design/verify.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pipeline.control.snapshot.loop import SnapshotCoordinator
from pipeline.control.snapshot.model import Condition, SnapshotKind, SnapshotRequest
from pipeline.control.snapshot.signals import key_range_filters
from pipeline.control.snapshot.wiring import build_coordinator
from pipeline.control.verify.model import Status, VerifyResult, VerifySettings, format_range
from pipeline.control.verify.plan import TablePlan, plan_table
from pipeline.control.verify.run import pipeline_target
from pipeline.control.verify.source import connect_source, source_keys
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import KeyRange, Target, TargetVerification

log = get_logger(__name__)

KEYLESS_REASON = (
    "no primary key: an incremental snapshot needs a key and would append duplicate rows "
    "(rows are keyed by position); re-create the target table and re-snapshot instead"
)


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


def guarded_delete(
    sconn: psycopg.Connection[Any], verification: TargetVerification, plan: TablePlan, key_range: KeyRange
) -> int:
    """Delete target rows of ``key_range`` whose key the source lacks, only while their
    version columns still hold the values read first (the target is read before the source, so
    a row the pipeline rewrites meanwhile is kept); returns the rows deleted. No tombstone is
    written: if an older change of such a key is still in flight it may re-insert the row, and
    the delete that follows it in the stream removes it again."""
    if plan.keyless or not plan.target_exists:
        return 0
    target_rows = verification.versioned_keys(plan.checks, key_range)
    if not target_rows:
        return 0
    present = source_keys(sconn, plan.checks, key_range)
    doomed = [r for r in target_rows if r.key not in present]
    if not doomed:
        return 0
    deleted = verification.guarded_delete(plan.checks, doomed)
    log.info(
        "target rows absent from the source deleted",
        table=str(plan.target),
        rows=deleted,
        range=format_range(key_range),
    )
    return deleted


def repair_filters(sconn: psycopg.Connection[Any], plan: TablePlan, ranges: Sequence[KeyRange]) -> list[str | None]:
    """``additional-conditions`` filters (source column names, SQL literals rendered by the
    source connection) for ``ranges`` of ``plan``'s key."""

    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(sconn)

    def literal(value: Any) -> str:
        return sql.Literal(value).as_string(sconn)

    return key_range_filters([c.source for c in plan.key], ranges, ident, literal)


def _repair_table(
    sconn: psycopg.Connection[Any],
    verification: TargetVerification,
    plan: TablePlan,
    ranges: Sequence[KeyRange],
    coord: SnapshotCoordinator,
    report: RepairReport,
) -> list[uuid.UUID]:
    name = str(plan.table)
    if plan.keyless:
        report.skipped[name] = KEYLESS_REASON
        return []
    report.deleted[name] = sum(guarded_delete(sconn, verification, plan, r) for r in ranges)
    ids: list[uuid.UUID] = []
    for text in repair_filters(sconn, plan, ranges):
        conditions = [Condition(name, text)] if text is not None else []
        ids.append(coord.queue.enqueue([name], SnapshotKind.INCREMENTAL, conditions, origin="repair").id)
    return ids


def repair_pipeline(
    settings: Settings,
    pipeline: PipelineSettings,
    result: VerifyResult,
    config: VerifySettings | None = None,
    coordinator: SnapshotCoordinator | None = None,
    on_progress: Callable[[list[SnapshotRequest]], None] | None = None,
    target: Target | None = None,
) -> RepairReport:
    """Repair the confirmed mismatched chunks of ``result`` (see the module docstring) and wait
    (at most ``repair_timeout_s``) for the snapshots; ``coordinator`` defaults to one built for
    the source (it acts only if no other coordinator holds the source's lock; otherwise the
    running one sends the requests), ``target`` to one built for the pipeline. Verify again
    afterwards. Raises psycopg.Error (source), TransientSinkError (target)."""
    cfg = config or VerifySettings()
    source = settings.source(pipeline.source)
    report = RepairReport()
    ids: list[uuid.UUID] = []
    coord = coordinator or build_coordinator(settings, source, with_lag=False)
    try:
        with (
            pipeline_target(pipeline, "verify repair", target) as tgt,
            connect_source(source, "verify repair", cfg.statement_timeout_s) as sconn,
        ):
            verification = tgt.verification(cfg.statement_timeout_s)
            try:
                for t in result.tables:
                    if t.status is not Status.MISMATCH or not t.mismatched:
                        continue
                    plan = plan_table(sconn, verification, pipeline, t.table)
                    ids += _repair_table(sconn, verification, plan, [c.key_range for c in t.mismatched], coord, report)
            finally:
                verification.close()
        if ids:
            report.requests = coord.wait_for(ids, cfg.repair_timeout_s, on_poll=on_progress)
    finally:
        if coordinator is None:
            coord.stop(5.0)
    return report
