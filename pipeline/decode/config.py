"""What the decoder must know about the connector that wrote the topics: topic naming, the TOAST
placeholder and the ``bytea`` text encoding, derived from the source settings (never from the
full connector configuration, which holds the database password in clear)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from connectors.debezium import notification_topic
from pipeline.core.settings.models import ScalarValue, SourceSettings

__all__ = ["DECODER_CONNECTOR_KEYS", "DEFAULT_UNAVAILABLE_PLACEHOLDER", "BinaryHandlingMode", "DecoderConfig"]

DEFAULT_UNAVAILABLE_PLACEHOLDER = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder`` (PostgreSQL docs, "Toasted values")."""

BinaryHandlingMode: TypeAlias = Literal["bytes", "base64", "base64-url-safe", "hex"]

# Debezium topic naming defaults (debezium-core AbstractTopicNamingStrategy, 3.x):
# heartbeat topic = "<topic.heartbeat.prefix>.<topic.prefix>" unless topic.heartbeat.name is set,
# transaction topic = "<topic.prefix>.<topic.transaction>".
DEFAULT_HEARTBEAT_PREFIX = "__debezium-heartbeat"
DEFAULT_TRANSACTION_TOPIC = "transaction"

DECODER_CONNECTOR_KEYS = (
    "topic.prefix",
    "topic.delimiter",
    "topic.heartbeat.prefix",
    "topic.heartbeat.name",
    "topic.transaction",
    "notification.sink.topic.name",
    "unavailable.value.placeholder",
    "binary.handling.mode",
)
"""The connector properties :meth:`DecoderConfig.from_connector_config` reads (and the only
``connector_overrides`` keys :meth:`DecoderConfig.from_source` looks at)."""


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """What the decoder must know about the connector that produced the topics.

    Field names mirror Debezium connector properties (PostgreSQL connector docs, "Connector
    properties"); :meth:`from_connector_config` reads them from a connector configuration.

    - ``topic_prefix`` (``topic.prefix``): enables exact recognition of the transaction topic
      ``<prefix>.<transaction_topic>`` and of the default heartbeat topic. Without it, those
      records are still recognised by their shape.
    - ``heartbeat_topic_prefix`` (``topic.heartbeat.prefix``, default ``__debezium-heartbeat``):
      every topic ``<heartbeat_topic_prefix><delimiter>...`` is a heartbeat topic.
    - ``heartbeat_topic_name`` (``topic.heartbeat.name``): full heartbeat topic name override.
    - ``transaction_topic`` (``topic.transaction``, default ``transaction``).
    - ``topic_delimiter`` (``topic.delimiter``, default ``.``).
    - ``notification_topics``: topics of the ``sink`` notification channel
      (``notification.sink.topic.name``).
    - ``unavailable_value_placeholder`` (``unavailable.value.placeholder``): a ``hex:`` prefix
      means hex-encoded octets, as in Debezium.
    - ``binary_handling_mode`` (``binary.handling.mode``): how ``bytea`` is written when not as
      raw bytes; used to decode string ``bytea`` columns back to ``bytes`` (needs
      ``column.propagate.source.type`` so the decoder knows the column is ``BYTEA``).
    - ``max_cached_schemas``: bound of each schema-plan cache (cleared when full).
    """

    topic_prefix: str | None = None
    heartbeat_topic_prefix: str = DEFAULT_HEARTBEAT_PREFIX
    heartbeat_topic_name: str | None = None
    transaction_topic: str = DEFAULT_TRANSACTION_TOPIC
    topic_delimiter: str = "."
    notification_topics: frozenset[str] = frozenset()
    unavailable_value_placeholder: str = DEFAULT_UNAVAILABLE_PLACEHOLDER
    binary_handling_mode: BinaryHandlingMode = "bytes"
    max_cached_schemas: int = 4096

    @classmethod
    def from_connector_config(cls, props: Mapping[str, object]) -> DecoderConfig:
        """Build from a Debezium connector configuration (property name -> value).

        Reads the :data:`DECODER_CONNECTOR_KEYS`: ``topic.prefix``, ``topic.delimiter``,
        ``topic.heartbeat.prefix``, ``topic.heartbeat.name``, ``topic.transaction``,
        ``notification.sink.topic.name``, ``unavailable.value.placeholder`` and
        ``binary.handling.mode``; absent keys keep Debezium's defaults. Raises ValueError for an
        unknown ``binary.handling.mode``.
        """

        def get(name: str, default: str) -> str:
            value = props.get(name)
            return default if value is None else str(value)

        mode = get("binary.handling.mode", "bytes")
        if mode not in ("bytes", "base64", "base64-url-safe", "hex"):
            raise ValueError(f"binary.handling.mode: unknown mode {mode!r}")
        notification = props.get("notification.sink.topic.name")
        prefix = props.get("topic.prefix")
        heartbeat_name = props.get("topic.heartbeat.name")
        return cls(
            topic_prefix=None if prefix is None else str(prefix),
            heartbeat_topic_prefix=get("topic.heartbeat.prefix", DEFAULT_HEARTBEAT_PREFIX),
            heartbeat_topic_name=None if heartbeat_name in (None, "") else str(heartbeat_name),
            transaction_topic=get("topic.transaction", DEFAULT_TRANSACTION_TOPIC),
            topic_delimiter=get("topic.delimiter", "."),
            notification_topics=frozenset() if notification is None else frozenset({str(notification)}),
            unavailable_value_placeholder=get("unavailable.value.placeholder", DEFAULT_UNAVAILABLE_PLACEHOLDER),
            binary_handling_mode=mode,  # type: ignore[arg-type]  # checked just above
        )

    @classmethod
    def from_source(cls, source: SourceSettings) -> DecoderConfig:
        """The config of the connector ``connectors.debezium.build_connector_config`` makes for
        ``source``, derived from the settings alone: ``topic.prefix`` is
        ``source.resolved_topic_prefix``, ``notification.sink.topic.name`` is
        ``connectors.debezium.notification_topic(source)``, and any of the
        :data:`DECODER_CONNECTOR_KEYS` in ``source.connector_overrides`` wins, as it does in the
        connector config. The password is never read. Raises ValueError as
        :meth:`from_connector_config` does.
        """
        props: dict[str, object] = {
            "topic.prefix": source.resolved_topic_prefix,
            "notification.sink.topic.name": notification_topic(source),
        }
        overrides = source.connector_overrides
        for key in DECODER_CONNECTOR_KEYS:
            if key in overrides:
                props[key] = _property_text(overrides[key])
        return cls.from_connector_config(props)

    @property
    def placeholder_bytes(self) -> bytes:
        """The placeholder octets, as Debezium derives them (``hex:`` prefix = hex octets)."""
        text = self.unavailable_value_placeholder
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        return text.encode("utf-8")


def _property_text(value: ScalarValue) -> str:
    """An override as the connector config writes it (booleans as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
