"""``cdc-pipeline config validate|show|reference|schema``."""

from __future__ import annotations

import json

import typer
import yaml

from pipeline.checks.static import check_document, check_settings
from pipeline.cli.common import ConfigOption, fail, fail_invalid, load_or_exit
from pipeline.core.settings.loading import ConfigError, load_document, settings_from_document
from pipeline.core.settings.reference import json_schema, reference_markdown

app = typer.Typer(help="Validate and show pipeline configuration.", no_args_is_help=True)


@app.command()
def validate(config: ConfigOption = None) -> None:
    """Exit 0 when the config is valid; else print every problem as 'key.path: problem (hint)', exit 2.

    Runs every check that needs no connection, in one pass: the settings, each target URL, each
    pipeline's transforms, each source's connector configuration, and target-name collisions.
    """
    if config is None:
        fail(["no configuration: pass --config FILE or set CDC_CONFIG"])
    try:
        doc = load_document(config)
    except ConfigError as exc:
        fail_invalid(config, exc.problems)
    try:
        settings = settings_from_document(doc)
    except ConfigError as exc:
        extra = [line for line in check_document(doc) if line not in exc.problems]
        fail_invalid(config, [*exc.problems, *extra])
    problems = check_settings(settings)
    if problems:
        fail_invalid(config, problems)
    typer.echo(f"{config}: valid ({len(settings.sources)} source(s), {len(settings.pipelines)} pipeline(s))")


@app.command()
def show(
    config: ConfigOption = None,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML."),
) -> None:
    """Print the resolved configuration (YAML + env + secret files, derived names filled in) with secrets masked."""
    data = load_or_exit(config, check_names=False).masked_dump()
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
