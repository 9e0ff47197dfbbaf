"""Per-batch reduction: the last change per key, by source position, for each target table.

Kafka gives all changes of one primary key in one partition, in order (design invariant 3),
so within a batch only the newest change per key needs writing. Deletes and upserts of one
key reduce to whichever is newest; truncates keep the newest position per table. An update
whose TOASTed columns were unchanged (``ChangeEvent.unavailable``) takes those values from an
older change of the same key in the batch when that one has them, so the reduction never
loses a value that the unreduced sequence would have written.

Pure code: no Kafka, no database.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.batch import Delete, ReducedBatch, TableChanges, Upsert, key_text, read_row_id, row_id
from pipeline.core.events import ChangeEvent, Op, Position, TableId


def reduce_events(events: Iterable[ChangeEvent], default_schema: str) -> ReducedBatch:
    """Reduce change events (in consumption order) to one :class:`ReducedBatch`.

    ``default_schema`` is the target schema of events without a ``target`` (no route
    transform). Raises ValueError for an event that is not a row change or truncate, or a keyed
    event whose key is missing.
    """
    batch = ReducedBatch()
    for event in events:
        target = event.target or TableId(default_schema, event.table.table)
        changes = batch.tables.get(target)
        if changes is None:
            changes = TableChanges(target, event.table, event.key_columns, event.columns)
            batch.tables[target] = changes
        elif event.columns is not None:
            changes.columns = event.columns
        if not changes.key_columns and event.key_columns and not changes.upserts and not changes.deletes:
            # A truncate carries no key: the table's key comes from its first row change.
            changes.key_columns = event.key_columns
        changes.events += 1
        changes.max_ts_ms = max(changes.max_ts_ms, event.ts_ms)
        if event.op is Op.TRUNCATE:
            if changes.truncate is None or event.position > changes.truncate:
                changes.truncate = event.position
            continue
        if changes.keyless:
            _reduce_keyless(changes, event)
        else:
            _reduce_keyed(changes, event)
    return batch


def _reduce_keyed(changes: TableChanges, event: ChangeEvent) -> None:
    if event.key is None:
        raise ValueError(f"{event.table}: a {event.op.value!r} event without a key")
    key_values = {col: event.key[col] for col in changes.key_columns}
    key = key_text(key_values.values())
    newest = _newest_position(changes, key)
    if newest is not None and event.position <= newest:
        return  # an older or duplicate change of this key (replayed): the newer one stands
    if event.op is Op.DELETE:
        changes.upserts.pop(key, None)
        changes.deletes[key] = Delete(key, key_values, event.position, event.ts_ms)
        return
    row = event.row
    if row is None:
        raise ValueError(f"{event.table}: a {event.op.value!r} event without an after image")
    unavailable = event.unavailable
    previous = changes.upserts.get(key)
    if unavailable and previous is not None:
        # Fill unchanged TOASTed values from the older change of the same key in this batch.
        filled = {c: previous.row[c] for c in unavailable if c in previous.row}
        row = {**row, **filled}
        unavailable = frozenset(c for c in unavailable if c not in filled) | (previous.unavailable & unavailable)
    changes.deletes.pop(key, None)
    changes.upserts[key] = Upsert(key, key_values, row, event.position, event.ts_ms, event.op, unavailable)


def _reduce_keyless(changes: TableChanges, event: ChangeEvent) -> None:
    """Keyless tables: every insert is a new row identified by its position; a delete removes
    one row equal to its ``before`` image; an update is both."""
    if event.op in (Op.DELETE, Op.UPDATE) and event.before is not None:
        marker = f"d:{row_id(event.position)}"
        changes.deletes[marker] = Delete(marker, dict(event.before), event.position, event.ts_ms)
    if event.op is Op.DELETE:
        return
    row = event.row
    if row is None:
        raise ValueError(f"{event.table}: a {event.op.value!r} event without an after image")
    rid = read_row_id(event) if event.op is Op.READ else row_id(event.position)
    changes.upserts[rid] = Upsert(rid, {}, row, event.position, event.ts_ms, event.op, event.unavailable)


def _newest_position(changes: TableChanges, key: str) -> Position | None:
    up = changes.upserts.get(key)
    de = changes.deletes.get(key)
    if up is None:
        return de.position if de is not None else None
    if de is None:
        return up.position
    return max(up.position, de.position)
