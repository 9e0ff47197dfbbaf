"""``cdc-pipeline dlq list|show|replay``: inspect a pipeline's dead letters and replay them to
their original partition after a fix (:mod:`pipeline.control.dlq_tools`).

Only change data is printed (headers, key, value), never configuration. Replayed messages are
consumed by the workers like any other change, so the version guard still applies.

Exit codes: 0 success; 1 Kafka could not be read or written; 2 invalid configuration or
arguments (an unknown DLQ offset), or a replay not confirmed.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from confluent_kafka import KafkaException

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.cli.offsets_cmd import PipelineOption, confirm_or_exit, pick_pipeline, text_table
from pipeline.control.dlq_tools import (
    REASON_WIDTH,
    DeadLetterRecord,
    DlqReadError,
    ReplayError,
    filter_letters,
    find_letters,
    parse_position,
    read_dead_letters,
    replay,
)
from pipeline.control.offsets import parse_timestamp
from pipeline.core.settings.root import Settings

app = typer.Typer(help="Inspect and replay a pipeline's dead letters (its DLQ topic).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ErrorClassOption = Annotated[
    str | None, typer.Option("--error-class", help="Only dead letters with this cdc.error.class.")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Only dead letters produced at or after this ISO 8601 time or epoch ms.")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to read the DLQ topic to its end.")]


def _letters(settings: Settings, topic: str, timeout_s: float) -> list[DeadLetterRecord]:
    try:
        return read_dead_letters(settings.kafka.client_config(), topic, timeout_s)
    except DlqReadError as exc:
        fail([str(exc)], 1)
    except KafkaException as exc:
        fail([f"kafka ({settings.kafka.bootstrap_servers}): {exc}"], 1)


def _filtered(letters: list[DeadLetterRecord], error_class: str | None, since: str | None) -> list[DeadLetterRecord]:
    try:
        since_ms = None if since is None else parse_timestamp(since)
    except ValueError as exc:
        fail([f"--since: {exc}"])
    return filter_letters(letters, error_class, since_ms)


def _short(text: str | None, width: int = REASON_WIDTH) -> str:
    one_line = " ".join((text or "-").split())
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


def render_list(topic: str, letters: list[DeadLetterRecord]) -> str:
    """The ``list`` table: one line per dead letter."""
    rows = [
        [
            f"{r.partition}:{r.offset}",
            f"{r.original_topic or '-'}[{'-' if r.original_partition is None else r.original_partition}]"
            f"@{'-' if r.original_offset is None else r.original_offset}",
            r.error_class or "-",
            r.summary()["timestamp"] or "-",
            _short(r.reason),
        ]
        for r in letters
    ]
    head = f"{len(letters)} dead letter(s) in {topic}"
    return head + "\n" + text_table(["DLQ", "ORIGINAL", "ERROR_CLASS", "TIMESTAMP", "REASON"], rows)


@app.command("list")
def list_cmd(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    error_class: ErrorClassOption = None,
    since: SinceOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """List dead letters: DLQ position, origin, error class, time, reason (in full with --json)."""
    settings = load_or_exit(config)
    pipe = pick_pipeline(settings, pipeline)
    topic = pipe.resolved_dlq_topic
    letters = _filtered(_letters(settings, topic, timeout), error_class, since)
    if as_json:
        typer.echo(json.dumps({"topic": topic, "dead_letters": [r.summary() for r in letters]}, indent=2))
    else:
        typer.echo(render_list(topic, letters))


def render_detail(topic: str, letter: DeadLetterRecord) -> str:
    """Every header, then the key and the value of one dead letter."""
    d = letter.detail()
    lines = [f"{topic} {letter.partition}:{letter.offset}  ({d['timestamp'] or 'no timestamp'})", "Headers:"]
    lines += [f"  {k}: {v}" for k, v in d["headers"]] or ["  (none)"]
    for name in ("key", "value"):
        lines.append(f"{name.capitalize()}:")
        lines += ["  " + line for line in ("(null)" if d[name] is None else d[name]).splitlines()] or ["  "]
    return "\n".join(lines)


@app.command("show")
def show_cmd(
    position: Annotated[
        str, typer.Argument(help="DLQ OFFSET, or PARTITION:OFFSET when the DLQ has several partitions.")
    ],
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Print one dead letter: every header, the key and the value (pretty JSON when it is JSON)."""
    settings = load_or_exit(config)
    pipe = pick_pipeline(settings, pipeline)
    try:
        wanted = parse_position(position)
    except ValueError as exc:
        fail([f"OFFSET: {exc}"])
    topic = pipe.resolved_dlq_topic
    try:
        (letter,) = find_letters(_letters(settings, topic, timeout), [wanted])
    except ValueError as exc:
        fail([f"{topic}: {exc}"])
    typer.echo(json.dumps(letter.detail(), indent=2) if as_json else render_detail(topic, letter))


@app.command("replay")
def replay_cmd(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    offset: Annotated[
        list[str] | None, typer.Option("--offset", help="DLQ OFFSET or PARTITION:OFFSET to replay; repeatable.")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter (after the filters).")] = False,
    error_class: ErrorClassOption = None,
    since: SinceOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a TTY).")
    ] = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Re-produce dead letters to their original partition (header cdc.replayed.from), after a fix."""
    if bool(offset) == replay_all:
        fail(["dlq replay: give --offset N (repeatable) or --all"])
    try:
        positions = [parse_position(o) for o in offset or []]
    except ValueError as exc:
        fail([f"--offset: {exc}"])
    settings = load_or_exit(config)
    pipe = pick_pipeline(settings, pipeline)
    topic = pipe.resolved_dlq_topic
    letters = _filtered(_letters(settings, topic, timeout), error_class, since)
    try:
        chosen = letters if replay_all else find_letters(letters, positions)
    except ValueError as exc:
        fail([f"{topic}: {exc} (after the filters)"])
    if not chosen:
        typer.echo(json.dumps({"replayed": []}) if as_json else "nothing to replay")
        return
    typer.echo(f"To replay from {topic} ({len(chosen)}):", err=as_json)
    for r in chosen:
        typer.echo(f"  {r.partition}:{r.offset} -> {r.original_topic}[{r.original_partition}]", err=as_json)
    confirm_or_exit(yes, f"Replay {len(chosen)} dead letter(s) of {pipe.name}?")
    try:
        done = replay(settings.kafka.client_config(), topic, chosen, timeout)
    except ReplayError as exc:
        fail([f"dlq replay: {exc}"], 1)
    except KafkaException as exc:
        fail([f"kafka ({settings.kafka.bootstrap_servers}): {exc}"], 1)
    if as_json:
        typer.echo(json.dumps({"topic": topic, "replayed": [d.to_dict() for d in done]}, indent=2))
        return
    for d in done:
        typer.echo(f"replayed {d.dlq_partition}:{d.dlq_offset} -> {d.topic}[{d.partition}]@{d.offset}")
