"""``cdc-pipeline offsets show|reset``: the consumer offsets a pipeline stored in its target
(the source of truth; :mod:`pipeline.control.offsets`).

``reset`` refuses while workers of the pipeline's consumer group are running, prints what it
will change and asks for confirmation (``--yes`` when stdin is not a terminal).

Exit codes: 0 success (or nothing to change); 1 Kafka or the target could not be read or
written, or workers are running; 2 invalid configuration or arguments, or not confirmed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.control.offsets import (
    GroupActiveError,
    OffsetChange,
    OffsetPlanError,
    PartitionOffsets,
    Selection,
    apply_reset,
    ensure_idle,
    offsets_for_time,
    parse_timestamp,
    plan_beginning,
    plan_offset,
    plan_timestamp,
    show,
)
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, TransientSinkError
from sinks.factory import UnsupportedTargetError, make_target

TARGET_ERRORS = (TransientSinkError, UnsupportedTargetError, psycopg.Error, sqlalchemy.exc.SQLAlchemyError)
"""What reading or writing a target may raise."""
TIMEOUT_S = 15.0
"""Seconds each Kafka admin request may take."""

app = typer.Typer(
    help="Show or reset the consumer offsets a pipeline stored in its target (the source of truth).",
    no_args_is_help=True,
)

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline name (optional when there is one).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a TTY).")]


def pick_pipeline(settings: Settings, name: str | None) -> PipelineSettings:
    """The pipeline named ``name``, or the only one; exits 2 with the defined names otherwise."""
    names = ", ".join(p.name for p in settings.pipelines) or "none"
    if name is None:
        if len(settings.pipelines) == 1:
            return settings.pipelines[0]
        fail([f"--pipeline is required (defined: {names})"])
    try:
        return settings.pipeline(name)
    except KeyError:
        fail([f"--pipeline: no pipeline {name!r} (defined: {names})"])


def confirm_or_exit(yes: bool, question: str) -> None:
    """Return when confirmed: ``--yes``, or the user answered yes on a terminal. Exits 2 when stdin
    is not a terminal and ``--yes`` is missing, 1 when the user declined."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(["not confirmed: stdin is not a terminal, pass --yes to proceed"])
    if not typer.confirm(question, default=False, err=True):
        fail(["aborted: nothing changed"], 1)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, trailing blanks stripped."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *rows]]
    return "\n".join(lines)


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _open(pipeline: PipelineSettings) -> Target:
    try:
        return make_target(pipeline, purpose="offsets")
    except TARGET_ERRORS as exc:
        fail([f"target of {pipeline.name}: {type(exc).__name__}: {exc}"], 1)


def _admin(settings: Settings) -> Any:
    conf: dict[str, Any] = {**settings.kafka.client_config()}
    return AdminClient(conf)


def _read(settings: Settings, pipeline: PipelineSettings, admin: Any, target: Target) -> list[PartitionOffsets]:
    try:
        return show(admin, target, settings.source(pipeline.source), pipeline, TIMEOUT_S)
    except KafkaException as exc:
        fail([f"kafka ({settings.kafka.bootstrap_servers}): {exc}"], 1)
    except TARGET_ERRORS as exc:
        fail([f"target of {pipeline.name}: {type(exc).__name__}: {exc}"], 1)


def render(group: str, rows: Sequence[PartitionOffsets]) -> str:
    """The ``show`` table."""
    body = [
        [
            r.topic,
            str(r.partition),
            _dash(r.stored) if r.stored is not None else "beginning",
            _dash(r.low),
            _dash(r.high),
            _dash(r.lag),
        ]
        for r in rows
    ]
    head = f"Offsets of consumer group {group} (stored in the target)"
    return head + "\n" + text_table(["TOPIC", "PARTITION", "NEXT_OFFSET", "LOW", "HIGH", "LAG"], body)


@app.command("show")
def show_cmd(config: ConfigOption = None, pipeline: PipelineOption = None, as_json: JsonOption = False) -> None:
    """Per topic and partition: the next offset stored in the target, the watermarks and the lag."""
    settings = load_or_exit(config)
    pipe = pick_pipeline(settings, pipeline)
    group = pipe.resolved_consumer_group
    target = _open(pipe)
    try:
        rows = _read(settings, pipe, _admin(settings), target)
    finally:
        target.close()
    if as_json:
        typer.echo(
            json.dumps({"pipeline": pipe.name, "group": group, "partitions": [r.to_dict() for r in rows]}, indent=2)
        )
    else:
        typer.echo(render(group, rows))


