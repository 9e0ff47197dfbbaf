"""``cutover finish``: close the rollback window and remove what both directions left behind.

After ``done`` the new primary takes the application's writes and the reverse pipeline keeps the
old source in step with it. Finishing drops, in this order (connectors first so no slot is
busy; the forward pipeline's control schema last because the durable cutover state lives there):

1. the reverse and the forward connector (stopped, offsets reset, deleted);
2. the reverse slot and publication on the new primary; the forward slot and publication on
   the old source;
3. the heartbeat and signal tables of both sources (a heartbeat table another configured source
   of the same database shares is kept) and their control schema when nothing else is left in it;
4. the heartbeat copies the pipelines applied (``<target.schema>.heartbeat`` or its route);
5. the reverse pipeline's control schema on the old source, then the forward pipeline's
   ``target.control_schema`` on the new primary (a control schema another configured pipeline
   writes into is kept).

A schema holding the application's tables (``public``, either target's default schema, the
captured tables' schemas) is never dropped whole, nor a captured table, whatever the control
schemas are set to. Both databases are reached as sources (the new primary is the reverse source): their
``sources`` entries give the connections, whose roles must own what is dropped. Everything is
listed before anything is dropped, and only what exists is listed, so a rerun after a partial
finish continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from connectors import source_prep
from connectors.connect_client import ConnectClient, ConnectError, ConnectorNotFoundError
from connectors.debezium import TableRef, captured_tables, heartbeat_table, signal_table
from connectors.slots import drop_slot_when_free, slot_state
from pipeline.control.cutover.reverse import ReverseError, remove_connector, reverse_source
from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError
from sinks.factory import make_target

log = get_logger(__name__)

Kind = Literal["connector", "slot", "publication", "table", "schema"]
Side = Literal["connect", "old", "new"]
Conn = psycopg.Connection[dict[str, Any]]

FINISH_PHASES = frozenset({"done", "finished"})
"""Phases in which ``finish`` runs: ``done``, or ``finished`` to complete an interrupted finish."""


class FinishError(Exception):
    """``finish`` refused or failed; the message says why (no secrets)."""


@dataclass(frozen=True, slots=True)
class Removal:
    """One object ``finish`` drops: ``kind`` (connector, slot, publication, table, schema), its
    ``name`` (``schema.table`` for tables) and ``where`` it lives (``kafka connect``, or
    ``old source <source> (host:port/db)`` / ``new primary <source> (host:port/db)``)."""

    kind: Kind
    name: str
    where: str

    def to_dict(self) -> dict[str, str]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """``slot cdc_x on old source s (127.0.0.1:5432/app)``."""
        return f"{self.kind} {self.name} on {self.where}"


@dataclass(frozen=True, slots=True)
class _Planned:
    removal: Removal
    side: Side
    table: TableRef | None = None


@dataclass(frozen=True, slots=True)
class _Sides:
    """The two directions of one cutover."""

    forward: PipelineSettings
    old: SourceSettings  # the forward source = the old primary = the reverse pipeline's target
    reverse: PipelineSettings
    new: SourceSettings  # the reverse source = the new primary = the forward pipeline's target

    def where(self, side: Side) -> str:
        if side == "connect":
            return "kafka connect"
        src = self.old if side == "old" else self.new
        label = "old source" if side == "old" else "new primary"
        return f"{label} {src.name} ({src.host}:{src.port}/{src.database})"


def _sides(settings: Settings, pipeline: PipelineSettings) -> _Sides:
    reverse = pipeline.cutover.reverse
    if reverse is None:
        raise FinishError(f"pipelines[{pipeline.name}].cutover.reverse is not set: nothing describes the new primary")
    try:
        back = settings.pipeline(reverse.pipeline)
        old = settings.source(pipeline.source)
        new = reverse_source(settings, pipeline)
    except (KeyError, ReverseError) as exc:
        raise FinishError(str(exc)) from None
    return _Sides(pipeline, old, back, new)


# --------------------------------------------------------------------------- the cutover state


def cutover_phase(pipeline: PipelineSettings) -> str | None:
    """The durable cutover phase of ``pipeline`` (``<target.control_schema>.cutover_state``), None
    when no cutover was recorded. Read through the Target seam (``Target.cutover()``, the
    ``TargetCutover`` of ``sinks.base``). Raises FinishError when it cannot be read."""
    with _cutover_store(pipeline) as store:
        doc = store.load_state(pipeline.name)
    if doc is None:
        return None
    return str(doc.get("phase", "idle"))


def mark_finished(pipeline: PipelineSettings) -> None:
    """Record phase ``finished`` in the durable state document (entered now), before the control
    schema holding it is dropped. Nothing happens when no state was recorded."""
    with _cutover_store(pipeline) as store:
        doc = store.load_state(pipeline.name)
        if doc is None:
            return
        now = time.time()
        entered = {**(doc.get("entered_at") or {}), "finished": now}
        store.save_state(
            pipeline.name, "finished", {**doc, "phase": "finished", "entered_at": entered, "updated_at": now}
        )


@contextmanager
def _cutover_store(pipeline: PipelineSettings) -> Iterator[Any]:
    """The target's ``TargetCutover`` (``load_state(pipeline) -> dict | None``, ``save_state(pipeline,
    phase, document)``, ``close()``), opened by ``Target.cutover()``; the one place ``finish``
    depends on the cutover state's shape."""
    target = make_target(pipeline, purpose="cutover finish")
    try:
        factory = getattr(target, "cutover", None)
        if not callable(factory):
            raise FinishError(f"the target of {pipeline.name} keeps no cutover state (no Target.cutover())")
        store = factory()
        try:
            yield store
        finally:
            store.close()
    except TransientSinkError as exc:
        raise FinishError(f"cannot read the cutover state of {pipeline.name}: {exc}") from None
    finally:
        target.close()


