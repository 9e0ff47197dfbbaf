"""Text the coordinator writes to Debezium (pure): the ``execute-snapshot`` and ``stop-snapshot``
signal data, ``additional-conditions`` filters for key ranges split to fit the signal column, and
which tables a connector's ``table.include.list`` captures (signal shapes:
``docs/design/snapshot.md``)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from connectors.debezium import TableRef, collection_id, table_regex
from pipeline.control.snapshot.model import Condition, SnapshotKind

SIGNAL_DATA_MAX = 2048
"""Length of the signal table's ``data`` column (``varchar(2048)``, "Structure of a signaling data collection")."""


def execute_snapshot_data(
    tables: Sequence[str],
    kind: SnapshotKind = SnapshotKind.INCREMENTAL,
    conditions: Sequence[Condition] = (),
    surrogate_key: str | None = None,
) -> str:
    """The ``data`` JSON of an ``execute-snapshot`` signal (compact, at most 2048 characters).

    ``tables`` are ``schema.table`` names; each becomes :func:`connectors.debezium.collection_id`
    in ``data-collections`` and each condition's table the exact-match regex
    :func:`connectors.debezium.table_regex` in ``additional-conditions``. Raises ValueError for
    no tables, a condition on a table not requested, or a result longer than the signal table's
    ``data`` column.
    """
    if not tables:
        raise ValueError("a snapshot needs at least one table")
    unknown = sorted({c.table for c in conditions} - set(tables))
    if unknown:
        raise ValueError(f"conditions name tables that are not requested: {', '.join(unknown)}")
    data: dict[str, Any] = {
        "data-collections": [collection_id(TableRef.parse(t)) for t in tables],
        "type": kind.value,
    }
    if conditions:
        data["additional-conditions"] = [
            {"data-collection": table_regex(TableRef.parse(c.table)), "filter": c.filter} for c in conditions
        ]
    if surrogate_key:
        data["surrogate-key"] = surrogate_key
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if len(text) > SIGNAL_DATA_MAX:
        raise ValueError(
            f"the signal data is {len(text)} characters, the signal table takes {SIGNAL_DATA_MAX}: "
            "request fewer tables or simpler conditions"
        )
    return text


def stop_snapshot_data(kind: SnapshotKind, tables: Sequence[str] | None = None) -> str:
    """``stop-snapshot`` data: ``{"type": kind}`` plus ``data-collections`` when ``tables`` is given."""
    data: dict[str, Any] = {"type": kind.value}
    if tables:
        data["data-collections"] = [collection_id(TableRef.parse(t)) for t in tables]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


KeyTuple = tuple[Any, ...]
KeyRange = tuple[KeyTuple | None, KeyTuple | None]
"""``(low, high)``: rows with ``low < key <= high``; None is unbounded on that side."""


def merge_ranges(ranges: Sequence[KeyRange]) -> list[KeyRange]:
    """Join ranges where one's ``high`` equals the next one's ``low`` (adjacent chunks), in order."""
    merged: list[KeyRange] = []
    for low, high in ranges:
        if merged and merged[-1][1] is not None and merged[-1][1] == low:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def range_predicate(
    columns: Sequence[str], key_range: KeyRange, ident: Callable[[str], str], literal: Callable[[Any], str]
) -> str | None:
    """SQL text ``(k1, k2) > (v1, v2) AND (k1, k2) <= (w1, w2)`` for ``key_range`` (row-value
    comparison, PostgreSQL "Row Constructor Comparison"); None when unbounded on both sides.

    ``ident`` quotes an identifier and ``literal`` renders a value (e.g. through
    :class:`psycopg.sql.Identifier` / :class:`psycopg.sql.Literal`).
    """
    cols = "(" + ", ".join(ident(c) for c in columns) + ")"
    parts: list[str] = []
    low, high = key_range
    if low is not None:
        parts.append(f"{cols} > (" + ", ".join(literal(v) for v in low) + ")")
    if high is not None:
        parts.append(f"{cols} <= (" + ", ".join(literal(v) for v in high) + ")")
    return " AND ".join(parts) if parts else None


def key_range_filters(
    columns: Sequence[str],
    ranges: Sequence[KeyRange],
    ident: Callable[[str], str],
    literal: Callable[[Any], str],
    max_length: int = 1500,
) -> list[str | None]:
    """``additional-conditions`` filters covering ``ranges`` of the key ``columns``.

    Adjacent ranges are merged; the rest are OR-ed into filters of at most ``max_length``
    characters (one request each, so every signal fits :data:`SIGNAL_DATA_MAX` with room for
    the table names). A None in the result means "the whole table" (a range unbounded on both
    sides). Raises ValueError when a single range alone is longer than ``max_length``.
    """
    filters: list[str | None] = []
    current: list[str] = []
    for key_range in merge_ranges(ranges):
        predicate = range_predicate(columns, key_range, ident, literal)
        if predicate is None:
            return [None]
        if len(predicate) + 2 > max_length:
            raise ValueError(f"the key range filter {predicate[:80]}... is longer than {max_length} characters")
        candidate = [*current, predicate]
        if len(" OR ".join(f"({p})" for p in candidate)) > max_length:
            filters.append(" OR ".join(f"({p})" for p in current))
            current = [predicate]
        else:
            current = candidate
    if current:
        filters.append(" OR ".join(f"({p})" for p in current))
    return filters


_LIST_SPLIT = re.compile(r"(?<!\\),")


def split_include_list(value: str) -> list[str]:
    """Entries of a Debezium ``*.include.list`` (split at unescaped commas, trimmed)."""
    return [part.strip() for part in _LIST_SPLIT.split(value) if part.strip()]


def captured_by_include_list(include_list: str, tables: Iterable[str]) -> set[str]:
    """Which ``tables`` (``schema.table``) the connector's ``table.include.list`` captures.

    An entry equal to :func:`connectors.debezium.table_regex` of the table matches (what
    :func:`connectors.debezium.build_connector_config` writes); other entries are tried as
    anchored regexes, case-insensitive unless they start with ``(?-i)`` (Debezium matches
    ``<schema>.<table>`` with ``Pattern.CASE_INSENSITIVE``). An entry that is not a valid
    Python regex is ignored.
    """
    entries = split_include_list(include_list)
    found: set[str] = set()
    compiled: list[re.Pattern[str]] = []
    for entry in entries:
        flags = re.IGNORECASE
        pattern = entry
        if pattern.startswith("(?-i)"):
            pattern, flags = pattern[5:], re.RegexFlag(0)
        with contextlib.suppress(re.error):
            compiled.append(re.compile(pattern.replace("\\,", ","), flags))
    for table in tables:
        ref = TableRef.parse(table)
        if table_regex(ref) in entries or any(p.fullmatch(f"{ref.schema}.{ref.table}") for p in compiled):
            found.add(table)
    return found
