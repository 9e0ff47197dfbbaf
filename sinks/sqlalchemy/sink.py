"""The SQLAlchemy sink (SQLAlchemy 2 Core): version-guarded apply into MariaDB/MySQL or SQLite.

Same invariants as :mod:`sinks.postgres.sink` (design invariant 1): every row carries its
source position ``(__cdc_commit_lsn, __cdc_lsn)``; an upsert or delete takes effect only when
its position is newer than the stored one; deletes leave versioned tombstones; truncates raise
a per-table watermark; the batch's consumer offsets are written in the same transaction.

Per batch:

1. DDL, in its own short transaction *before* the data transaction (MariaDB commits
   implicitly around DDL): control tables, create missing target tables from the event
   schema, add new columns (:mod:`sinks.sqlalchemy.ddl`);
2. ONE data transaction: truncates (delete older rows, raise the watermark, drop older
   tombstones); upserts, after dropping in Python those covered by a newer tombstone or the
   truncate watermark (tombstones of a key are written only by the worker owning that key's
   partition, so reading them in the transaction is enough), as a batched, guarded
   ``INSERT ... ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT DO UPDATE ... WHERE``
   (:mod:`sinks.sqlalchemy.dml`), one statement shape per set of unavailable TOASTed columns
   (those columns are left alone); deletes guarded by the version and tombstoned; offsets.

With ``versions="table"`` (``target.versions``) the positions live in the control table
``row_versions`` and the user tables keep the source's columns only
(:mod:`sinks.sqlalchemy.versions`); every guarantee above stays.

SQLite runs each transaction as ``BEGIN IMMEDIATE`` (the write lock up front, so two writers
wait on ``busy_timeout`` instead of failing to upgrade a read lock) in WAL journal mode.
MariaDB sessions use ``time_zone='+00:00'``, a strict ``sql_mode`` (bad values are errors, not
warnings) and READ COMMITTED.

Faults, as in :mod:`sinks.postgres.sink`: ``stall_timeout_s`` bounds a transaction. On MariaDB
every socket read and write times out after it (PyMySQL ``read_timeout``/``write_timeout``) and
a watchdog shuts the socket down when the whole transaction has not finished within it (a
frozen server keeps the TCP connection open); on SQLite it is the busy timeout (a writer
holding the file). Both surface as :class:`TransientSinkError`. A column or table the sink
wrote that was dropped by hand raises :class:`~sinks.postgres.ddl.TargetSchemaError` (the
``known_columns`` control table) instead of being re-created empty.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from pipeline.core.batch import Delete, ReducedBatch, TableChanges, Upsert
from pipeline.core.events import Column, Position, TableId
from pipeline.core.logs import get_logger
from sinks.base import ApplyResult, BatchRejectedError, OffsetMap, TargetSchemaError, TopicPartition, TransientSinkError
from sinks.evolution import (
    ColumnChange,
    EvolutionInput,
    KnownColumn,
    carry_renames,
    known_update,
    newest_position,
    plan_changes,
    report_changes,
    schema_signature,
)
from sinks.postgres.types import parse_pg_type, pg_type
from sinks.sqlalchemy import ddl, dml, evolution
from sinks.sqlalchemy.ddl import ROW_ID, VERSION_COLUMNS, ControlTables, TableShape
from sinks.sqlalchemy.engine import DEFAULT_STALL_TIMEOUT_S, StallGuard, make_engine
from sinks.sqlalchemy.types import MYSQL, SQLITE, UnsupportedValueError, adapt
from sinks.sqlalchemy.versions import SaTableVersions, shape_row_key

log = get_logger(__name__)

# MariaDB error codes worth a retry (MariaDB "Error Codes"): lock wait timeout, deadlock, too
# many connections, server shutdown, connection killed; client codes 2002/2003/2006/2013/2055
# (cannot connect, server gone away, lost connection).
_TRANSIENT_MYSQL_CODES = frozenset({1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031})
_TRANSIENT_SQLITE_TEXT = ("database is locked", "database is busy", "disk i/o error")
# The cached table shape is stale (a column or table went away under the worker): MariaDB 1054
# unknown column, 1146 no such table; SQLite's messages. The retry re-reads the catalog, which
# then names what was dropped (TargetSchemaError).
_STALE_SHAPE_MYSQL_CODES = frozenset({1054, 1146})
_STALE_SHAPE_SQLITE_TEXT = ("no such table", "no such column", "has no column named")
_IN_CHUNK = 500
# Incoming rows per stale-row query, and its bind budget (each key value is bound twice; SQLite
# allows 32766 variables since 3.32, older builds 999).
_STALE_CHUNK = 200
_STALE_BINDS = 900


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix: lost connections, deadlocks, lock timeouts, a busy SQLite file."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
        if code is not None and code in _TRANSIENT_MYSQL_CODES:
            return True
        text = str(orig).lower()
        return isinstance(exc, sa.exc.OperationalError) and any(t in text for t in _TRANSIENT_SQLITE_TEXT)
    return False


def run_committed(engine: Engine, work: Callable[[Connection], Any], what: str) -> Any:
    """``work(conn)`` in one transaction of ``engine``, committed on return; its result. A
    transient driver error (:func:`is_transient`) becomes TransientSinkError naming ``what``
    (e.g. ``"target cutover query"``); others propagate."""
    try:
        with engine.begin() as conn:
            return work(conn)
    except sa.exc.DBAPIError as exc:
        if is_transient(exc):
            raise TransientSinkError(f"{what} failed: {exc.orig}") from exc
        raise


def is_stale_shape(exc: sa.exc.DBAPIError) -> bool:
    """True when the statement named a column or table the target no longer has."""
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
    if code is not None:
        return code in _STALE_SHAPE_MYSQL_CODES
    text = str(orig).lower()
    return any(t in text for t in _STALE_SHAPE_SQLITE_TEXT)


class SqlAlchemySink:
    """Applies reduced batches to a MariaDB/MySQL or SQLite database; see the module docstring.

    ``url`` is a SQLAlchemy URL object with the password already set (never logged).
    ``control_schema`` names the control tables' schema (MariaDB database; SQLite prefix).
    ``stall_timeout_s`` bounds one transaction (seconds): past it the call raises
    TransientSinkError (a frozen target must not hang the worker). ``versions``: ``columns``
    (``__cdc_*`` columns in the user tables) or ``table`` (``row_versions``).
    """

    def __init__(
        self,
        url: URL,
        *,
        control_schema: str = "cdc_control",
        create_tables: bool = True,
        add_columns: bool = True,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        drop_dropped_columns: bool = False,
        renames: Mapping[str, Mapping[str, str]] | None = None,
        versions: str = "columns",
    ) -> None:
        if versions not in ("columns", "table"):
            raise ValueError(f"versions must be 'columns' or 'table', not {versions!r}")
        self._versions = versions
        self._stall_timeout_s = stall_timeout_s
        self._drop_dropped_columns = drop_dropped_columns
        self._renames = {t: dict(m) for t, m in (renames or {}).items()}
        self._signatures: dict[TableId, tuple[object, ...]] = {}
        self._pending_changes: list[tuple[ColumnChange, Position | None]] = []
        self._engine = make_engine(url, stall_timeout_s)
        self._dialect = ddl.dialect_kind(self._engine.dialect)
        self._control_schema = control_schema
        self._control_tables: ControlTables | None = None  # built once connected (server kind known)
        self._create_tables = create_tables
        self._add_columns = add_columns
        self._shapes: dict[TableId, TableShape] = {}
        self._known: dict[TableId, dict[str, KnownColumn]] = {}
        self._control_ready = False

    @property
    def engine(self) -> Engine:
        """The engine (for tests and the verifier)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``mysql`` (MariaDB too) or ``sqlite``."""
        return self._dialect

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction bounded by the stall guard; database errors become TransientSinkError
        or BatchRejectedError."""
        guard = StallGuard(self._stall_timeout_s) if self._dialect == MYSQL else None
        try:
            with self._engine.begin() as conn:
                if guard is not None:
                    guard.arm(conn)
                yield conn
        except sa.exc.DBAPIError as exc:
            self._forget()
            raise self._classify(exc, guard is not None and guard.fired) from exc
        except (UnsupportedValueError, ddl.UnsupportedTableError, ValueError) as exc:
            self._forget()
            raise BatchRejectedError(str(exc)) from exc
        except sa.exc.SQLAlchemyError as exc:
            self._forget()
            raise BatchRejectedError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        except BaseException:
            self._forget()
            raise
        finally:
            if guard is not None:
                guard.disarm()

    def _forget(self) -> None:
        """Drop cached shapes and known columns (DDL may have been rolled back)."""
        self._shapes.clear()
        self._known.clear()
        self._signatures.clear()
        self._pending_changes.clear()

    def _classify(self, exc: sa.exc.DBAPIError, stalled: bool) -> Exception:
        if stalled:
            return TransientSinkError(
                f"target did not answer within {self._stall_timeout_s:g}s (stalled); connection dropped"
            )
        message = f"{type(exc.orig).__name__}: {_first_line(exc.orig)}"
        if is_transient(exc):
            return TransientSinkError(message)
        if is_stale_shape(exc):
            self._control_ready = False
            return TransientSinkError(f"target schema changed: {message}", retry_after_s=0)
        return BatchRejectedError(message)

    def close(self) -> None:
        """Dispose of the engine's connections."""
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self._engine.dispose()

    @property
    def _table_versions(self) -> SaTableVersions | None:
        """The ``row_versions`` statements in ``table`` mode (after ``_ensure_control``), else None."""
        return SaTableVersions(self._dialect, self._control.row_versions) if self._versions == "table" else None

    @property
    def _control(self) -> ControlTables:
        assert self._control_tables is not None, "_ensure_control() first"
        return self._control_tables

    def _ensure_control(self) -> None:
        if self._control_ready:
            return
        with self._transaction() as conn:
            # A mysql:// URL learns that the server is MariaDB on the first connection, and
            # the collation of the control tables depends on it.
            self._control_tables = ddl.control_tables(self._control_schema, conn.dialect)
            ddl.ensure_control(conn, self._control_tables)
        self._control_ready = True

    # ------------------------------------------------------------------ offsets

    def stored_offsets(self, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offsets stored for ``group`` among ``partitions``.

        Raises TransientSinkError when the target is unreachable.
        """
        wanted = set(partitions)
        return {tp: o for tp, o in self.group_offsets(group).items() if tp in wanted}

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        """Every ``(topic, partition) -> next offset`` stored for ``group`` (empty for a new group).

        Raises TransientSinkError when the target is unreachable.
        """
        self._ensure_control()
        t = self._control.offsets
        with self._transaction() as conn:
            rows = conn.execute(
                sa.select(t.c.topic, t.c.kafka_partition, t.c.next_offset).where(t.c.consumer_group == group)
            ).all()
        return {(str(tp), int(p)): int(o) for tp, p, o in rows}

    def reset_offsets(self, group: str) -> int:
        """Delete every stored offset of ``group``; returns the number of rows deleted."""
        self._ensure_control()
        t = self._control.offsets
        with self._transaction() as conn:
            return int(conn.execute(sa.delete(t).where(t.c.consumer_group == group)).rowcount)

    def _store_offsets(self, conn: Connection, group: str, offsets: OffsetMap) -> None:
        if not offsets:
            return
        cols = ["consumer_group", "topic", "kafka_partition", "next_offset", "updated_at"]
        stmt = dml.replacing_upsert(self._dialect, self._control.offsets, cols, cols[:3])
        now = _utcnow()
        conn.execute(stmt, [dml.params([group, t, p, o, now]) for (t, p), o in offsets.items()])

    # ------------------------------------------------------------------ apply

    def apply(self, batch: ReducedBatch, group: str, offsets: OffsetMap) -> ApplyResult:
        """Apply ``batch`` and store ``offsets`` in one transaction (see :mod:`sinks.base`).

        Raises TransientSinkError (retry) or BatchRejectedError (bad data for this target).
        """
        self._ensure_control()
        shapes = {table: self._shape_for(changes) for table, changes in batch.tables.items()}
        upserted = deleted = truncated = 0
        stale: dict[TableId, frozenset[str]] = {}
        with self._transaction() as conn:
            for table, changes in batch.tables.items():
                shape = shapes[table]
                if changes.truncate is not None:
                    truncated += self._truncate(conn, shape, changes.truncate)
                watermark = self._truncate_watermark(conn, table)
                skipped: set[str] = set()
                if changes.upserts:
                    upserted += self._upsert(conn, shape, changes, watermark, skipped)
                if changes.deletes:
                    deleted += self._delete(conn, shape, changes, skipped)
                if skipped:
                    stale[table] = frozenset(skipped)
            self._store_offsets(conn, group, offsets)
        return ApplyResult(upserted, deleted, truncated, time.time(), stale)

    # -- DDL

    def _shape_for(self, changes: TableChanges) -> TableShape:
        table = changes.table
        shape = self._shapes.get(table)
        columns = changes.columns
        signature = schema_signature(changes, pg_type)
        if shape is not None and (columns is None or self._signatures.get(table) == signature):
            return shape
        with self._transaction() as conn:
            shape = self._evolve(conn, changes)
        report_changes(self._pending_changes)
        self._shapes[table] = shape
        if columns is not None:
            self._signatures[table] = signature
        return shape

    def _evolve(self, conn: Connection, changes: TableChanges) -> TableShape:
        """Read the table's shape, refuse a dropped table or column, create the table or apply
        the source's schema changes (:mod:`sinks.evolution`) as configured, and record the
        columns and changes (``known_columns``, ``schema_changes``)."""
        table, columns = changes.table, changes.columns
        shape = ddl.read_shape(conn, table)
        known = self._known_columns(conn, table)
        if shape is None and known:
            raise TargetSchemaError(
                f"target table {table} was dropped behind the pipeline's back (it held columns"
                f" {sorted(known)}); re-create it and replay (see docs/reliability.md), or delete its rows from"
                f" {self._control_schema}.known_columns to let the pipeline re-create it empty"
            )
        if shape is not None and self._versions == "table":
            own = sorted(c for c in shape.columns if c.startswith(ddl.OWN_PREFIX))
            if own:
                raise TargetSchemaError(
                    f"target table {table} has the columns-mode column(s) {own} but target.versions is"
                    " 'table'; drop them (their positions are not migrated) or keep target.versions: columns"
                )
        position = newest_position(changes)
        applied: list[ColumnChange] = []
        if shape is None:
            shape = self._create(conn, changes)
        elif columns is not None:
            self._check_not_dropped(table, shape, [c.name for c in columns], known)
            applied = self._plan(conn, shape, changes, known, position)
            for change in applied:
                evolution.run_change(conn, shape, change)
            if any(c.kind not in ("source_type", "restored", "dropped_at_source") for c in applied):
                shape = ddl.read_shape(conn, table)
                assert shape is not None
        self._remember_columns(conn, shape, known, columns, applied, position)
        return shape

    def _plan(
        self,
        conn: Connection,
        shape: TableShape,
        changes: TableChanges,
        known: dict[str, KnownColumn],
        position: Position | None,
    ) -> list[ColumnChange]:
        assert changes.columns is not None
        return plan_changes(
            EvolutionInput(
                table=shape.table,
                target_types=shape.columns,
                target_keys=() if shape.keyless else shape.key_columns,
                columns=changes.columns,
                key_columns=changes.key_columns,
                known=known,
                position=position,
                type_of=lambda c: evolution.type_text(c, conn.dialect, key=c.name in changes.key_columns),
                parse=evolution.parse_sa_type,
                source_type_of=pg_type,
                parse_source=parse_pg_type,
                drop_on_target=self._drop_dropped_columns,
                renames=self._renames.get(str(shape.table)),
                add_columns=self._add_columns,
                keyless_events=changes.truncate is None,
                dynamic_types=self._dialect == SQLITE,
            )
        )

    def _create(self, conn: Connection, changes: TableChanges) -> TableShape:
        table, columns = changes.table, changes.columns
        if not self._create_tables:
            raise BatchRejectedError(f"target table {table} does not exist and create_tables is off")
        if columns is None:
            raise BatchRejectedError(
                f"target table {table} does not exist and the events carry no schema "
                "(enable value.converter.schemas.enable or create the table)"
            )
        ddl.create_table(conn, table, columns, changes.key_columns, self._versions)
        log.info("target table created", table=str(table), columns=len(columns), dialect=self._dialect)
        shape = ddl.read_shape(conn, table)
        assert shape is not None
        return shape

    def _known_columns(self, conn: Connection, table: TableId) -> dict[str, KnownColumn]:
        if table not in self._known:
            kc = self._control.known_columns
            rows = conn.execute(
                sa.select(kc.c.column_name, kc.c.source_type, kc.c.commit_lsn, kc.c.lsn, kc.c.dropped_at_source).where(
                    kc.c.table_name == str(table)
                )
            ).all()
            self._known[table] = {
                str(r[0]): KnownColumn(
                    str(r[0]),
                    r[1],
                    Position(int(r[2]), int(r[3])) if r[2] is not None and r[3] is not None else None,
                    r[4] is not None,
                )
                for r in rows
            }
        return self._known[table]

    def _remember_columns(
        self,
        conn: Connection,
        shape: TableShape,
        known: dict[str, KnownColumn],
        columns: tuple[Column, ...] | None,
        applied: list[ColumnChange],
        position: Position | None,
    ) -> None:
        """Record the target's columns, the source types seen and the changes applied."""
        types = {c.name: pg_type(c) for c in columns or ()}
        dropped = {c.name for c in applied if c.kind in ("dropped_at_source", "dropped")}
        names = [n for n in shape.columns if not n.startswith(ddl.OWN_PREFIX)]
        rows = [
            r
            for r in (known_update(n, known.get(n), types.get(n), n in dropped, position) for n in [*names, *dropped])
            if r is not None
        ]
        now = _utcnow()
        kc = self._control.known_columns
        for r in rows:
            values = {
                "source_type": r.source_type,
                "commit_lsn": r.position.commit_lsn if r.position else None,
                "lsn": r.position.lsn if r.position else None,
                "dropped_at_source": now if r.dropped else None,
            }
            where = (kc.c.table_name == str(shape.table), kc.c.column_name == r.name)
            if r.name in known:
                conn.execute(sa.update(kc).where(*where).values(**values))
            else:
                conn.execute(
                    sa.insert(kc).values(table_name=str(shape.table), column_name=r.name, seen_at=now, **values)
                )
        known.update({r.name: r for r in rows})
        if applied:
            conn.execute(
                sa.insert(self._control.schema_changes),
                [
                    {
                        "table_name": str(c.table),
                        "column_name": c.name,
                        "change": c.kind,
                        "old_type": c.old_type,
                        "new_type": c.new_type,
                        "commit_lsn": position.commit_lsn if position else None,
                        "lsn": position.lsn if position else None,
                        "applied_at": now,
                    }
                    for c in applied
                ],
            )
            self._pending_changes.extend((c, position) for c in applied)

    def _check_not_dropped(
        self, table: TableId, shape: TableShape, incoming: list[str], known: dict[str, KnownColumn]
    ) -> None:
        """Raise TargetSchemaError when ``incoming`` carries a column the target had and lost
        (a column the pipeline itself dropped as "dropped at source" is added again instead)."""
        dropped = sorted(c for c in incoming if c in known and not known[c].dropped and c not in shape.columns)
        if dropped:
            raise TargetSchemaError(
                f"target column(s) {dropped} of {table} were dropped behind the pipeline's back; the worker"
                " stops rather than re-create them empty. Restore them (ALTER TABLE ... ADD COLUMN) and rebuild"
                " the table (docs/reliability.md), or exclude them with a transform"
            )

    # -- truncate

    def _truncate(self, conn: Connection, shape: TableShape, position: Position) -> int:
        name = str(shape.table)
        versions = self._table_versions
        if versions is not None:
            done = self._truncate_watermark(conn, shape.table)
            # A replayed truncate (its watermark stands) has nothing to do: every row there is
            # newer, and a keyless table could not tell them apart.
            rows = 0 if done is not None and done >= position else versions.truncate(conn, shape, position)
        else:
            t = shape.clause([*VERSION_COLUMNS])
            newer = sa.tuple_(t.c[VERSION_COLUMNS[0]], t.c[VERSION_COLUMNS[1]]) < sa.tuple_(
                sa.literal(position.commit_lsn), sa.literal(position.lsn)
            )
            rows = int(conn.execute(sa.delete(t).where(newer)).rowcount or 0)
        tr = self._control.truncations
        cols = ["table_name", "commit_lsn", "lsn", "truncated_at"]
        conn.execute(
            dml.guarded_upsert(self._dialect, tr, cols, ["table_name"], ("commit_lsn", "lsn")),
            dml.params([name, position.commit_lsn, position.lsn, _utcnow()]),
        )
        tb = self._control.tombstones
        conn.execute(
            sa.delete(tb).where(
                tb.c.table_name == name,
                sa.tuple_(tb.c.commit_lsn, tb.c.lsn)
                < sa.tuple_(sa.literal(position.commit_lsn), sa.literal(position.lsn)),
            )
        )
        log.info("target table truncated", table=name, rows=rows, position=str(position))
        return 1

    def _truncate_watermark(self, conn: Connection, table: TableId) -> Position | None:
        tr = self._control.truncations
        row = conn.execute(sa.select(tr.c.commit_lsn, tr.c.lsn).where(tr.c.table_name == str(table))).first()
        return Position(int(row[0]), int(row[1])) if row else None

    def _tombstones(self, conn: Connection, table: TableId, keys: Sequence[str]) -> dict[str, Position]:
        """Tombstone positions of ``keys`` (canonical key texts) of ``table``."""
        tb = self._control.tombstones
        name = str(table)
        if conn.execute(sa.select(sa.literal(1)).where(tb.c.table_name == name).limit(1)).first() is None:
            return {}
        by_hash = {ddl.row_hash(k): k for k in keys}
        found: dict[str, Position] = {}
        hashes = list(by_hash)
        for i in range(0, len(hashes), _IN_CHUNK):
            rows = conn.execute(
                sa.select(tb.c.row_hash, tb.c.commit_lsn, tb.c.lsn).where(
                    tb.c.table_name == name, tb.c.row_hash.in_(hashes[i : i + _IN_CHUNK])
                )
            ).all()
            for h, c, lsn in rows:
                found[by_hash[str(h)]] = Position(int(c), int(lsn))
        return found

    # -- upsert

    def _upsert(
        self, conn: Connection, shape: TableShape, changes: TableChanges, watermark: Position | None, stale: set[str]
    ) -> int:
        """Upsert the batch's rows of one table; returns rows written, adds the stale keys to ``stale``.

        Rows the target already holds at a position at least as new are found first
        (:meth:`_stored_stale`) and not sent; the statement keeps its own version guard.
        """
        stones = self._tombstones(conn, shape.table, list(changes.upserts))
        writable = [c for c in shape.columns if not c.startswith(ddl.OWN_PREFIX)]
        renames = self._renames.get(str(shape.table))
        if renames:
            carry_renames((up.row for up in changes.upserts.values()), renames, writable)
        fresh: list[Upsert] = []
        for up in changes.upserts.values():
            stone = stones.get(up.key)
            if (stone is not None and stone >= up.position) or (watermark is not None and up.position <= watermark):
                stale.add(up.key)  # deleted by a newer change, or older than the newest truncate
            else:
                fresh.append(up)
        stored = self._stored_stale(conn, shape, fresh)
        stale.update(stored)
        groups: dict[frozenset[str], list[Upsert]] = defaultdict(list)
        for up in fresh:
            if up.key not in stored:
                # Only the columns an event carries are written (see sinks.postgres.sink._upsert).
                absent = frozenset(c for c in writable if c not in up.row and c not in shape.key_columns)
                groups[up.unavailable | absent].append(up)
        total = 0
        for unavailable, ups in groups.items():
            columns = [c for c in shape.columns if c not in unavailable and not c.startswith(ddl.OWN_PREFIX)]
            total += self._upsert_group(conn, shape, columns, ups)
        return total

    def _upsert_group(self, conn: Connection, shape: TableShape, columns: list[str], ups: list[Upsert]) -> int:
        extra = [c for c in ups[0].row if c not in shape.columns]
        if extra:
            self._check_not_dropped(shape.table, shape, extra, self._known.get(shape.table, {}))
            raise BatchRejectedError(
                f"{shape.table}: target has no column(s) {extra} (add them or drop them by transform)"
            )
        versions = self._table_versions
        if versions is not None:
            return versions.upsert_rows(conn, shape, columns, ups)
        all_cols = [*columns, *VERSION_COLUMNS] + ([ROW_ID] if shape.keyless else [])
        table = shape.clause(all_cols)
        if shape.keyless:
            stmt = dml.insert_ignoring_duplicates(self._dialect, table, all_cols, [ROW_ID])
        else:
            stmt = dml.guarded_upsert(self._dialect, table, all_cols, shape.key_columns, VERSION_COLUMNS)
        rows = []
        for up in ups:
            values = [adapt(up.row.get(c), self._dialect) for c in columns]
            values += [up.position.commit_lsn, up.position.lsn]
            if shape.keyless:
                values.append(up.key)
            rows.append(dml.params(values))
        dml.executemany(conn, stmt, rows)
        return len(rows)

    def _stored_stale(self, conn: Connection, shape: TableShape, ups: list[Upsert]) -> set[str]:
        """Keys of ``ups`` whose stored row is at a position at least as new (keyless tables: whose
        row id is already stored), read in this transaction. Only the worker owning a key's
        partition writes it, so the answer holds until the commit; the upsert's guard stays."""
        if not ups:
            return set()
        versions = self._table_versions
        if versions is not None:
            row_keys = {up.key: shape_row_key(shape, up.key, up.row) for up in ups}
            stored = versions.stored(conn, str(shape.table), list(row_keys.values()))
            return {
                up.key
                for up in ups
                if row_keys[up.key] in stored and (shape.keyless or stored[row_keys[up.key]] >= up.position)
            }
        if shape.keyless:
            t = shape.clause([ROW_ID])
            ids = [up.key for up in ups]
            found: set[str] = set()
            for i in range(0, len(ids), _IN_CHUNK):
                rows = conn.execute(sa.select(t.c[ROW_ID]).where(t.c[ROW_ID].in_(ids[i : i + _IN_CHUNK]))).all()
                found.update(str(r[0]) for r in rows)
            return found
        keys = list(shape.key_columns)
        t = shape.clause([*keys, *VERSION_COLUMNS])
        chunk = max(1, min(_STALE_CHUNK, _STALE_BINDS // (2 * len(keys))))
        # The key as the upsert writes it: the row's values of the target's key columns (the
        # event's key names may differ from the target's, e.g. after a rename transform).
        probe = [up for up in ups if all(k in up.row for k in keys)]
        stale: set[str] = set()
        for start in range(0, len(probe), chunk):
            part = probe[start : start + chunk]
            binds = {
                f"k{j}_{n}": adapt(up.row[k], self._dialect) for j, up in enumerate(part) for n, k in enumerate(keys)
            }
            stmt = dml.stored_versions(t, keys, VERSION_COLUMNS, len(part))
            for i, commit, lsn in conn.execute(stmt, binds).all():
                up = part[int(i)]
                if Position(int(commit), int(lsn)) >= up.position:
                    stale.add(up.key)
        return stale

    # -- delete

    def _delete(self, conn: Connection, shape: TableShape, changes: TableChanges, stale: set[str]) -> int:
        """Guarded deletes and tombstones of one table; returns rows deleted, adds to ``stale`` the
        keys whose tombstone was already at or past the delete (nothing to do: a replay)."""
        if shape.keyless:
            return self._delete_keyless(conn, shape, list(changes.deletes.values()), stale)
        if self._table_versions is not None:
            return self._delete_by_versions(conn, shape, list(changes.deletes.values()), stale)
        keys = list(shape.key_columns)
        t = shape.clause([*keys, *VERSION_COLUMNS])
        match = [t.c[k] == sa.bindparam(f"k{i}") for i, k in enumerate(keys)]
        newer = sa.tuple_(t.c[VERSION_COLUMNS[0]], t.c[VERSION_COLUMNS[1]]) < sa.tuple_(
            sa.bindparam("vc"), sa.bindparam("vl")
        )
        deletes = list(changes.deletes.values())
        # A row older than the delete exists only under an older tombstone (or none), so a delete
        # whose tombstone is already at or past it deletes nothing and leaves the tombstone: stale.
        stones = self._tombstones(conn, shape.table, [d.key for d in deletes])
        stale.update(d.key for d in deletes if d.key in stones and stones[d.key] >= d.position)
        rows = [
            {
                **{f"k{i}": adapt(d.key_values[k], self._dialect) for i, k in enumerate(keys)},
                "vc": d.position.commit_lsn,
                "vl": d.position.lsn,
            }
            for d in deletes
        ]
        result = conn.execute(sa.delete(t).where(*match, newer), rows)
        self._write_tombstones(conn, shape.table, [(d.key, d.position) for d in deletes], guarded=True)
        return max(int(result.rowcount or 0), 0)

    def _delete_by_versions(self, conn: Connection, shape: TableShape, deletes: list[Delete], stale: set[str]) -> int:
        """``table`` mode: delete the keys whose stored position is older than the delete (or
        absent), move their ``row_versions`` entries to it, and tombstone every key."""
        versions = self._table_versions
        assert versions is not None
        keys = list(shape.key_columns)
        row_keys = {d.key: shape_row_key(shape, d.key, d.key_values) for d in deletes}
        stones = self._tombstones(conn, shape.table, list(row_keys.values()))
        stale.update(d.key for d in deletes if row_keys[d.key] in stones and stones[row_keys[d.key]] >= d.position)
        stored = versions.stored(conn, str(shape.table), list(row_keys.values()))
        doomed = [d for d in deletes if row_keys[d.key] not in stored or stored[row_keys[d.key]] < d.position]
        deleted = 0
        if doomed:
            t = shape.clause(keys)
            match = [t.c[k] == sa.bindparam(f"k{i}") for i, k in enumerate(keys)]
            rows = [{f"k{i}": adapt(d.key_values[k], self._dialect) for i, k in enumerate(keys)} for d in doomed]
            deleted = max(int(conn.execute(sa.delete(t).where(*match), rows).rowcount or 0), 0)
            versions.write(conn, str(shape.table), [(row_keys[d.key], d.position) for d in doomed], keep=False)
        self._write_tombstones(conn, shape.table, [(row_keys[d.key], d.position) for d in deletes], guarded=True)
        return deleted

    def _write_tombstones(
        self, conn: Connection, table: TableId, stones: list[tuple[str, Position]], guarded: bool
    ) -> None:
        if not stones:
            return
        tb = self._control.tombstones
        cols = ["table_name", "row_hash", "row_key", "commit_lsn", "lsn", "deleted_at"]
        stmt = (
            dml.guarded_upsert(self._dialect, tb, cols, cols[:2], ("commit_lsn", "lsn"))
            if guarded
            else dml.insert_ignoring_duplicates(self._dialect, tb, cols, cols[:2])
        )
        now = _utcnow()
        conn.execute(stmt, [dml.params([str(table), ddl.row_hash(k), k, p.commit_lsn, p.lsn, now]) for k, p in stones])

    def _delete_keyless(self, conn: Connection, shape: TableShape, deletes: list[Delete], stale: set[str]) -> int:
        """Delete one row equal to each ``before`` image, once per delete event (by its marker),
        and tombstone the removed row's id so a replayed insert of it is skipped."""
        table = shape.table
        done = 0
        tb = self._control.tombstones
        for d in sorted(deletes, key=lambda x: x.position):
            seen = conn.execute(
                sa.select(sa.literal(1)).where(tb.c.table_name == str(table), tb.c.row_hash == ddl.row_hash(d.key))
            ).first()
            if seen:
                stale.add(d.key)
                continue
            markers = [d.key]
            if self._table_versions is not None:
                done += 1 if self._table_versions.delete_one(conn, shape, d.key_values) else 0
                self._write_tombstones(conn, table, [(d.key, d.position)], guarded=False)
                continue
            cols = [c for c in d.key_values if c in shape.columns]
            t = shape.clause([*cols, *VERSION_COLUMNS, ROW_ID])
            where = [t.c[c].is_not_distinct_from(adapt(d.key_values[c], self._dialect)) for c in cols]
            where.append(
                sa.tuple_(t.c[VERSION_COLUMNS[0]], t.c[VERSION_COLUMNS[1]])
                < sa.tuple_(sa.literal(d.position.commit_lsn), sa.literal(d.position.lsn))
            )
            row = conn.execute(sa.select(t.c[ROW_ID]).where(*where).order_by(t.c[ROW_ID]).limit(1)).first()
            if row is not None:
                conn.execute(sa.delete(t).where(t.c[ROW_ID] == row[0]))
                markers.append(str(row[0]))
                done += 1
            self._write_tombstones(conn, table, [(m, d.position) for m in markers], guarded=False)
        return done


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # control tables store UTC without zone


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__