# --------------------------------------------------------------------------- planning


def plan_finish(settings: Settings, pipeline: PipelineSettings) -> list[Removal]:
    """Everything ``finish`` would drop now for the cutover of ``pipeline``, in drop order.

    Only objects that exist are listed (an empty list: nothing left). Changes nothing. Raises
    FinishError (no reverse configured, a database or Kafka Connect unreachable).
    """
    sides = _sides(settings, pipeline)
    with _connections(sides) as conns:
        return [p.removal for p in _plan(settings, sides, conns)]


def run_finish(settings: Settings, pipeline: PipelineSettings, dry_run: bool = False) -> list[Removal]:
    """List, then (unless ``dry_run``) drop everything :func:`plan_finish` lists; returns the list.

    Refuses (FinishError) unless the durable cutover phase is ``done`` (or ``finished``: an
    interrupted finish is completed); ``dry_run`` lists whatever the phase. Phase ``finished`` is
    recorded before the forward control schema, which holds the state, is dropped.
    """
    sides = _sides(settings, pipeline)
    if not dry_run:
        phase = cutover_phase(pipeline)
        if phase not in FINISH_PHASES:
            raise FinishError(
                f"cutover of {pipeline.name} is in phase {phase or 'idle (none recorded)'}: finish runs only after "
                "'done' (before it, use 'cutover abort')"
            )
    with _connections(sides) as conns:
        planned = _plan(settings, sides, conns)
        if dry_run:
            return [p.removal for p in planned]
        marked = False
        with ConnectClient(settings.connect) as client:
            for step in planned:
                if not marked and _holds_state(sides, step):
                    mark_finished(pipeline)
                    marked = True
                _execute(step, client, conns)
        if not marked:
            mark_finished(pipeline)
    log.info("cutover finished", pipeline=pipeline.name, removed=len(planned))
    return [p.removal for p in planned]


@contextmanager
def _connections(sides: _Sides) -> Iterator[dict[Side, Conn]]:
    with ExitStack() as stack:
        conns: dict[Side, Conn] = {}
        dbs: list[tuple[Side, SourceSettings]] = [("old", sides.old), ("new", sides.new)]
        for side, src in dbs:
            try:
                conns[side] = stack.enter_context(source_prep.connect(src, "cdc-pipeline cutover finish"))
            except psycopg.OperationalError as exc:
                text = source_prep.redactor(src)(str(exc).strip())
                raise FinishError(f"cannot reach {sides.where(side)}: {text}") from None
        yield conns


def _holds_state(sides: _Sides, step: _Planned) -> bool:
    """``step`` drops the forward control schema on the new primary, where the cutover state is."""
    removal = step.removal
    return step.side == "new" and removal.kind == "schema" and removal.name == sides.forward.target.control_schema


def _plan(settings: Settings, sides: _Sides, conns: dict[Side, Conn]) -> list[_Planned]:
    planned = _connector_steps(settings, sides)
    dbs: list[tuple[Side, SourceSettings]] = [("new", sides.new), ("old", sides.old)]
    for side, src in dbs:
        conn = conns[side]
        if slot_state(conn, src.resolved_slot_name) is not None:
            planned.append(_Planned(Removal("slot", src.resolved_slot_name, sides.where(side)), side))
        if source_prep.publication_exists(conn, src.resolved_publication_name):
            planned.append(_Planned(Removal("publication", src.resolved_publication_name, sides.where(side)), side))
    for side, src in dbs:
        planned += _control_table_steps(settings, sides, side, src, conns[side])
    copies: list[tuple[Side, TableRef]] = [
        ("new", _ref(heartbeat_target_table(sides.old, sides.forward))),
        ("old", _ref(heartbeat_target_table(sides.new, sides.reverse))),
    ]
    user_tables = set(captured_tables(sides.old)) | set(captured_tables(sides.new))
    for side, ref in copies:
        if ref not in user_tables and source_prep.existing_tables(conns[side], [ref]):
            planned.append(_Planned(Removal("table", str(ref), sides.where(side)), side, ref))
    schemas: list[tuple[Side, PipelineSettings]] = [("old", sides.reverse), ("new", sides.forward)]
    protected = _user_schemas(sides)
    for side, pipe in schemas:
        schema = pipe.target.control_schema
        if schema in protected:
            log.warning("control schema holds user tables: kept", schema=schema, where=sides.where(side))
            continue
        if _schema_exists(conns[side], schema) and not _shared_control_schema(settings, sides, pipe):
            planned.append(_Planned(Removal("schema", schema, sides.where(side)), side))
    unique: dict[tuple[Side, str, str], _Planned] = {}
    for step in planned:  # a table or schema both directions name is listed once
        unique.setdefault((step.side, step.removal.kind, step.removal.name), step)
    return list(unique.values())