def _plan(
    admin: Any,
    rows: Sequence[PartitionOffsets],
    selection: Selection,
    to_offset: int | None,
    to_timestamp: str | None,
) -> list[OffsetChange]:
    """The changes of the chosen mode; exits 2 on a bad argument or an impossible plan."""
    try:
        if to_offset is not None:
            return plan_offset(rows, selection, to_offset)
        if to_timestamp is not None:
            ts = parse_timestamp(to_timestamp)
            chosen = [
                (r.topic, r.partition) for r in rows if selection.matches(r.topic, r.partition) and r.high is not None
            ]
            return plan_timestamp(rows, selection, offsets_for_time(admin, chosen, ts, TIMEOUT_S))
        return plan_beginning(rows, selection)
    except OffsetPlanError as exc:
        fail([f"offsets reset: {exc}"])
    except ValueError as exc:
        fail([f"--to-timestamp: {exc}"])
    except KafkaException as exc:
        fail([f"kafka: {exc}"], 1)


def _describe(change: OffsetChange) -> str:
    old = "beginning (none stored)" if change.old is None else str(change.old)
    new = "beginning (delete the stored offset)" if change.new is None else str(change.new)
    return f"  {change.topic}[{change.partition}]: {old} -> {new}"


def _check_mode(
    to_beginning: bool, to_offset: int | None, to_timestamp: str | None, topics: list[str], parts: list[int]
) -> None:
    modes = sum([to_beginning, to_offset is not None, to_timestamp is not None])
    if modes != 1:
        fail(["offsets reset: give exactly one of --to-beginning, --to-offset N, --to-timestamp TIME"])
    if to_offset is not None and not topics:
        fail(["offsets reset: --to-offset needs --topic (and optionally --partition)"])
    if parts and not topics:
        fail(["offsets reset: --partition needs --topic"])


@app.command("reset")
def reset_cmd(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    to_beginning: Annotated[
        bool, typer.Option("--to-beginning", help="Delete the stored offsets: workers start at the beginning.")
    ] = False,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", min=0, help="Next offset to consume (needs --topic).")
    ] = None,
    to_timestamp: Annotated[
        str | None,
        typer.Option(
            "--to-timestamp", help="ISO 8601 time (no zone: UTC) or epoch ms: the first message at or after it."
        ),
    ] = None,
    topic: Annotated[list[str] | None, typer.Option("--topic", help="Only this topic; repeat for several.")] = None,
    partition: Annotated[
        list[int] | None, typer.Option("--partition", min=0, help="Only this partition of --topic; repeatable.")
    ] = None,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Move a pipeline's stored offsets; refused while workers of its consumer group run."""
    topics, parts = list(topic or []), list(partition or [])
    _check_mode(to_beginning, to_offset, to_timestamp, topics, parts)
    settings = load_or_exit(config)
    pipe = pick_pipeline(settings, pipeline)
    group = pipe.resolved_consumer_group
    admin = _admin(settings)
    target = _open(pipe)
    try:
        _refuse_if_active(admin, group)
        rows = _read(settings, pipe, admin, target)
        changes = _plan(admin, rows, Selection(frozenset(topics), frozenset(parts)), to_offset, to_timestamp)
        if not changes:
            typer.echo(json.dumps({"group": group, "changes": []}) if as_json else f"{group}: nothing to change")
            return
        typer.echo(f"Offsets of consumer group {group} to change in the target:", err=as_json)
        for change in changes:
            typer.echo(_describe(change), err=as_json)
        confirm_or_exit(yes, f"Change {len(changes)} stored offset(s) of {group}?")
        warning = _apply(admin, target, group, changes, rows)
    finally:
        target.close()
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(
            json.dumps(
                {"group": group, "changes": [c.to_dict() for c in changes], "kafka_commit_error": warning}, indent=2
            )
        )
    else:
        typer.echo(f"{group}: {len(changes)} offset(s) changed; start the workers to resume from them")


def _refuse_if_active(admin: Any, group: str) -> None:
    try:
        ensure_idle(admin, group, TIMEOUT_S)
    except GroupActiveError as exc:
        fail([f"refused: {exc}"], 1)
    except KafkaException as exc:
        fail([f"kafka: cannot describe consumer group {group!r}: {exc}"], 1)


def _apply(
    admin: Any, target: Target, group: str, changes: list[OffsetChange], rows: list[PartitionOffsets]
) -> str | None:
    try:
        return apply_reset(admin, target, group, changes, rows, TIMEOUT_S)
    except GroupActiveError as exc:
        fail([f"refused: {exc}"], 1)
    except KafkaException as exc:
        fail([f"kafka: {exc}"], 1)
    except TARGET_ERRORS as exc:
        fail([f"target: {type(exc).__name__}: {exc}; nothing changed"], 1)
