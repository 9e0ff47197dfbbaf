"""``cdc-pipeline run``: one worker of a pipeline's consumer group, until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.app import run_worker
from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.core.retry import RetryBudgetExceededError
from pipeline.dataplane.dlq import DlqLimitExceededError
from sinks.factory import UnsupportedTargetError

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline name (optional when there is one).")
]


def run(config: ConfigOption = None, pipeline: PipelineOption = None) -> None:
    """Consume the pipeline's change topics and apply them to its target (exit 0 on a requested stop)."""
    settings = load_or_exit(config)
    try:
        chosen = settings.pipeline(pipeline)
    except KeyError as exc:
        fail([f"--pipeline: {exc.args[0]} (defined: {', '.join(p.name for p in settings.pipelines) or 'none'})"])
    try:
        code = run_worker(settings, chosen)
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    except (DlqLimitExceededError, RetryBudgetExceededError) as exc:
        fail([f"pipeline {chosen.name} stopped: {exc}"], code=1)
    raise typer.Exit(code)
