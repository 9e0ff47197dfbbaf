"""Decode Debezium PostgreSQL change messages (Kafka Connect ``JsonConverter``, with or without
schemas, or Avro in the Confluent wire format) into :class:`~pipeline.core.events.ChangeEvent`
or :class:`~pipeline.core.events.Skip`. A message that is not a decodable Debezium message
raises :class:`~pipeline.core.errors.PoisonMessageError` with a precise reason; any other
exception is a bug and propagates (design: docs/design/decode.md)."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Op, Position, Skip, TableId, position_from_source
from pipeline.decode.avro import AvroReader
from pipeline.decode.avro_path import AvroSide
from pipeline.decode.config import DecoderConfig
from pipeline.decode.converters import BadMessageError, RowPlan
from pipeline.decode.event_factory import new_event
from pipeline.decode.json_path import SchemaCache, split_parse
from pipeline.decode.plans import (
    KeyPlan,
    Placeholders,
    ValuePlan,
    convert_row,
    key_plan,
    strip_toast_generic,
    value_plan,
)
from pipeline.decode.registry import UnknownSchemaError

__all__ = ["Decoder", "KafkaMessage"]

_OPS: dict[str, Op] = {op.value: op for op in Op}
_NOT_SNAPSHOT = (None, "false", False)
_MISSING = object()


class KafkaMessage(Protocol):
    """What :meth:`Decoder.decode_message` reads from a message (``confluent_kafka.Message``)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class Decoder:
    """Turns Debezium PostgreSQL change messages into :class:`ChangeEvent` or :class:`Skip`.

    One instance per consumer (not thread-safe: it owns the schema-plan caches). ``decode`` is
    pure apart from those caches.
    """

    def __init__(
        self,
        config: DecoderConfig | None = None,
        *,
        avro_values: AvroReader | None = None,
        avro_keys: AvroReader | None = None,
    ) -> None:
        """``avro_values``/``avro_keys``: read values/keys as Avro in the Confluent wire format
        with these readers (see ``pipeline.decode.factory.make_decoder``); otherwise as
        JsonConverter JSON."""
        self.config = cfg = config or DecoderConfig()
        self._placeholders = Placeholders.of(cfg.placeholder_bytes)
        self._generic_forms = self._placeholders.generic()
        self._needles = self._placeholders.needles()
        self._avro_values = (
            None
            if avro_values is None
            else AvroSide(avro_values, "value", self._avro_value_plan, cfg.max_cached_schemas)
        )
        self._avro_keys = (
            None if avro_keys is None else AvroSide(avro_keys, "key", self._avro_key_plan, cfg.max_cached_schemas)
        )
        self._values = SchemaCache(cfg.max_cached_schemas)
        self._keys = SchemaCache(cfg.max_cached_schemas)
        self._topic_reasons: dict[str, str | None] = {}
        self._tables: dict[tuple[str, str], TableId] = {}
        exact: dict[str, str] = dict.fromkeys(cfg.notification_topics, "notification")
        if cfg.heartbeat_topic_name:
            exact[cfg.heartbeat_topic_name] = "heartbeat"
        if cfg.topic_prefix is not None:
            exact[cfg.topic_delimiter.join((cfg.topic_prefix, cfg.transaction_topic))] = "transaction"
        self._exact_topics = exact
        self._heartbeat_prefix = cfg.heartbeat_topic_prefix + cfg.topic_delimiter

    def cached_schemas(self) -> int:
        """Number of value and key schema plans currently cached (for metrics), JSON and Avro."""
        avro = sum(len(side) for side in (self._avro_values, self._avro_keys) if side is not None)
        return len(self._values) + len(self._keys) + avro

    def decode(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> ChangeEvent | Skip:
        """Decode one Kafka message.

        Returns :class:`Skip` with reason ``tombstone`` (value None), ``heartbeat``,
        ``transaction``, ``notification`` (by topic name from the config, else by the record's
        schema name or payload shape) or ``message`` (op ``m``); otherwise a
        :class:`ChangeEvent` whose ``position`` comes from ``source.sequence`` (a JSON string
        holding ``["<last commit LSN>", "<LSN>"]``) and ``source.lsn`` by
        :func:`~pipeline.core.events.position_from_source` (a null ``sequence[0]`` gives
        ``commit_lsn`` 0 for snapshot reads and ``lsn`` for streamed changes).

        Raises :class:`PoisonMessageError` for anything that is not a decodable Debezium
        message (invalid JSON or Avro, wrong types, unknown schema id, values a converter cannot
        convert, nesting too deep) and ``RegistryUnavailableError`` (transient) when the Schema
        Registry cannot be asked. Any other exception is a bug of the decoder and propagates.
        """
        if value is None:
            return Skip(topic, partition, offset, "tombstone")
        reason = self._topic_reason(topic)
        if reason is not None:
            return Skip(topic, partition, offset, reason)
        try:
            return self._decode(topic, partition, offset, key, value)
        except (BadMessageError, UnknownSchemaError) as exc:
            raise PoisonMessageError(topic, partition, offset, str(exc)) from None
        except orjson.JSONDecodeError as exc:
            raise PoisonMessageError(topic, partition, offset, f"invalid JSON: {exc}") from None
        except RecursionError:
            raise PoisonMessageError(topic, partition, offset, "message nested too deeply") from None

    def decode_message(self, message: KafkaMessage) -> ChangeEvent | Skip:
        """:meth:`decode` of a ``confluent_kafka.Message`` (topic, partition, offset, key, value).

        Same results and errors as :meth:`decode`; a message without topic, partition or offset
        (never the case for consumed messages) is poison.
        """
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            raise PoisonMessageError(topic or "", partition or 0, offset or 0, "message without topic/partition/offset")
        return self.decode(topic, partition, offset, message.key(), message.value())

    # ----------------------------------------------------------------------- per message

    def _topic_reason(self, topic: str) -> str | None:
        reason = self._topic_reasons.get(topic, _MISSING)
        if reason is _MISSING:
            found = self._exact_topics.get(topic)
            if found is None and topic.startswith(self._heartbeat_prefix):
                found = "heartbeat"
            self._topic_reasons[topic] = found
            return found
        return reason  # type: ignore[return-value]

    def _decode(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> ChangeEvent | Skip:
        """The steps of :meth:`decode`: value plan and payload, op (or skip), source block, row
        images, key. Raises BadMessageError, orjson.JSONDecodeError, UnknownSchemaError."""
        avro = self._avro_values
        if avro is not None:
            plan, payload = avro.read(value)
            start = 0
        else:
            plan, payload, start = split_parse(value, topic, self._values, self._build_value_plan)
        op = _op(plan, payload)
        if not isinstance(op, Op):
            return Skip(topic, partition, offset, op)
        source = payload.get("source")
        if type(source) is not dict:
            raise BadMessageError("payload.source is missing or not an object")
        position, table, ts_ms, tx_id = self._source(source, op is Op.READ)
        # Placeholder checks only when one of its forms occurs in the payload bytes at all
        # (JSON); Avro values are always checked (ints of an int[] form are varints).
        toast = avro is not None or any(value.find(needle, start) >= 0 for needle in self._needles)
        before, after, unavailable = self._images(op, payload, plan.row if plan is not None else None, toast)
        key_row, key_columns = (None, ()) if key is None else self._key(topic, key)
        return new_event(
            topic,
            partition,
            offset,
            table,
            op,
            position,
            ts_ms,
            key_row,
            before,
            after,
            tx_id,
            source.get("snapshot") not in _NOT_SNAPSHOT,
            plan.columns if plan is not None else None,
            key_columns,
            unavailable,
            None,
            {},
            len(value) + (len(key) if key is not None else 0),
        )

    def _source(self, source: dict[str, Any], is_read: bool) -> tuple[Position, TableId, int, int | None]:
        """``(position, table, source.ts_ms, source.txId)`` of the ``source`` block, type-checked."""
        position = _position(source, is_read)
        schema_name, table_name = source.get("schema"), source.get("table")
        if type(schema_name) is not str or type(table_name) is not str:
            raise BadMessageError("payload.source.schema/table missing")
        ts_ms = source.get("ts_ms")
        if type(ts_ms) is not int:
            raise BadMessageError("payload.source.ts_ms missing or not an integer")
        tx_id = source.get("txId")
        if tx_id is not None and type(tx_id) is not int:
            raise BadMessageError("payload.source.txId is not an integer")
        table = self._tables.get((schema_name, table_name))
        if table is None:
            table = self._tables[(schema_name, table_name)] = TableId(schema_name, table_name)
        return position, table, ts_ms, tx_id

    def _images(
        self, op: Op, payload: dict[str, Any], row: RowPlan | None, toast: bool
    ) -> tuple[Any, Any, frozenset[str]]:
        """``(before, after, unavailable columns)``, converted in place, checked against ``op``."""
        if op is Op.TRUNCATE:
            return None, None, frozenset()
        before = payload.get("before")
        after = payload.get("after")
        unavailable: frozenset[str] = frozenset()
        if op is Op.DELETE:
            after = None
            if before is None:
                raise BadMessageError("op 'd' without 'before'")
        elif after is None:
            raise BadMessageError(f"op {op.value!r} without 'after'")
        else:
            unavailable = self._convert("after", after, row, toast)
        if before is not None:
            self._convert("before", before, row, toast)
        return before, after, unavailable

    def _convert(self, where: str, row: Any, plan: RowPlan | None, toast: bool) -> frozenset[str]:
        if type(row) is not dict:
            raise BadMessageError(f"payload.{where} is {type(row).__name__}, not an object")
        if plan is None:
            return strip_toast_generic(row, self._generic_forms) if toast else frozenset()
        return convert_row(where, row, plan, toast)

    def _key(self, topic: str, key: bytes) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        """``(key row, key columns)``; a null key payload gives ``(None, ())``."""
        avro = self._avro_keys
        if avro is not None:
            key_plan_, key_payload = avro.read(key)
        else:
            key_plan_, key_payload, _ = split_parse(key, topic, self._keys, self._build_key_plan)
        if key_payload is None:
            return None, ()
        if type(key_payload) is not dict:
            raise BadMessageError(f"key payload is {type(key_payload).__name__}, not an object")
        if key_plan_ is None:
            return key_payload, tuple(key_payload)
        convert_row("key", key_payload, key_plan_.row, toast=False)
        return key_payload, key_plan_.key_columns

    # ----------------------------------------------------------------------- plan builders

    def _build_value_plan(self, schema: Any) -> ValuePlan:
        return value_plan(schema, self.config, self._placeholders)

    def _build_key_plan(self, schema: Any) -> KeyPlan:
        return key_plan(schema, self.config)

    def _avro_value_plan(self, schema: dict[str, Any]) -> ValuePlan:
        return value_plan(schema, self.config, self._placeholders, "avro")

    def _avro_key_plan(self, schema: dict[str, Any]) -> KeyPlan:
        return key_plan(schema, self.config, "avro")


def _op(plan: ValuePlan | None, payload: Any) -> Op | str:
    """The change's op, or the reason to skip the record (heartbeat, transaction, notification,
    message). Raises BadMessageError for a record that is neither."""
    if plan is not None and plan.kind != "change":
        if plan.kind == "other":
            raise BadMessageError("the value schema is not a Debezium change event envelope (no 'op' field)")
        return plan.kind
    if type(payload) is not dict:
        raise BadMessageError(f"value payload is {type(payload).__name__}, not a Debezium envelope object")
    op_text = payload.get("op")
    if op_text is None:
        shape = _shape_reason(payload)
        if shape is not None:
            return shape
        raise BadMessageError("not a Debezium change event: the payload has no 'op'")
    op = _OPS.get(op_text) if type(op_text) is str else None
    if op is None:
        if op_text == "m":
            return "message"
        raise BadMessageError(f"unknown op {op_text!r}")
    return op


def _position(source: dict[str, Any], is_read: bool) -> Position:
    """Validate ``source.sequence``/``source.lsn`` and apply :func:`position_from_source`."""
    lsn = source.get("lsn")
    if lsn is not None and (type(lsn) is not int or lsn < 0):
        raise BadMessageError(f"payload.source.lsn is not an unsigned integer: {lsn!r}")
    sequence = source.get("sequence")
    pair: tuple[int | None, int | None] | None = None
    if sequence is not None:
        if type(sequence) is not str:
            raise BadMessageError("payload.source.sequence is not a string")
        try:
            items = orjson.loads(sequence)
        except orjson.JSONDecodeError:
            raise BadMessageError(f"payload.source.sequence is not a JSON array: {sequence[:60]!r}") from None
        if type(items) is not list or len(items) != 2:
            raise BadMessageError(f"payload.source.sequence is not a pair: {sequence[:60]!r}")
        pair = (
            None if items[0] is None else _lsn_int(items[0], "sequence[0]"),
            None if items[1] is None else _lsn_int(items[1], "sequence[1]"),
        )
    if lsn is None and (pair is None or pair[1] is None):
        raise BadMessageError("payload.source.lsn is missing (and sequence gives no LSN)")
    return position_from_source(pair, lsn, is_read)


def _lsn_int(text: Any, what: str) -> int:
    if type(text) is not str or not (text.isascii() and text.isdigit()):
        raise BadMessageError(f"payload.source.{what} is not a decimal LSN string: {text!r}")
    return int(text)


def _shape_reason(payload: dict[str, Any]) -> str | None:
    """Recognise Debezium's non-change records without schemas by their payload keys."""
    keys = payload.keys()
    if keys == {"ts_ms"}:
        return "heartbeat"
    if payload.get("status") in ("BEGIN", "END") and "id" in keys and "data_collections" in keys:
        return "transaction"
    if {"id", "aggregate_type", "type"} <= keys:
        return "notification"
    return None
