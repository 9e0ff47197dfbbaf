"""``cdc-pipeline control`` (alias ``monitor``): one control-plane replica until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Annotated

import typer
from confluent_kafka import KafkaException

from pipeline.app import run_control
from pipeline.cli.common import ConfigOption, fail, load_or_exit

SourcesOption = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Act only for this source (repeatable); all sources by default."),
]
LeaseOption = Annotated[
    str | None,
    typer.Option(
        "--lease", help="Lease name; default: the sources' names joined with '.'. Replicas sharing it take turns."
    ),
]


def control(config: ConfigOption = None, source: SourcesOption = None, lease: LeaseOption = None) -> None:
    """Run a control-plane replica: monitors, connector auto-restart, snapshot coordinator and
    cutover readiness, active only while it holds the lease; serves /metrics, /healthz, /readyz.

    Exit 0 on SIGTERM/SIGINT, 3 when the lease was lost (restart the replica: it comes back as a
    standby), 1 when the lease group cannot be joined.
    """
    settings = load_or_exit(config)
    if not settings.sources:
        fail(["sources: none defined (nothing to control)"])
    known = {s.name for s in settings.sources}
    unknown = [n for n in source or [] if n not in known]
    if unknown:
        fail([f"--source: unknown source {n!r} (defined: {', '.join(sorted(known))})" for n in unknown])
    try:
        code = run_control(settings, source or None, lease=lease)
    except KafkaException as exc:
        fail([f"cannot join the control lease group on {settings.kafka.bootstrap_servers}: {exc}"], code=1)
    raise typer.Exit(code)
