"""The JsonConverter path: split a ``{"schema": ..., "payload": ...}`` message into its cached
schema plan and its parsed payload, parsing the schema part only when its exact bytes were not
seen before (design: docs/design/decode.md, "JSON hot path")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["SchemaCache", "split_parse"]

_HEAD = b'{"schema":'
_SEP = b',"payload":'
_HEAD_LEN = len(_HEAD)
_SEP_LEN = len(_SEP)


class SchemaCache:
    """Schema JSON bytes -> plan, plus the last schema seen per topic.

    The per-topic entry makes the common case (a topic's schema did not change) a ``memcmp``
    of the schema bytes in place (``bytes.startswith`` at an offset: no copy, no hash). The
    map is bounded and cleared wholesale when full.
    """

    __slots__ = ("_items", "_limit", "recent")

    def __init__(self, limit: int) -> None:
        self._items: dict[bytes, Any] = {}
        self._limit = max(1, limit)
        self.recent: dict[str, tuple[bytes, Any]] = {}

    def get(self, key: bytes) -> Any:
        """The plan cached for the schema bytes ``key``, or None."""
        return self._items.get(key)

    def put(self, key: bytes, plan: Any) -> None:
        """Cache ``plan`` for ``key``; a full cache is cleared first (with ``recent``)."""
        if len(self._items) >= self._limit:
            self._items.clear()
            self.recent.clear()
        self._items[key] = plan

    def __len__(self) -> int:
        return len(self._items)


def split_parse(data: bytes, topic: str, cache: SchemaCache, build: Callable[[Any], Any]) -> tuple[Any, Any, int]:
    """Parse a JsonConverter message; return ``(plan or None, payload, payload offset)``.

    ``plan`` is None when the message has no schema (``schemas.enable=false`` or a null schema).
    The schema part is parsed only when its exact bytes are not cached (see the module docstring).
    Raises orjson.JSONDecodeError for invalid JSON and whatever ``build`` raises for a bad schema
    (BadMessageError).
    """
    if data.startswith(_HEAD) and data.endswith(b"}"):
        recent = cache.recent.get(topic)
        if recent is not None:
            schema_bytes, plan = recent
            cut = _HEAD_LEN + len(schema_bytes)
            if data.startswith(schema_bytes, _HEAD_LEN) and data.startswith(_SEP, cut):
                return plan, orjson.loads(memoryview(data)[cut + _SEP_LEN : -1]), cut
        cut = data.find(_SEP, _HEAD_LEN)
        if cut > 0:
            schema_bytes = data[_HEAD_LEN:cut]
            plan = cache.get(schema_bytes)
            if plan is not None:
                cache.recent[topic] = (schema_bytes, plan)
                return plan, orjson.loads(memoryview(data)[cut + _SEP_LEN : -1]), cut
            try:
                schema = orjson.loads(schema_bytes)
                payload = orjson.loads(memoryview(data)[cut + _SEP_LEN : -1])
            except orjson.JSONDecodeError:
                pass  # not the JsonConverter's layout after all: parse the whole message below
            else:
                if schema is None:
                    return None, payload, cut
                plan = build(schema)
                cache.put(schema_bytes, plan)
                cache.recent[topic] = (schema_bytes, plan)
                return plan, payload, cut
    message = orjson.loads(data)
    if type(message) is dict and len(message) == 2 and "schema" in message and "payload" in message:
        schema = message["schema"]
        if schema is None:
            return None, message["payload"], 0
        canonical = orjson.dumps(schema)
        plan = cache.get(canonical)
        if plan is None:
            plan = build(schema)
            cache.put(canonical, plan)
        return plan, message["payload"], 0
    return None, message, 0
