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
        names = [s.name for s in self.sources]
        _check_unique("sources", names)
        _check_unique("pipelines", [p.name for p in self.pipelines])
        by_name = {s.name: s for s in self.sources}
        for i, pipe in enumerate(self.pipelines):
            src = by_name.get(pipe.source)
            if src is None:
                raise ValueError(
                    f"pipelines[{i}].source: unknown source {pipe.source!r} (defined: {', '.join(names) or 'none'})"
                )
            for table in pipe.tables or []:
                if table not in src.tables:
                    raise ValueError(
                        f"pipelines[{i}].tables: {table!r} is not captured by source {src.name!r} "
                        "(add it to the source's tables)"
                    )
            for key, mine, theirs, where in (
                ("value_format", pipe.value_format, src.format, "format"),
                ("key_format", pipe.key_format, src.resolved_key_format, "key_format"),
            ):
                if mine is not None and mine != theirs:
                    raise ValueError(
                        f"pipelines[{i}].{key}: {mine!r} but source {src.name!r} produces {theirs!r} "
                        f"(set the source's {where} to {mine!r}, or drop {key} to follow the source)"
                    )
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
        """The resolved configuration as plain data with every secret masked; safe to print or log."""
        data: dict[str, Any] = mask_tree(self.model_dump(mode="json", by_alias=True, exclude_none=False))
        return data


def _check_unique(key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{key}[{i}].name: duplicate name {name!r} (names must be unique)")
        seen.add(name)
