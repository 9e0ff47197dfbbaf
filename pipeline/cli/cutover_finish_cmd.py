"""``cdc-pipeline cutover finish [--dry-run]``: end the rollback window
(:mod:`pipeline.control.cutover.finish`). Mounted by the cutover command group as ``finish``.

Exit codes: 0 listed (``--dry-run``) or dropped; 1 refused (the cutover is not ``done``) or a
drop failed (a rerun continues); 2 invalid configuration or arguments.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.control.cutover.finish import FinishError, Removal, cutover_phase, run_finish
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="The forward pipeline (optional when there is one).")
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="List what would be dropped; drop nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def finish_command(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    dry_run: DryRunOption = False,
    json_output: JsonOption = False,
) -> None:
    """End the rollback window after 'done': list, then drop what the pipelines left behind.

    Connectors, slots and publications of both directions, heartbeat and signal tables, control schemas; only what
    exists is listed, so a rerun continues an interrupted finish. Stop both pipelines' workers first.
    """
    settings = load_or_exit(config)
    pipe = _pipeline(settings, pipeline)
    phase = _phase(pipe) if dry_run else None
    try:
        removals = run_finish(settings, pipe, dry_run=dry_run)
    except FinishError as exc:
        fail([f"cutover finish: {exc}"], 1)
    if json_output:
        typer.echo(json.dumps(_document(pipe, dry_run, phase, removals), indent=2))
        return
    _echo(dry_run, phase, removals)


def _phase(pipe: PipelineSettings) -> str | None:
    """The recorded phase for a dry run's output (None when it cannot be read: a dry run lists anyway)."""
    try:
        return cutover_phase(pipe)
    except FinishError:
        return None


def _document(pipe: PipelineSettings, dry_run: bool, phase: str | None, removals: list[Removal]) -> dict[str, object]:
    doc: dict[str, object] = {"pipeline": pipe.name, "dry_run": dry_run}
    if dry_run:
        doc["phase"] = phase
    doc["removals"] = [r.to_dict() for r in removals]
    return doc


def _echo(dry_run: bool, phase: str | None, removals: list[Removal]) -> None:
    if dry_run:
        note = "" if phase in ("done", "finished") else " (finish runs only after 'done')"
        typer.echo(f"cutover phase: {phase or 'none recorded'}{note}")
    if not removals:
        typer.echo("nothing left to drop")
        return
    typer.echo("would drop:" if dry_run else "dropped:")
    for removal in removals:
        typer.echo(f"  {removal.line()}")


def _pipeline(settings: Settings, name: str | None) -> PipelineSettings:
    names = ", ".join(p.name for p in settings.pipelines) or "none"
    if name is None:
        with_reverse = [p for p in settings.pipelines if p.cutover.reverse is not None]
        if len(with_reverse) == 1:
            return with_reverse[0]
        fail([f"--pipeline is required (defined: {names})"])
    try:
        return settings.pipeline(name)
    except KeyError:
        fail([f"--pipeline: no pipeline {name!r} (defined: {names})"])
