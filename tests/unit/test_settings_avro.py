"""Settings of Avro sources: schema_registry section, format agreement, secrets masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.debezium import APICURIO_AVRO_CONVERTER, JSON_CONVERTER, build_connector_config, mask_config
from pipeline.core.settings.loading import ConfigError, load_settings
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings


def _doc(source: dict[str, Any] | None = None, pipeline: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "sources": [{"name": "inv", "database": "d", "user": "u", "tables": ["public.t"], **(source or {})}],
        "pipelines": [{"name": "p", "source": "inv", "target": {"url": "postgresql://h/db"}, **(pipeline or {})}],
    }


REGISTRY = {"url": "http://registry:8080/apis/ccompat/v7", "username": "reader", "password": "s3cret"}


def _load(tmp_path: Path, doc: dict[str, Any]) -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_settings(path, {})


def test_avro_source_needs_a_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema_registry: required when format or key_format is 'avro'"):
        _load(tmp_path, _doc({"format": "avro"}))


def test_pipeline_format_must_agree_with_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipelines\[0\]\.value_format: 'avro' but source 'inv' produces 'json'"):
        _load(tmp_path, _doc(pipeline={"value_format": "avro"}))
    settings = _load(tmp_path, _doc({"format": "avro", "key_format": "json", "schema_registry": REGISTRY}))
    assert settings.sources[0].resolved_key_format == "json"
    with pytest.raises(ConfigError, match="key_format"):
        _load(
            tmp_path,
            _doc({"format": "avro", "key_format": "json", "schema_registry": REGISTRY}, {"key_format": "avro"}),
        )


def test_registry_password_file_and_masking(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    registry = {"url": REGISTRY["url"], "username": "reader", "password_file": str(secret)}
    settings = _load(tmp_path, _doc({"format": "avro", "schema_registry": registry}))
    reg = settings.sources[0].schema_registry
    assert reg is not None and reg.password is not None and reg.password.get_secret_value() == "from-file"
    assert "from-file" not in str(settings.masked_dump())


def _source(**settings: Any) -> SourceSettings:
    """A minimal valid source (name, database, user, one table) with ``settings`` on top."""
    return SourceSettings.model_validate(
        {"name": "s", "database": "d", "user": "u", "tables": ["public.t"], **settings}
    )


def test_converter_url_is_derived_or_required() -> None:
    src = _source(format="avro", schema_registry=REGISTRY)
    assert src.schema_registry is not None
    assert src.schema_registry.resolved_converter_url == "http://registry:8080/apis/registry/v2"
    with pytest.raises(ValueError, match="converter_url"):
        _source(format="avro", schema_registry={"url": "http://confluent:8081"})


def test_key_file_needs_cert_file() -> None:
    with pytest.raises(ValueError, match="key_file is set without cert_file"):
        _source(schema_registry={"url": "https://r/apis/ccompat/v7", "key_file": "/k.pem"})


def test_connector_config_of_an_avro_source() -> None:
    src = _source(
        format="avro", schema_registry={**REGISTRY, "converter_properties": {"apicurio.registry.check-period-ms": 1000}}
    )
    config = build_connector_config(src)
    for side in ("key", "value"):
        assert config[f"{side}.converter"] == APICURIO_AVRO_CONVERTER
        assert config[f"{side}.converter.apicurio.registry.url"] == "http://registry:8080/apis/registry/v2"
        assert config[f"{side}.converter.apicurio.registry.as-confluent"] == "true"
        assert config[f"{side}.converter.apicurio.registry.use-id"] == "contentId"
        assert config[f"{side}.converter.apicurio.registry.headers.enabled"] == "false"
        assert config[f"{side}.converter.apicurio.registry.auto-register"] == "true"
        assert config[f"{side}.converter.apicurio.auth.username"] == "reader"
        assert config[f"{side}.converter.apicurio.registry.check-period-ms"] == "1000"
        assert f"{side}.converter.schemas.enable" not in config
        assert mask_config(config)[f"{side}.converter.apicurio.auth.password"] != "s3cret"
    assert config["schema.name.adjustment.mode"] == "avro"


def test_json_connector_config_is_unchanged_by_avro_support() -> None:
    src = _source()
    config = build_connector_config(src)
    assert {k: v for k, v in config.items() if ".converter" in k} == {
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "true",
        "key.converter.replace.null.with.default": "false",
        "key.converter.decimal.format": "BASE64",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "true",
        "value.converter.replace.null.with.default": "false",
        "value.converter.decimal.format": "BASE64",
    }
    assert "schema.name.adjustment.mode" not in config
