"""Column masks of transform rules (``mask: {column: hash | redact | null}``): the masked form of one
value, and the per-rule maskers compiled from it. ``hash`` is an HMAC keyed by the pipeline's
``mask_salt`` over canonical bytes, so a verifier can recompute it from the source value."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeAlias
from uuid import UUID

import orjson

from pipeline.core.settings.models import MaskMode

REDACTED = "***"
"""The value of ``redact``-masked columns."""

Masker: TypeAlias = Callable[[Any], Any]
"""One column's mask: value -> masked value (None stays None); may raise :class:`UnmaskableValueError`."""


class UnmaskableValueError(TypeError):
    """A value that has no canonical bytes to hash: a list or dict holding an integer past 64 bits or
    a non-string key, a string with lone surrogates. Bad input for one event (the transform rule
    makes it poison), never a configuration problem. The message never holds the value."""


def _canonical(value: Any) -> bytes:
    try:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bool):
            return b"true" if value else b"false"
        if isinstance(value, int | Decimal | UUID):
            return str(value).encode("ascii")
        if isinstance(value, float):
            return repr(value).encode("ascii")
        if isinstance(value, datetime | date | time):
            return value.isoformat().encode("ascii")
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, UnicodeEncodeError) else str(exc)
        raise UnmaskableValueError(f"a {type(value).__name__} value cannot be hashed: {reason}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def mask_value(mode: MaskMode, value: Any, salt: bytes | None = None) -> Any:
    """The masked form of one column value; None stays None.

    ``hash``: lowercase hex HMAC-SHA256 with key ``salt`` over the value's canonical bytes
    (str: UTF-8; bytes: as is; bool: ``true``/``false``; int/Decimal/UUID: ``str()``; float:
    ``repr()``; date/time/datetime: ``isoformat()``; lists/dicts: sorted-key JSON). A verifier
    can recompute it from the source value. ``redact``: ``"***"``. ``null``: None.
    Raises ValueError for ``hash`` without a salt, :class:`UnmaskableValueError` (a TypeError)
    for a value without canonical bytes.
    """
    if value is None:
        return None
    if mode == "hash":
        if not salt:
            raise ValueError("mask 'hash' needs a salt")
        return hmac.digest(salt, _canonical(value), "sha256").hex()
    if mode == "redact":
        return REDACTED
    return None


def make_masker(mode: MaskMode, salt: bytes | None) -> Masker:
    """The masker of ``mode`` (same results as :func:`mask_value`); ``hash`` needs ``salt``
    (checked when the rule is compiled)."""
    if mode == "hash":
        assert salt
        key = salt

        def hash_mask(value: Any) -> Any:
            return None if value is None else hmac.digest(key, _canonical(value), "sha256").hex()

        return hash_mask
    if mode == "redact":
        return lambda value: None if value is None else REDACTED
    return lambda value: None
