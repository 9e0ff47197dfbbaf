"""The cutover's reports: the JSON documents of ``run``/``status`` and ``plan``, and their human
form (rich tables). Pure: the documents come from :class:`~pipeline.control.cutover.state.CutoverState`
and :class:`~pipeline.control.cutover.plan.CutoverPlan`; rendering writes to a given console."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.control.cutover.plan import CutoverPlan
from pipeline.control.cutover.state import FORWARD, CutoverState, Phase


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def state_document(state: CutoverState) -> dict[str, Any]:
    """The report of a cutover (``run --json``, ``status --json``): phase, ok (``done`` or
    ``finished``), the write pause, per-phase seconds in phase order, the fence LSN, the gate,
    drain, verification and sequences, the abort reason; times as ISO text, UTC."""
    doc = state.to_dict()
    doc["ok"] = state.phase in (Phase.DONE, Phase.FINISHED)
    doc["phases"] = [
        {"phase": p.value, "seconds": round(state.durations[p.value], 3), "at": _iso(state.entered_at.get(p.value))}
        for p in (*FORWARD, Phase.ABORTED)
        if p.value in state.durations
    ]
    doc["started_at"] = _iso(state.started_at)
    doc["updated_at"] = _iso(state.updated_at)
    if state.fence is not None:
        doc["fence"]["fenced_at"] = _iso(state.fence.fenced_at) if state.fence.fenced_at else None
    return doc


def render_state(state: CutoverState, console: Console) -> None:
    """Print the human report of ``state`` on ``console``."""
    verdict = {Phase.DONE: "DONE", Phase.FINISHED: "FINISHED", Phase.ABORTED: "ABORTED"}.get(state.phase)
    console.print(f"cutover of [bold]{state.pipeline}[/bold]: phase [bold]{state.phase.value}[/bold]")
    phases = Table("phase", "seconds", "at (UTC)", title="phases")
    for item in state_document(state)["phases"]:
        phases.add_row(item["phase"], f"{item['seconds']:.3f}", item["at"] or "-")
    if phases.row_count:
        console.print(phases)
    if state.fence_lsn:
        console.print(f"fence LSN: {state.fence_lsn}")
    if state.fence is not None:
        scope = ", ".join(state.fence.roles) or "whole database"
        console.print(f"fence: {state.fence.method} ({scope}); {len(state.fence.terminated)} session(s) terminated")
    if state.verification is not None:
        tables = state.verification.get("tables", {})
        statuses = ", ".join(f"{t}: {v['status']}" for t, v in sorted(tables.items()))
        console.print(f"final verification: {'MATCH' if state.verification.get('ok') else 'NOT OK'} ({statuses})")
    _sequences(console, state.sequences, "sequences synced")
    if state.reverse:
        console.print(f"reverse: {state.reverse}")
    if state.write_pause_s is not None:
        console.print(f"[bold]write pause: {state.write_pause_s:.3f} s[/bold] (fence until the target took writes)")
    if state.reason:
        console.print(f"[red]reason: {state.reason}[/red]")
    if state.undo:
        console.print("[red]abort incomplete; run 'cutover abort' again once fixed[/red]")
    if verdict:
        console.print(verdict)


def _sequences(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    if not rows:
        return
    table = Table("sequence", "kind", "table", "source", "target before", "set", "on target", title=title)
    for s in rows:
        table.add_row(
            s["name"],
            s["kind"],
            s.get("table") or "-",
            str(s["source_value"]),
            "-" if s.get("target_before") is None else str(s["target_before"]),
            "-" if s.get("value") is None else str(s["value"]),
            s.get("target") or "-",
        )
    console.print(table)


def render_plan(plan: CutoverPlan, console: Console) -> None:
    """Print the human form of ``cutover plan``."""
    console.print(f"cutover plan of [bold]{plan.pipeline}[/bold] (nothing was changed)")
    gate = Table("check", "ok", "detail", title="gate")
    for check in plan.gate.checks:
        gate.add_row(check.name, "yes" if check.ok else "[red]NO[/red]", check.detail)
    console.print(gate)
    fence = plan.fence
    console.print(f"fence: {fence.get('method')} on {fence.get('scope')} (exempt: {fence.get('exempt')})")
    for item in fence.get("settings", []):
        who = item["role"] or "(database)"
        console.print(f"  {who}: default_transaction_read_only = {item['default_transaction_read_only']}")
    sessions = Table("pid", "role", "application", "client", "state", title="sessions the fence would terminate")
    for s in plan.sessions:
        sessions.add_row(
            str(s["pid"]),
            str(s["usename"]),
            str(s["application_name"] or ""),
            str(s["client_addr"] or ""),
            str(s["state"] or ""),
        )
    console.print(sessions if plan.sessions else "sessions the fence would terminate: none")
    _sequences(console, [s.to_dict() for s in plan.sequences], "sequences")
    console.print("READY: the gate holds" if plan.ok else "NOT READY: " + plan.gate.reason())