def _user_schemas(sides: _Sides) -> set[str]:
    """Schemas that hold the application's tables: never dropped whole, whatever a control
    schema is set to (``public``, both targets' default schemas, the captured tables' schemas)."""
    captured = {t.schema for src in (sides.old, sides.new) for t in captured_tables(src)}
    return {"public", sides.forward.target.schema_name, sides.reverse.target.schema_name} | captured


def _ref(table: TableId) -> TableRef:
    return TableRef(table.schema, table.table)


def _connector_steps(settings: Settings, sides: _Sides) -> list[_Planned]:
    planned: list[_Planned] = []
    try:
        with ConnectClient(settings.connect) as client:
            for src in (sides.new, sides.old):
                name = src.resolved_connector_name
                try:
                    client.status(name)
                except ConnectorNotFoundError:
                    continue
                planned.append(_Planned(Removal("connector", name, sides.where("connect")), "connect"))
    except ConnectError as exc:
        raise FinishError(f"Kafka Connect: {exc}") from None
    return planned


def _control_table_steps(
    settings: Settings, sides: _Sides, side: Side, src: SourceSettings, conn: Conn
) -> list[_Planned]:
    """The source's heartbeat (unless shared) and signal tables, then its control schema when it
    would be left empty."""
    ours = [signal_table(src)]
    if not _shared_heartbeat(settings, sides, src):
        ours.insert(0, heartbeat_table(src))
    found = source_prep.existing_tables(conn, ours)
    planned = [_Planned(Removal("table", str(t), sides.where(side)), side, t) for t in found]
    schema = src.control_schema
    if schema not in _user_schemas(sides) and _schema_exists(conn, schema) and _schema_left_empty(conn, schema, found):
        planned.append(_Planned(Removal("schema", schema, sides.where(side)), side))
    return planned


def _same_database(a: SourceSettings, b: SourceSettings) -> bool:
    return (a.host, a.port, a.database) == (b.host, b.port, b.database)


def _shared_heartbeat(settings: Settings, sides: _Sides, src: SourceSettings) -> bool:
    """Another configured source writes its heartbeat into the same table."""
    return any(
        other.name not in (sides.old.name, sides.new.name)
        and _same_database(other, src)
        and other.control_schema == src.control_schema
        for other in settings.sources
    )


def _shared_control_schema(settings: Settings, sides: _Sides, pipe: PipelineSettings) -> bool:
    """Another configured pipeline keeps its control tables in the same target schema."""
    return any(
        other.name not in (sides.forward.name, sides.reverse.name)
        and other.target.url == pipe.target.url
        and other.target.control_schema == pipe.target.control_schema
        for other in settings.pipelines
    )


def _schema_exists(conn: Conn, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _schema_left_empty(conn: Conn, schema: str, dropping: list[TableRef]) -> bool:
    """No relation (tables, views, sequences...) nor function of ``schema`` is left once
    ``dropping`` is gone (indexes and TOAST tables go with their tables)."""
    names = [t.table for t in dropping if t.schema == schema]
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "        WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relname <> ALL(%s))"
        "     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s)"
        " AS n",
        (schema, names, schema),
    ).fetchone()
    return row is not None and int(row["n"]) == 0


# --------------------------------------------------------------------------- dropping


def _execute(step: _Planned, client: ConnectClient, conns: dict[Side, Conn]) -> None:
    removal = step.removal
    try:
        if step.side == "connect":
            remove_connector(client, removal.name, reset_offsets=True)
        else:
            _DROPS[removal.kind](conns[step.side], step)
    except (ConnectError, psycopg.Error) as exc:
        raise FinishError(f"dropping {removal.line()} failed: {str(exc).strip().splitlines()[0]}") from None
    log.info("dropped", kind=removal.kind, name=removal.name, where=removal.where)


def _drop_slot(conn: Conn, step: _Planned) -> None:
    drop_slot_when_free(conn, step.removal.name)


def _drop_publication(conn: Conn, step: _Planned) -> None:
    source_prep.drop_publication(conn, step.removal.name)


def _drop_table(conn: Conn, step: _Planned) -> None:
    assert step.table is not None
    source_prep.drop_tables(conn, [step.table])


def _drop_schema(conn: Conn, step: _Planned) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(step.removal.name)))


_DROPS: dict[str, Callable[[Conn, _Planned], None]] = {
    "slot": _drop_slot,
    "publication": _drop_publication,
    "table": _drop_table,
    "schema": _drop_schema,
}
