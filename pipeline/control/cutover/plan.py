"""``cutover plan``: the gate as ``cutover run`` would check it, every sequence with its source and
target values, and the roles and sessions a fence would end. Changes nothing (the lag sampling
only rewrites the source's heartbeat row, as Debezium's own heartbeat does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.control.cutover.fence import FenceError, fenced_roles, fenced_sessions, resolve_plan
from pipeline.control.cutover.gate import Check, GateResult, check_gate
from pipeline.control.cutover.run import admin_client
from pipeline.control.cutover.sequences import SequenceSync, discover, read_target
from pipeline.control.verify.plan import pipeline_tables
from pipeline.control.verify.source import connect_source
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, open_cutover


@dataclass
class CutoverPlan:
    """What ``cutover plan`` found: the gate, the fence (method, roles or the whole database,
    the settings it would set, the sessions it would terminate) and the sequences."""

    pipeline: str
    gate: GateResult
    fence: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[SequenceSync] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the gate holds."""
        return self.gate.ok

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``cutover plan --json``)."""
        return {
            "pipeline": self.pipeline,
            "ok": self.ok,
            "gate": self.gate.to_dict(),
            "fence": self.fence,
            "sessions": self.sessions,
            "sequences": [s.to_dict() for s in self.sequences],
        }


def plan_cutover(settings: Settings, pipeline: PipelineSettings, target: Target) -> CutoverPlan:
    """Check the gate and list the sequences and the fence (see the module docstring). Raises
    psycopg.Error (source), TransientSinkError (target), KafkaException."""
    source = settings.source(pipeline.source)
    fence = pipeline.cutover.fence
    with admin_client(settings) as admin:
        gate = check_gate(settings, pipeline, target, admin)
    described: dict[str, Any] = {
        "method": fence.method,
        "scope": f"roles {', '.join(fence.roles)}" if fence.roles else f"database {source.database}",
        "exempt": source.user,
        "terminate_sessions": fence.terminate_sessions,
    }
    checks = list(gate.checks)
    if fence.method != "read_only":
        described["command"] = fence.command
    store = open_cutover(target)
    try:
        with connect_source(source, "cutover plan", 60) as conn:
            sessions: list[dict[str, Any]] = []
            if fence.method == "read_only":
                try:
                    plan = resolve_plan(conn, source.database, source.user, fence.roles)
                except FenceError as exc:
                    checks.append(Check("fence", False, str(exc)))
                else:
                    described["settings"] = [
                        {"role": role, "default_transaction_read_only": value} for role, value in plan
                    ]
                    sessions = fenced_sessions(conn, fenced_roles(plan, not fence.roles), source.user)
            found = discover(conn, pipeline_tables(settings, pipeline), pipeline.cutover.sequences)
        sequences = read_target(store, pipeline, found)
    finally:
        store.close()
    return CutoverPlan(pipeline.name, GateResult(tuple(checks)), described, sessions, sequences)
