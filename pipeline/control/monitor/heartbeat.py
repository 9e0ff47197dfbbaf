"""Heartbeat lag, end to end: where a pipeline writes its source's heartbeat table, and a probe that
reads that row back through the pipeline's :class:`sinks.base.Target`, so the lag is measured the same
way on every backend (PostgreSQL, MariaDB/MySQL, SQLite) without the monitor connecting to a target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.transform.transformer import build_transformer
from sinks.base import Target
from sinks.factory import UnsupportedTargetError, make_target

log = get_logger("pipeline.control.monitor.heartbeat")


@dataclass
class HeartbeatProbe:
    """Reads the heartbeat of source ``source`` in the target of pipeline ``pipeline``.

    ``table`` is where the pipeline writes the source's heartbeat table (see
    :func:`heartbeat_target_table`); ``target`` is the pipeline's :class:`~sinks.base.Target`
    (built with ``purpose="monitor"``), which keeps and reopens its own read session.
    """

    pipeline: str
    source: str
    table: TableId
    target: Target = field(repr=False)

    def read(self) -> datetime | None:
        """The heartbeat ``ts`` (aware, UTC) applied in the target; None while no heartbeat has
        been applied. Raises :class:`sinks.base.TransientSinkError` when the target is unreachable."""
        return self.target.read_heartbeat(self.table, self.source)

    def close(self) -> None:
        """Close the target's sessions (a later :meth:`read` reopens them)."""
        self.target.close()


def heartbeat_target_table(source: SourceSettings, pipeline: PipelineSettings) -> TableId:
    """Where ``pipeline`` writes ``source``'s heartbeat table ``<control_schema>.heartbeat``:
    the last matching transform ``route``, else ``<target.schema>.heartbeat`` (the sink puts
    un-routed tables in the target's default schema, :func:`pipeline.core.reduce.reduce_events`)."""
    heartbeat = TableId(source.control_schema, "heartbeat")
    try:
        routed = build_transformer(pipeline.transforms, pipeline.mask_salt).target_for(heartbeat)
    except (ValueError, ImportError) as exc:  # invalid rules stop the worker elsewhere; measure the default
        log.warning("transforms not usable for the heartbeat route", pipeline=pipeline.name, error=str(exc)[:300])
        routed = None
    return routed or TableId(pipeline.target.schema_name, "heartbeat")


def heartbeat_probes(settings: Settings, source: SourceSettings) -> list[HeartbeatProbe]:
    """One probe per pipeline of ``source``, whatever its target backend; a pipeline whose
    ``target.url`` names no backend this build has is skipped and logged. Nothing connects yet."""
    probes: list[HeartbeatProbe] = []
    for pipe in settings.pipelines:
        if pipe.source != source.name:
            continue
        try:
            target = make_target(pipe, purpose="monitor")
        except UnsupportedTargetError as exc:
            log.warning("heartbeat lag not measured for this target", pipeline=pipe.name, reason=str(exc))
            continue
        probes.append(
            HeartbeatProbe(
                pipeline=pipe.name, source=source.name, table=heartbeat_target_table(source, pipe), target=target
            )
        )
    return probes
