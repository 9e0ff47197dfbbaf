"""``cdc-pipeline demo``: pgbench replicated end to end on the local stack (``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import fail
from pipeline.localstack import StackStartError, settings_for
from pipeline.localstack.demo import DemoError, DemoOptions, run_demo
from pipeline.localstack.jars import ToolMissingError


def demo(
    scale: Annotated[int, typer.Option(help="pgbench scale (100,000 accounts per unit).")] = 10,
    duration: Annotated[int, typer.Option(help="Seconds of pgbench load.")] = 60,
    rate: Annotated[int, typer.Option(help="pgbench transactions/s (-R).")] = 500,
    clients: Annotated[int, typer.Option(help="pgbench clients (-c).")] = 4,
    restart_midway: Annotated[
        bool, typer.Option("--restart-midway", help="Stop and restart the pipeline during the load.")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Port of the worker's /metrics.")] = 9108,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Local stack state folder.")] = None,
) -> None:
    """Replicate a live pgbench workload end to end and verify it; exit 1 if verification fails."""
    options = DemoOptions(scale, duration, rate, clients, restart_midway, metrics_port)
    try:
        code = run_demo(settings_for(state_dir), options, say=typer.echo)
    except (DemoError, StackStartError, ToolMissingError) as exc:
        fail([f"demo failed: {exc}"], code=1)
    raise typer.Exit(code)
