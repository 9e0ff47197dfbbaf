"""``cdc-pipeline local up|down|status|logs``: the local stack of real processes."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import fail
from pipeline.localstack import LocalStack, LocalStackSettings, StackStartError, settings_for
from pipeline.localstack.jars import ToolMissingError, ensure_jars

app = typer.Typer(help="Run PostgreSQL, Kafka (KRaft) and Kafka Connect + Debezium as local processes.")

StateOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State folder (env CDC_LOCAL_STATE_DIR, default .local-stack)."),
]


def _stack(state_dir: Path | None) -> LocalStack:
    return LocalStack(settings_for(state_dir), report=typer.echo)


@app.command()
def up(state_dir: StateOption = None) -> None:
    """Start every service (idempotent) and wait until each is ready; print endpoints and timings."""
    stack = _stack(state_dir)
    try:
        timings = stack.up()
    except (StackStartError, ToolMissingError, RuntimeError) as exc:
        fail([f"local stack failed to start: {exc}"], code=1)
    s = stack.settings
    typer.echo(f"local stack ready in {timings['total']:.1f}s (state: {s.state})")
    typer.echo(f"  kafka bootstrap servers  {s.bootstrap_servers}")
    typer.echo(f"  kafka connect REST       {s.connect_url}")
    typer.echo(f"  postgres source          {stack.source.endpoint}")
    typer.echo(f"  postgres target          {stack.target.endpoint}")


@app.command()
def fetch() -> None:
    """Fetch the Kafka, Connect and Debezium jars into the cache (done by ``up`` too)."""
    settings = LocalStackSettings()
    try:
        cache, fetched = ensure_jars(settings.cache_dir)
    except (ToolMissingError, RuntimeError) as exc:
        fail([str(exc)], code=1)
    typer.echo(f"jars {'fetched into' if fetched else 'already cached at'} {cache.root}")


@app.command()
def down(
    state_dir: StateOption = None,
    purge: bool = typer.Option(False, "--purge", help="Also delete the state folder (all data)."),
) -> None:
    """Stop the processes this stack started (by PID); ``--purge`` deletes the state too."""
    stopped = _stack(state_dir).down(purge=purge)
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if purge:
        typer.echo("state folder removed")


@app.command()
def status(state_dir: StateOption = None) -> None:
    """Show each service healthy or not; exit 1 unless all are ready."""
    rows = _stack(state_dir).status()
    all_ready = True
    for row in rows:
        h = row.health
        state = "healthy" if h.ready else ("unhealthy" if h.running else "stopped")
        all_ready &= h.ready
        typer.echo(f"{row.name:<16} {state:<10} {row.endpoint:<48} {h.detail}")
    raise typer.Exit(0 if all_ready else 1)


@app.command()
def logs(
    state_dir: StateOption = None,
    service: Annotated[str | None, typer.Option("--service", "-s", help="Only this service.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines per service.")] = 40,
) -> None:
    """Print the last lines of each service's log."""
    files = _stack(state_dir).log_files()
    if service is not None and service not in files:
        fail([f"--service: unknown service {service!r} (one of {', '.join(files)})"])
    for name, path in files.items():
        if service is not None and name != service:
            continue
        typer.echo(f"==> {name}: {path}")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in deque(fh, maxlen=lines):
                    typer.echo(line.rstrip("\n"))
        except OSError:
            typer.echo("(no log yet)")
