"""The root of the configuration file (:class:`Settings`) and the cross-section checks between
sources and pipelines. Frozen and resolved once by :func:`pipeline.core.settings.loading.load_settings`
(which raises its ``ConfigError``), then passed down: nothing deeper reads ``os.environ``.
:meth:`Settings.masked_dump` is what may be shown or logged. (The class docstring is part of
``config/schema.json``, so it stays as it is.)"""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.core.settings.masking import mask_tree
from pipeline.core.settings.models import (
    ConnectSettings,
    CutoverConfig,
    KafkaSettings,
    MetricsSettings,
    MonitorSettings,
    PipelineSettings,
    SnapshotConfig,
    SourceSettings,
    VerifyConfig,
)

ENV_PREFIX = "CDC_"
"""Prefix of environment overrides (``CDC_KAFKA__BOOTSTRAP_SERVERS``)."""
ENV_NESTING = "__"
"""Separator of nested keys in an environment override."""
CONFIG_ENV = "CDC_CONFIG"
"""Environment variable naming the YAML file when ``--config`` is not given."""


class Settings(BaseSettings):
    """Root of the configuration file.

    Raises :class:`ConfigError` (through :func:`load_settings`) when invalid.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    pipelines: list[PipelineSettings] = Field(default_factory=list)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    cutover: CutoverConfig = Field(default_factory=CutoverConfig)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the merged YAML + environment document passed by :func:`load_settings` counts."""
        return (init_settings,)

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        problems = _unique("sources", [s.name for s in self.sources])
        problems += _unique("pipelines", [p.name for p in self.pipelines])
        by_name = {s.name: s for s in self.sources}
        for i, pipe in enumerate(self.pipelines):
            problems += _pipeline_references(i, pipe, by_name)
            problems += _reverse_references(i, pipe, by_name, {p.name: p for p in self.pipelines})
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def source(self, name: str) -> SourceSettings:
        """The source named ``name``. Raises KeyError when there is none."""
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    def pipeline(self, name: str | None) -> PipelineSettings:
        """The pipeline named ``name``, or the only one when ``name`` is None.

        Raises KeyError when it does not exist or when ``name`` is None and there are several.
        """
        if name is None:
            if len(self.pipelines) != 1:
                raise KeyError("several pipelines are defined: name one with --pipeline")
            return self.pipelines[0]
        for pipe in self.pipelines:
            if pipe.name == name:
                return pipe
        raise KeyError(name)

    def masked_dump(self) -> dict[str, Any]:
        """The resolved configuration as plain data with every secret masked; safe to print or log.

        Names left to their defaults are shown as derived (``topic_prefix``, ``slot_name``,
        ``publication_name``, ``connector_name`` of sources; ``consumer_group`` and ``dlq.topic``
        of pipelines), so the dump says what the pipeline will actually use.
        """
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=False)
        for src, out in zip(self.sources, data["sources"], strict=True):
            out["topic_prefix"] = src.resolved_topic_prefix
            out["slot_name"] = src.resolved_slot_name
            out["publication_name"] = src.resolved_publication_name
            out["connector_name"] = src.resolved_connector_name
        for pipe, out in zip(self.pipelines, data["pipelines"], strict=True):
            out["consumer_group"] = pipe.resolved_consumer_group
            out["dlq"]["topic"] = pipe.resolved_dlq_topic
        masked: dict[str, Any] = mask_tree(data)
        return masked


def _unique(key: str, names: list[str]) -> list[str]:
    seen: set[str] = set()
    problems: list[str] = []
    for i, name in enumerate(names):
        if name in seen:
            problems.append(f"{key}[{i}].name: duplicate name {name!r} (names must be unique)")
        seen.add(name)
    return problems


def _reverse_references(
    i: int, pipe: PipelineSettings, sources: dict[str, SourceSettings], pipelines: dict[str, PipelineSettings]
) -> list[str]:
    """Problems of ``pipelines[i].cutover.reverse``: both names must exist and agree."""
    reverse = pipe.cutover.reverse
    if reverse is None:
        return []
    key = f"pipelines[{i}].cutover.reverse"
    problems = []
    if reverse.source not in sources:
        problems.append(f"{key}.source: unknown source {reverse.source!r} (add the new primary to 'sources')")
    back = pipelines.get(reverse.pipeline)
    if back is None or reverse.pipeline == pipe.name:
        problems.append(f"{key}.pipeline: {reverse.pipeline!r} must name another entry of 'pipelines'")
    elif back.source != reverse.source:
        problems.append(f"{key}.pipeline: pipeline {back.name!r} reads {back.source!r}, not {reverse.source!r}")
    elif back.target.versions != "table":
        problems.append(f"{key}.pipeline: set target.versions: table on {back.name!r} (it writes the old source)")
    return problems


def _pipeline_references(i: int, pipe: PipelineSettings, by_name: dict[str, SourceSettings]) -> list[str]:
    """Problems of ``pipelines[i]``'s references to its source: the name, tables and formats."""
    src = by_name.get(pipe.source)
    if src is None:
        names = ", ".join(by_name) or "none"
        return [f"pipelines[{i}].source: unknown source {pipe.source!r} (defined: {names})"]
    problems = [
        f"pipelines[{i}].tables: {table!r} is not captured by source {src.name!r} (add it to the source's tables)"
        for table in pipe.tables or []
        if table not in src.tables
    ]
    if src.initial_load == "bulk" and pipe.target.versions == "table":
        problems.append(
            f"pipelines[{i}].target.versions: 'table' is not supported by a bulk load, and source {src.name!r} "
            "uses initial_load: bulk (use target.versions: columns, or initial_load: snapshot on the source)"
        )
    for key, mine, theirs, where in (
        ("value_format", pipe.value_format, src.format, "format"),
        ("key_format", pipe.key_format, src.resolved_key_format, "key_format"),
    ):
        if mine is not None and mine != theirs:
            problems.append(
                f"pipelines[{i}].{key}: {mine!r} but source {src.name!r} produces {theirs!r} "
                f"(set the source's {where} to {mine!r}, or drop {key} to follow the source)"
            )
    return problems
