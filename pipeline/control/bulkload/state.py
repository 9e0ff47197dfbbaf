"""The load's durable state and what ``load run`` does with it before copying: nothing to do
(every pipeline ``done``), recovery of an interrupted load, or the refusals of a fresh one.

One JSON document per pipeline (:meth:`sinks.base.TargetBulkLoad.save_state`)::

    {"status": "copying" | "done", "slot": "...", "tables": ["public.a", ...],
     "consistent_lsn": 123 | null, "rows": {"public.a": 10}, "started_at": ..., "finished_at": ...}

Recovery (decided for issue 17: restart clean). An exported snapshot dies with the connection
that exported it, and rows copied from it cannot be completed from another snapshot without
missing the changes committed between the two. So a state ``copying`` (or the slot present
while not every pipeline is ``done``) means: drop the old slot, TRUNCATE every target table
the states list (their tombstones and truncation marks too), clear the states and start over.

A fresh load also clears the bookkeeping a previous pipeline may have left for its target
tables (tombstones, truncation watermarks, ``row_versions``): a watermark or tombstone newer
than the bulk rows' position (``commit_lsn`` 0) would drop them. Stored consumer offsets of
the pipeline's group are refused instead: they belong to a stream the load does not continue.
The slot is checked before ``done`` is written, and again before a connector is registered on
an already finished load: without it Debezium would create a new slot at the current LSN and
miss every change committed since the load's consistent point.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from connectors.connect_client import ConnectClient
from connectors.slots import drop_slot_when_free, slot_state
from pipeline.control.bulkload.model import BulkLoadError
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, TargetBulkLoad

log = get_logger(__name__)

COPYING = "copying"
DONE = "done"


def all_done(states: Mapping[str, dict[str, Any] | None]) -> bool:
    """True when every pipeline's state is ``done``."""
    return bool(states) and all(s is not None and s.get("status") == DONE for s in states.values())


def copying_state(slot: str, tables: Sequence[TableId], consistent_lsn: int | None) -> dict[str, Any]:
    """The state saved before and while copying."""
    return {
        "status": COPYING,
        "slot": slot,
        "tables": [str(t) for t in tables],
        "consistent_lsn": consistent_lsn,
        "started_at": time.time(),
    }


def done_state(copying: Mapping[str, Any], rows: Mapping[str, int], seconds: float) -> dict[str, Any]:
    """The state saved when every table of the pipeline is copied."""
    return {**copying, "status": DONE, "rows": dict(rows), "seconds": seconds, "finished_at": time.time()}


def _table(name: str) -> TableId:
    schema, _, table = name.partition(".")
    return TableId(schema, table)


def recover(
    source: SourceSettings,
    conn: psycopg.Connection[dict[str, Any]],
    states: Mapping[str, dict[str, Any] | None],
    bulks: Mapping[str, TargetBulkLoad],
) -> bool:
    """Clean up an interrupted load (see the module docstring); True when there was one.
    ``conn`` is an autocommit source session with dict rows. Raises BulkLoadError when
    the slot exists but no state of ours mentions a load (someone else's slot)."""
    slot = source.resolved_slot_name
    present = slot_state(conn, slot) is not None
    ours = {name: s for name, s in states.items() if s is not None}
    if not ours:
        if present:
            raise BulkLoadError(
                f"replication slot {slot} already exists on source {source.name} and no bulk load state mentions it:"
                " drop it (SELECT pg_drop_replication_slot(...)) or use initial_load: snapshot"
            )
        return False
    if present:
        drop_slot_when_free(conn, slot)
    for name, state in ours.items():
        tables = [_table(t) for t in state.get("tables", [])]
        bulks[name].truncate(tables)
        bulks[name].clear_state(name)
        log.warning("interrupted bulk load cleaned up", pipeline=name, slot=slot, tables=len(tables))
    return True


