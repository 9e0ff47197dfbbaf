"""``cdc-pipeline config validate|show|schema``."""

from __future__ import annotations

import json

import typer
import yaml

from pipeline.cli.common import ConfigOption, load_or_exit
from pipeline.core.settings.reference import json_schema, reference_markdown

app = typer.Typer(help="Validate and show pipeline configuration.", no_args_is_help=True)


@app.command()
def validate(config: ConfigOption = None) -> None:
    """Exit 0 when the config is valid; else print every problem as 'key.path: problem (hint)', exit 2."""
    settings = load_or_exit(config)
    typer.echo(f"{config}: valid ({len(settings.sources)} source(s), {len(settings.pipelines)} pipeline(s))")


@app.command()
def show(
    config: ConfigOption = None,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML."),
) -> None:
    """Print the resolved configuration (YAML + env + secret files) with secrets masked."""
    data = load_or_exit(config).masked_dump()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@app.command()
def reference() -> None:
    """Print the configuration reference (every key, its env override, default) as Markdown."""
    typer.echo(reference_markdown())


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file (the source of config/schema.json)."""
    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))
