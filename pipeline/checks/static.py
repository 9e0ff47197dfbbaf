"""Every check of a configuration that needs no connection, in one pass: what ``cdc-pipeline run``,
``control`` and ``connectors apply`` would reject at start, found by ``config validate`` first.

Each check calls the code the runtime calls (so validate cannot drift from run): the target URL
scheme (:func:`sinks.factory.target_kind`), each pipeline's transforms
(:func:`pipeline.transform.transformer.build_transformer`: ``where`` syntax, ``route``
placeholders, ``hash`` masks without ``mask_salt``, hooks importable...), each source's connector
configuration (:func:`connectors.debezium.build_connector_config`) and message decoding settings,
and the target names (:mod:`pipeline.checks.naming`).

A document that fails the settings models is checked too, entry by entry: every source and
pipeline that validates on its own goes through the checks above, so one run of ``config
validate`` lists the model errors and the runtime errors together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from connectors.debezium import build_connector_config
from pipeline.checks.naming import check_target_names
from pipeline.core.settings.masking import mask_text
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.decode.config import DecoderConfig
from pipeline.transform.rule import TransformConfigError
from pipeline.transform.transformer import build_transformer
from sinks.factory import UnsupportedTargetError, target_kind

_KEY = re.compile(r"^[A-Za-z_][\w.\[\]]*$")
_M = TypeVar("_M", SourceSettings, PipelineSettings)


def _keyed(prefix: str, message: str) -> str:
    """``prefix.key: problem`` for a message ``key: problem``; a message that names its own
    ``sources[...]``/``pipelines[...]`` key is kept; anything else becomes ``prefix: message``."""
    text = mask_text(message)
    if text.startswith(("sources[", "pipelines[")):
        return text
    head, sep, _ = text.partition(": ")
    if sep and _KEY.match(head):
        return f"{prefix}.{text}"
    return f"{prefix}: {text}"


def pipeline_problems(pipeline: PipelineSettings) -> list[str]:
    """Problems of one pipeline: its target URL and its transforms, as
    ``pipelines[<name>].target.url: ...`` / ``pipelines[<name>].transforms[i].key: ...`` lines."""
    prefix = f"pipelines[{pipeline.name}]"
    problems: list[str] = []
    try:
        target_kind(pipeline.target)
    except UnsupportedTargetError as exc:
        problems.append(_keyed(prefix, str(exc)))
    try:
        build_transformer(pipeline.transforms, pipeline.mask_salt)
    except TransformConfigError as exc:
        problems.extend(_keyed(prefix, line) for line in exc.problems)
    return problems


def source_problems(source: SourceSettings) -> list[str]:
    """Problems of one source: the Debezium connector configuration and the decoder settings
    built from it, as ``sources[<name>]...`` lines."""
    prefix = f"sources[{source.name}]"
    problems: list[str] = []
    for build in (build_connector_config, DecoderConfig.from_source):
        try:
            build(source)
        except ValueError as exc:
            line = _keyed(prefix, str(exc))
            if line not in problems:
                problems.append(line)
    return problems


def check_parts(sources: Sequence[SourceSettings], pipelines: Sequence[PipelineSettings]) -> list[str]:
    """Every connection-free problem of these sources and pipelines (see the module docstring),
    one line each, in the order sources, pipelines, target names; empty when there is none."""
    problems: list[str] = []
    for source in sources:
        problems.extend(source_problems(source))
    for pipeline in pipelines:
        problems.extend(pipeline_problems(pipeline))
    problems.extend(check_target_names(sources, pipelines))
    return problems


def check_settings(settings: Settings) -> list[str]:
    """:func:`check_parts` of a loaded configuration."""
    return check_parts(settings.sources, settings.pipelines)


def check_document(doc: Mapping[str, Any]) -> list[str]:
    """:func:`check_parts` over the entries of a merged YAML + environment document that
    validate on their own (for a document that fails :class:`Settings`): sources and pipelines
    with model errors are left out, their errors come from the models."""
    sources = _valid_entries(doc.get("sources"), SourceSettings)
    pipelines = _valid_entries(doc.get("pipelines"), PipelineSettings)
    return check_parts(sources, pipelines)


def _valid_entries(items: Any, model: type[_M]) -> list[_M]:
    if not isinstance(items, list):
        return []
    out: list[_M] = []
    for item in items:
        try:
            out.append(model.model_validate(item))
        except ValidationError:
            continue
    return out
