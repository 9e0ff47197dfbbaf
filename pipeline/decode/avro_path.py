"""The Avro path: read a Confluent wire-format key or value with an :class:`AvroReader` (writer
schema from the Schema Registry by id) and keep its plan per schema id. Bytes that are not
decodable Avro are poison; an unknown schema id is poison; an unreachable registry stays
:class:`~pipeline.decode.registry.RegistryUnavailableError` (transient)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fastavro.schema import SchemaParseException

from pipeline.decode.avro import AvroReader, WireFormatError
from pipeline.decode.converters import BadMessageError
from pipeline.decode.registry import RegistryUnavailableError, UnknownSchemaError

__all__ = ["AvroSide"]

PlanT = TypeVar("PlanT")

# What fastavro (and the Avro-to-Connect schema mapping) raise for bytes or a registry schema that
# do not decode: third-party code on outside input, so a TypeError here is bad input too.
_AVRO_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    OverflowError,
    struct.error,
    RecursionError,
    SchemaParseException,
)


class AvroSide(Generic[PlanT]):
    """The keys or the values of a decoder in Avro: ``read(data)`` returns ``(plan, decoded
    value)``, the plan built by ``build(connect_schema)`` once per schema id (at most
    ``max_cached`` plans; the cache is cleared when full).

    Errors: BadMessageError (poison) naming ``what`` for bytes that are not the wire format or
    do not decode; UnknownSchemaError (poison) and RegistryUnavailableError (transient) pass
    through; ``build``'s errors pass through.
    """

    __slots__ = ("_build", "_limit", "_plans", "_reader", "_what")

    def __init__(
        self, reader: AvroReader, what: str, build: Callable[[dict[str, Any]], PlanT], max_cached: int
    ) -> None:
        self._reader = reader
        self._what = what
        self._build = build
        self._plans: dict[int, PlanT] = {}
        self._limit = max(1, max_cached)

    def read(self, data: bytes) -> tuple[PlanT, Any]:
        """Decode ``data``; see the class docstring."""
        schema_id, connect, payload = self._read(data)
        plan = self._plans.get(schema_id)
        if plan is None:
            if len(self._plans) >= self._limit:
                self._plans.clear()
            plan = self._plans[schema_id] = self._build(connect)
        return plan, payload

    def _read(self, data: bytes) -> tuple[int, dict[str, Any], Any]:
        try:
            return self._reader.read(data)
        except (UnknownSchemaError, RegistryUnavailableError):
            raise
        except WireFormatError as exc:
            raise BadMessageError(f"{self._what}: {exc}") from None
        except _AVRO_ERRORS as exc:
            raise BadMessageError(f"{self._what}: not decodable Avro: {type(exc).__name__}: {exc}") from None

    def __len__(self) -> int:
        return len(self._plans)
