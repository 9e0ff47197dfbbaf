"""Builds the decoder a pipeline needs from its settings: JSON or Avro per key and value, with a
Schema Registry client when either is Avro (the composition root calls this)."""

from __future__ import annotations

from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.decode.avro import AvroReader
from pipeline.decode.config import DecoderConfig
from pipeline.decode.decoder import Decoder
from pipeline.decode.registry import SchemaRegistryClient

__all__ = ["REGISTRY_CLIENT_BUDGET_S", "make_decoder"]

REGISTRY_CLIENT_BUDGET_S = 0.0
"""Seconds the data plane's registry client itself retries an unavailable registry before raising:
none, so nothing sleeps inside decode while the consumer waits; the runner backs off instead, with
the consumer paused and served (design "Seams", errors)."""


def make_decoder(source: SourceSettings, pipeline: PipelineSettings | None = None) -> Decoder:
    """The decoder of ``pipeline``'s messages from ``source``: JSON or Avro per key and value
    (``pipeline.value_format``/``key_format``, which default to and must agree with the source's
    ``format``/``key_format``), with a Schema Registry client (``source.schema_registry``)
    when either is Avro. An unavailable registry raises RegistryUnavailableError (transient) at
    once (``REGISTRY_CLIENT_BUDGET_S``), which the runner retries with the consumer paused.

    The topic naming comes from :meth:`DecoderConfig.from_source`, which never reads the
    source's password. Raises ValueError when a format is Avro and the source has no
    ``schema_registry``, or for an unknown ``binary.handling.mode`` override.
    """
    value_format = (pipeline.value_format if pipeline else None) or source.format
    key_format = (pipeline.key_format if pipeline else None) or source.resolved_key_format
    config = DecoderConfig.from_source(source)
    if "avro" not in (value_format, key_format):
        return Decoder(config)
    registry = source.schema_registry
    if registry is None:
        raise ValueError(f"source {source.name!r}: avro messages need schema_registry")
    # No in-client retries: outages are retried by the runner, which keeps the consumer served
    # (paused) while it backs off.
    client = SchemaRegistryClient(
        registry, pipeline.retry if pipeline else None, retry_budget_s=REGISTRY_CLIENT_BUDGET_S
    )
    reader = AvroReader(client.schema, registry.cache_size)
    return Decoder(
        config,
        avro_values=reader if value_format == "avro" else None,
        avro_keys=reader if key_format == "avro" else None,
    )
