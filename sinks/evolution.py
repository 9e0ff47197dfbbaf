"""Source schema changes seen in the change events, decided once for every target backend.

Each batch's row schema (``TableChanges.columns``) is compared with the target table and with
what the sink recorded about each column (``known_columns``: the source type last seen, at
which source position, and whether the column was dropped at the source). The outcome is a
list of :class:`ColumnChange` for the backend to apply in the batch's own transaction, or a
:class:`~sinks.base.TargetSchemaError` for a change that cannot be applied safely in place
(narrowing, an incompatible type change, a primary-key change): such a batch must never be
dead-lettered, since every later event of the table would need the same change.

Types are compared as :class:`~sinks.sqltypes.SqlType`; each backend parses its own catalog's
type text into one. Pure code: no database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core import metrics
from pipeline.core.batch import TableChanges
from pipeline.core.events import Column, Position, TableId
from pipeline.core.logs import get_logger
from sinks.base import TargetSchemaError
from sinks.sqltypes import SqlType, fit

log = get_logger("sinks.evolution")

OWN_PREFIX = "__cdc_"

ChangeKind = Literal["added", "widened", "source_type", "dropped_at_source", "dropped", "restored", "renamed"]


@dataclass
class KnownColumn:
    """What the sink recorded about one target column (a ``known_columns`` row): the source
    type last seen (the backend's type text for it, None for rows written before this was
    recorded), the source position of the batch that recorded it, and whether the column was
    dropped at the source."""

    name: str
    source_type: str | None = None
    position: Position | None = None
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class ColumnChange:
    """One schema change to apply (and record): ``kind`` is

    - ``added``: a column new in the source (``column`` set; with its default, if any);
    - ``widened``: the target column altered in place from ``old_type`` to ``new_type``;
    - ``source_type``: the source type changed but the target holds it already (record only);
    - ``dropped_at_source``: the column left the source's events; kept, no longer written;
    - ``dropped``: the same, with the column dropped on the target (option);
    - ``restored``: a column dropped at the source is back in the events;
    - ``renamed``: ``column`` added and filled from ``renamed_from`` (a rename hint).
    """

    table: TableId
    name: str
    kind: ChangeKind
    old_type: str | None = None
    new_type: str | None = None
    column: Column | None = None
    renamed_from: str | None = None


@dataclass(frozen=True, slots=True)
class EvolutionInput:
    """What :func:`plan_changes` compares, for one target table in one batch.

    ``target_types``: target column -> type text; ``target_keys``: its primary key (empty for a
    keyless table's ``__cdc_row_id``); ``columns``/``key_columns``: the batch's row schema and key;
    ``known``: recorded columns; ``position``: the newest source position of the table's changes
    in the batch; ``type_of``: the backend's type text for an incoming column; ``parse``: type
    text -> :class:`SqlType`; ``source_type_of``/``parse_source`` the same for the source's
    own type (PostgreSQL type text, what ``known_columns.source_type`` records on every
    backend: :func:`sinks.postgres.types.pg_type` / ``parse_pg_type``); ``renames``: rename
    hints old -> new column name;
    ``keyless_events``: False when an empty ``key_columns`` says nothing (a batch holding a
    truncate, whose event has no key schema); ``dynamic_types``: the backend does not bound
    values by the declared type (SQLite), so widenings and type changes are only recorded,
    never applied nor refused.
    """

    table: TableId
    target_types: Mapping[str, str]
    target_keys: tuple[str, ...]
    columns: Sequence[Column]
    key_columns: tuple[str, ...]
    known: Mapping[str, KnownColumn]
    position: Position | None
    type_of: Callable[[Column], str]
    parse: Callable[[str], SqlType]
    source_type_of: Callable[[Column], str]
    parse_source: Callable[[str], SqlType]
    drop_on_target: bool = False
    renames: Mapping[str, str] | None = None
    add_columns: bool = True
    dynamic_types: bool = False
    keyless_events: bool = True


def plan_changes(data: EvolutionInput) -> list[ColumnChange]:
    """The changes the batch needs on the target, in the order to apply them.

    Raises TargetSchemaError for a primary-key change, a narrowing at the source, and a type
    change the target cannot do in place; the message names the table, column and both types
    and says what to do (README "Schema changes on the source").
    """
    _check_key(data)
    changes: list[ColumnChange] = []
    incoming = {c.name: c for c in data.columns}
    for column in data.columns:
        if column.name in data.target_types:
            changes.extend(_existing(data, column))
    changes.extend(_added(data, incoming))
    changes.extend(_dropped(data, incoming))
    return changes


def _newer(data: EvolutionInput, known: KnownColumn | None) -> bool:
    """True when the batch is not older than what was recorded (an event of an older schema
    may still arrive from another partition after a newer one was applied)."""
    if known is None or known.position is None or data.position is None:
        return True
    return data.position >= known.position


def _existing(data: EvolutionInput, column: Column) -> list[ColumnChange]:
    """Changes for a column both sides have: widen the target, refuse, or record the new type.

    The target side compares the backend's own type texts (``type_of``/``parse``); the source
    side compares the source types (``source_type_of``/``parse_source``: PostgreSQL type texts),
    which is how a narrowing at the source is told from a target created wider."""
    known = data.known.get(column.name)
    new_source = data.source_type_of(column)
    target_text = data.target_types[column.name]
    new_text = data.type_of(column)
    changes: list[ColumnChange] = []
    if known is not None and known.dropped and _newer(data, known):
        changes.append(ColumnChange(data.table, column.name, "restored", known.source_type, new_source))
    verdict = fit(data.parse(target_text), data.parse(new_text))
    if data.dynamic_types and verdict in ("widen", "refuse"):
        verdict = "holds"  # SQLite: declared types do not bound values
    if verdict == "widen":
        return [*changes, ColumnChange(data.table, column.name, "widened", target_text, new_text, column)]
    if verdict == "refuse":
        raise TargetSchemaError(_refusal(data.table, column.name, target_text, new_text))
    recorded = known.source_type if known is not None else None
    if recorded is None or recorded == new_source or not _newer(data, known):
        return changes  # first sight (known_update records it), unchanged, or an older schema
    narrowed = fit(data.parse_source(recorded), data.parse_source(new_source)) == "holds"
    if narrowed and verdict == "holds" and not data.dynamic_types:
        raise TargetSchemaError(_narrowing(data.table, column.name, recorded, new_source, target_text))
    return [*changes, ColumnChange(data.table, column.name, "source_type", recorded, new_source)]


def _added(data: EvolutionInput, incoming: Mapping[str, Column]) -> list[ColumnChange]:
    renames = data.renames or {}
    by_new = {new: old for old, new in renames.items()}
    changes: list[ColumnChange] = []
    for column in data.columns:
        if column.name in data.target_types or not data.add_columns:
            continue
        old = by_new.get(column.name)
        if old is not None and old in data.target_types and old not in incoming:
            changes.append(
                ColumnChange(data.table, column.name, "renamed", None, data.type_of(column), column, renamed_from=old)
            )
        else:
            changes.append(ColumnChange(data.table, column.name, "added", None, data.type_of(column), column))
    return changes


def _dropped(data: EvolutionInput, incoming: Mapping[str, Column]) -> list[ColumnChange]:
    changes: list[ColumnChange] = []
    for name, type_text in data.target_types.items():
        if name in incoming or name.startswith(OWN_PREFIX) or name in data.target_keys:
            continue
        known = data.known.get(name)
        if known is None or known.source_type is None or known.dropped or not _newer(data, known):
            continue  # never seen in the events (added on the target by hand, by a transform), or done already
        kind: ChangeKind = "dropped" if data.drop_on_target else "dropped_at_source"
        changes.append(ColumnChange(data.table, name, kind, type_text, None))
    return changes


def carry_renames(rows: Iterable[dict[str, Any]], renames: Mapping[str, str], target_columns: Iterable[str]) -> None:
    """Rename hints on rows of an older schema: a row that still carries the old column and
    not the new one gets the new one too (in place), so an event written before a source
    ``RENAME COLUMN`` but applied after the target gained the new column still sets it (at its
    own position, the renamed column held that value)."""
    present = set(target_columns)
    pairs = [(old, new) for old, new in renames.items() if new in present]
    if not pairs:
        return
    for row in rows:
        for old, new in pairs:
            if old in row and new not in row:
                row[new] = row[old]


def known_update(
    name: str, old: KnownColumn | None, source_type: str | None, dropped_now: bool, position: Position | None
) -> KnownColumn | None:
    """The ``known_columns`` row to write for column ``name`` after a batch, or None when the
    recorded one stands. ``source_type`` is the incoming type text (None when the batch's
    schema lacks the column or carried no schema), ``dropped_now`` True when the batch dropped
    it at the source. A changed source type or a drop is recorded with the batch's ``position``
    (events older than it cannot undo it); a column back in newer events is no longer dropped."""
    if old is None:
        return KnownColumn(name, source_type, position, dropped_now)
    older = old.position is not None and position is not None and position < old.position
    if older and not dropped_now:
        return None  # a batch of an older schema never moves what a newer one recorded
    new_type = source_type or old.source_type
    moved = source_type is not None and source_type != old.source_type
    dropped = dropped_now or (old.dropped and source_type is None)
    if not moved and dropped == old.dropped:
        return None
    return KnownColumn(name, new_type, position if moved or dropped_now else old.position, dropped)


def _check_key(data: EvolutionInput) -> None:
    if tuple(data.key_columns) == data.target_keys or (not data.key_columns and not data.keyless_events):
        return
    raise TargetSchemaError(
        f"primary key of {data.table} changed at the source: the target's is"
        f" ({', '.join(data.target_keys) or 'none: keyless'}), the events' is"
        f" ({', '.join(data.key_columns) or 'none: keyless'}). The pipeline does not re-key a target table in"
        " place; follow README 'Schema changes on the source' > 'Primary-key changes' (rebuild the target"
        " table from an incremental snapshot), then restart the worker"
    )


def _refusal(table: TableId, column: str, target_type: str, new_type: str) -> str:
    return (
        f"schema change refused: {table}.{column} is {target_type} on the target and the source now sends"
        f" {new_type}; the target cannot be changed in place without losing values. Nothing was applied or"
        f" committed past this batch. Fix: alter the target column yourself (ALTER TABLE {table} ALTER COLUMN"
        f" {column} TYPE {new_type} USING ...; on MariaDB MODIFY COLUMN), or add a new column at the source and"
        " migrate to it (expand-contract), then restart the worker (README 'Schema changes on the source')"
    )


def _narrowing(table: TableId, column: str, old_type: str, new_type: str, target_type: str) -> str:
    return (
        f"schema change refused: {table}.{column} was narrowed at the source from {old_type} to {new_type}"
        f" (target: {target_type}); the pipeline does not narrow target columns. Nothing was applied or"
        f" committed past this batch. Fix: check the target's values fit, alter the target column to"
        f" {new_type} yourself (PostgreSQL: ALTER TABLE ... ALTER COLUMN {column} TYPE {new_type}; MariaDB:"
        " MODIFY COLUMN), then restart the worker (README 'Schema changes on the source')"
    )


def newest_position(changes: TableChanges) -> Position | None:
    """The newest source position among a table's changes in a batch (None: none); what a
    batch's schema is judged at."""
    positions = [u.position for u in changes.upserts.values()] + [d.position for d in changes.deletes.values()]
    if changes.truncate is not None:
        positions.append(changes.truncate)
    return max(positions) if positions else None


def schema_signature(changes: TableChanges, type_of: Callable[[Column], str]) -> tuple[object, ...]:
    """What decides whether a batch's row schema needs the slow path (catalog read, planning):
    column names, types (``type_of``) and defaults, and the key."""
    cols = tuple((c.name, type_of(c), repr(c.default)) for c in changes.columns or ())
    return (cols, changes.key_columns)


def report_changes(pending: list[tuple[ColumnChange, Position | None]]) -> None:
    """Log and count (``cdc_schema_changes_total``) the changes of a transaction just committed;
    empties ``pending``."""
    for change, position in pending:
        metrics.SCHEMA_CHANGES.labels(str(change.table), change.kind).inc()
        log.info(
            "source schema change applied",
            table=str(change.table),
            column=change.name,
            change=change.kind,
            old_type=change.old_type,
            new_type=change.new_type,
            renamed_from=change.renamed_from,
            position=str(position) if position else None,
        )
    pending.clear()