def refuse_existing_connector(settings: Settings, source: SourceSettings) -> None:
    """Raise BulkLoadError when ``source``'s connector is already registered in Connect: it
    streams (or snapshots) on its own, and a bulk load under it would be duplicated."""
    name = source.resolved_connector_name
    if connector_registered(settings, source):
        raise BulkLoadError(
            f"connector {name} already exists in Kafka Connect: a bulk load must run before it is registered"
            " (delete it first, or use initial_load: snapshot)"
        )


def refuse_non_empty(bulk: TargetBulkLoad, tables: Sequence[TableId]) -> None:
    """Raise BulkLoadError naming the first target table of ``tables`` that has rows."""
    for table in tables:
        rows = bulk.row_count(table)
        if rows:
            raise BulkLoadError(
                f"target table {table} has {rows} rows; a bulk load needs empty target tables: truncate them, or use"
                " initial_load: snapshot"
            )


def refuse_stored_offsets(target: Target, pipeline: PipelineSettings) -> None:
    """Raise BulkLoadError when ``pipeline``'s consumer group has offsets stored in ``target``
    (a previous stream's position: its events would be applied over the loaded rows)."""
    group = pipeline.resolved_consumer_group
    stored = target.group_offsets(group)
    if stored:
        raise BulkLoadError(
            f"consumer group {group} of pipeline {pipeline.name} has {len(stored)} stored offset(s) in its target:"
            f" a bulk load starts a new stream; run `cdc-pipeline offsets reset -p {pipeline.name} --to-beginning`"
            " (and delete the old change topics of the source) first"
        )


def clear_bookkeeping(bulk: TargetBulkLoad, tables: Sequence[TableId]) -> None:
    """Remove what a previous pipeline left for ``tables`` (tombstones, truncation watermarks,
    ``row_versions``; the tables were checked empty) before a fresh load copies into them."""
    if tables:
        bulk.truncate(tables)


def slot_problem(conn: psycopg.Connection[dict[str, Any]], slot: str) -> str | None:
    """Why ``slot`` cannot carry the hand-over (``missing`` / ``its WAL was removed (wal_status lost)``),
    None when it is usable. ``conn`` is an autocommit source session with dict rows."""
    state = slot_state(conn, slot)
    if state is None:
        return "missing"
    if state.lost:
        return "its WAL was removed (wal_status lost)"
    return None


def check_slot_before_done(conn: psycopg.Connection[dict[str, Any]], source: SourceSettings) -> None:
    """Raise BulkLoadError when the load's slot is missing or lost after the copy: the copied
    rows could not be continued by streaming (the state stays ``copying``, so the next
    ``load run`` starts over)."""
    slot = source.resolved_slot_name
    problem = slot_problem(conn, slot)
    if problem is not None:
        raise BulkLoadError(
            f"replication slot {slot} of the bulk load of source {source.name} is {problem}: the copied rows cannot"
            " be continued by streaming; run `cdc-pipeline load run` again (it starts over)"
        )


def lost_slot_message(source: SourceSettings, problem: str) -> str:
    """The refusal of registering a finished bulk load's connector whose slot is gone."""
    slot = source.resolved_slot_name
    return (
        f"slot {slot} of the bulk load of source {source.name} is gone ({problem}); the connector would start at"
        " the current LSN and miss the changes committed since the load: reload the source (drop the slot if it"
        " is lost, TRUNCATE the target tables, delete its pipelines' rows of <control_schema>.bulk_loads, then"
        f" `cdc-pipeline load run -s {source.name}`)"
    )


def refuse_lost_handover_slot(
    settings: Settings, source: SourceSettings, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """For a finished load about to be (re-)registered: raise BulkLoadError
    (:func:`lost_slot_message`) when the connector is not registered and the slot is missing
    or lost. A registered connector keeps its own offsets (``connectors recover`` handles it)."""
    if connector_registered(settings, source):
        return
    problem = slot_problem(conn, source.resolved_slot_name)
    if problem is not None:
        raise BulkLoadError(lost_slot_message(source, problem))


def connector_registered(settings: Settings, source: SourceSettings) -> bool:
    """True when ``source``'s connector exists in Kafka Connect."""
    with ConnectClient(settings.connect) as client:
        return client.get_config(source.resolved_connector_name) is not None
