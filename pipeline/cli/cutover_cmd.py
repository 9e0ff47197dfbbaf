"""``cdc-pipeline cutover plan|run|status|abort`` (and ``finish``, when this build has it): the
cutover of a pipeline from its source to its target (:mod:`pipeline.control.cutover`).

Exit codes: 0 the gate holds (plan), the cutover reached ``done`` (run), the state was read
(status), the cutover was aborted or nothing was in flight (abort); 1 the gate refused, a step
failed and the cutover was aborted, an abort could not undo everything, a database or Kafka
could not be reached; 2 invalid configuration or arguments, or a refused command (abort after
``done``).
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer
from confluent_kafka import KafkaException

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.cli.progress import make_console
from pipeline.control.cutover.plan import plan_cutover
from pipeline.control.cutover.report import render_plan, render_state, state_document
from pipeline.control.cutover.run import Cutover, CutoverRefusedError, export_state
from pipeline.control.cutover.state import Phase, PhaseError
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError
from sinks.factory import UnsupportedTargetError, make_target

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline name (optional when there is one).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
ReverseOption = Annotated[
    bool,
    typer.Option("--reverse", help="Start the reverse pipeline (new primary -> old source) before 'done'."),
]
FAILURES = (psycopg.Error, sqlalchemy.exc.DBAPIError, TransientSinkError, KafkaException, OSError)

app = typer.Typer(
    help="Cutover: gate, fence the source, drain, verify, sync sequences (and start the rollback direction).",
    no_args_is_help=True,
)


def _chosen(config: Any, pipeline: str | None) -> tuple[Settings, PipelineSettings]:
    settings = load_or_exit(config)
    try:
        return settings, settings.pipeline(pipeline)
    except KeyError as exc:
        fail([f"--pipeline: {exc.args[0]} (defined: {', '.join(p.name for p in settings.pipelines) or 'none'})"])


def _print(doc: dict[str, Any]) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


@app.command("plan")
def plan(config: ConfigOption = None, pipeline: PipelineOption = None, json_out: JsonOption = False) -> None:
    """Check the gate (lag sampled for cutover.stable_s, the last verification, the DLQ) and list
    the sequences and the sessions the fence would end. Changes nothing; exit 0 when the gate holds."""
    settings, chosen = _chosen(config, pipeline)
    try:
        target = make_target(chosen, purpose="cutover")
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    try:
        result = plan_cutover(settings, chosen, target)
    except FAILURES as exc:
        fail([f"cutover plan failed: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    finally:
        target.close()
    if json_out:
        _print(result.to_dict())
    else:
        render_plan(result, make_console(sys.stdout))
    raise typer.Exit(0 if result.ok else 1)


@app.command("run")
def run(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    reverse: ReverseOption = False,
    json_out: JsonOption = False,
) -> None:
    """Gate, fence the source, record the fence LSN, drain, verify, stop the forward connector,
    sync sequences (--reverse: start the reverse pipeline), done. Any failure before 'done'
    aborts: the fence is lifted and the forward connector resumed. Exit 0 only at 'done'."""
    settings, chosen = _chosen(config, pipeline)
    if reverse and chosen.cutover.reverse is None:
        fail([f"--reverse: pipelines[{chosen.name}].cutover.reverse is not configured"])
    try:
        with Cutover.open(settings, chosen, exclusive=True) as cutover:
            state = cutover.run(reverse)
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    except (CutoverRefusedError, PhaseError) as exc:
        fail([f"cutover run refused: {exc}"])
    except FAILURES as exc:
        fail([f"cutover run failed: {type(exc).__name__}: {str(exc).strip()} (see 'cutover status')"], code=1)
    _show(state_document(state), state, json_out)
    raise typer.Exit(0 if state.phase is Phase.DONE else 1)


@app.command("status")
def status(config: ConfigOption = None, pipeline: PipelineOption = None, json_out: JsonOption = False) -> None:
    """The phase and report of the pipeline's cutover, from the durable state in the target."""
    settings, chosen = _chosen(config, pipeline)
    try:
        with Cutover.open(settings, chosen) as cutover:
            state = cutover.state
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    except FAILURES as exc:
        fail([f"cutover status failed: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    export_state(state)
    _show(state_document(state), state, json_out)


@app.command("abort")
def abort(config: ConfigOption = None, pipeline: PipelineOption = None, json_out: JsonOption = False) -> None:
    """Lift the fence (restoring the saved prior settings), resume the forward connector, stop a
    reverse pipeline that was started. Refused after 'done' (use 'cutover finish' or a rollback).
    Idempotent."""
    settings, chosen = _chosen(config, pipeline)
    try:
        with Cutover.open(settings, chosen, exclusive=True) as cutover:
            state = cutover.abort("aborted by 'cutover abort'")
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    except CutoverRefusedError as exc:
        fail([f"cutover abort refused: {exc}"])
    except FAILURES as exc:
        fail([f"cutover abort failed: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    _show(state_document(state), state, json_out)
    raise typer.Exit(1 if state.undo else 0)


def _show(doc: dict[str, Any], state: Any, json_out: bool) -> None:
    if json_out:
        _print(doc)
    else:
        render_state(state, make_console(sys.stdout))


def _mount_finish() -> None:
    """Mount ``cutover finish`` (``pipeline/cli/cutover_finish_cmd.py``) when this build has it."""
    try:
        module = importlib.import_module("pipeline.cli.cutover_finish_cmd")
    except ImportError:
        return
    app.command("finish")(module.finish_command)


_mount_finish()
