"""The PostgreSQL sink (psycopg 3): set-based, version-guarded apply of a reduced batch.

Per batch, in ONE transaction:

1. per table, DDL when needed (create from the event schema, add new columns), under an
   advisory lock so concurrent workers do not race;
2. truncates: rows older than the truncate's position are deleted and the table's truncate
   watermark is raised;
3. upserts: ``COPY`` into a temporary staging table, then one
   ``INSERT ... SELECT ... ON CONFLICT (pk) DO UPDATE ... WHERE (stored version) < (incoming)``
   that also skips rows covered by a newer tombstone or truncate watermark; rows whose
   unchanged TOASTed columns were not sent are written in a group that leaves those columns
   alone;
4. deletes: ``COPY`` of keys, a guarded ``DELETE ... USING``, and versioned tombstones;
5. the consumer offsets of the batch.

With ``versions="table"`` (``target.versions``) the positions live in the control table
``row_versions`` instead of the user tables' ``__cdc_*`` columns; steps 2-4 then run the
statements of :mod:`sinks.postgres.versions`, with the same guarantees. Either way INSERTs say
``OVERRIDING SYSTEM VALUE``, so a pre-created table's ``GENERATED ALWAYS AS IDENTITY`` columns
take the source's values.

Faults: a connection loss or a retryable SQLSTATE is a :class:`TransientSinkError`. A target
that stops answering (frozen host, SIGSTOPped server) would block the worker forever, since the
kernel keeps the TCP connection open; a stall guard therefore drops the connection when one
transaction has not finished within ``stall_timeout_s`` and reports that as transient, so the
runner's retry budget applies (``retry.max_elapsed_s``). A table or column the pipeline writes
that was dropped by hand stops the worker with :class:`~sinks.base.TargetSchemaError`
(see ``known_columns`` in :mod:`sinks.postgres.ddl`) rather than re-creating it empty.

See :mod:`sinks.base` for the contract and :mod:`sinks.postgres.ddl` for the tables.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

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
from sinks.postgres import ddl, evolution
from sinks.postgres.ddl import ROW_ID, VERSION_COLUMNS, TableShape, qualified
from sinks.postgres.types import adapt_value, parse_pg_type, pg_type, whole_row_match
from sinks.postgres.versions import TableVersions

log = get_logger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

# SQLSTATE classes worth a retry (PostgreSQL docs, Appendix A "Error Codes"):
# 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
# 53 insufficient resources, 57P admin shutdown / cannot connect now, 55P03 lock not available.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "53", "57P", "55P03", "58")
# undefined_column / undefined_table: the cached table shape is stale (the target changed
# under the worker); the retry re-reads the catalog, which then names what was dropped.
_STALE_SHAPE_SQLSTATES = ("42703", "42P01")

DEFAULT_STALL_TIMEOUT_S = 120.0


def is_transient(exc: BaseException) -> bool:
    """True for errors that a retry may fix (connection loss, serialization failure, deadlock...)."""
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        return True  # connection-level failure without a server error code
    state = getattr(exc, "sqlstate", None) or ""
    return any(state.startswith(p) for p in _TRANSIENT_SQLSTATE_PREFIXES)


class PostgresSink:
    """Applies reduced batches to one PostgreSQL database; see the module docstring.

    ``conninfo`` is a libpq URL or key/value string (with the password). ``schema`` is the
    default target schema, ``control_schema`` the schema of the control tables.
    ``stall_timeout_s`` bounds one transaction (seconds): past it the connection is dropped and
    the call raises TransientSinkError (a frozen target must not hang the worker). ``versions``
    is ``columns`` (positions in ``__cdc_*`` columns of the user tables) or ``table``
    (``<control_schema>.row_versions``; user tables keep the source's columns only).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        control_schema: str = "cdc_control",
        create_tables: bool = True,
        add_columns: bool = True,
        application_name: str = "cdc-pipeline",
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        drop_dropped_columns: bool = False,
        renames: Mapping[str, Mapping[str, str]] | None = None,
        versions: str = "columns",
    ) -> None:
        if versions not in ("columns", "table"):
            raise ValueError(f"versions must be 'columns' or 'table', not {versions!r}")
        self._conninfo = conninfo
        self._versions = versions
        self._table_versions = TableVersions(control_schema) if versions == "table" else None
        self._drop_dropped_columns = drop_dropped_columns
        self._renames = {t: dict(m) for t, m in (renames or {}).items()}
        self._signatures: dict[TableId, tuple[object, ...]] = {}
        self._pending_changes: list[tuple[ColumnChange, Position | None]] = []
        self._stall_timeout_s = stall_timeout_s
        self._control = control_schema
        self._create_tables = create_tables
        self._add_columns = add_columns
        self._application_name = application_name
        self._conn: Conn | None = None
        self._shapes: dict[TableId, TableShape] = {}
        self._known: dict[TableId, dict[str, KnownColumn]] = {}
        self._control_ready = False

    # ------------------------------------------------------------------ connection

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._conninfo, autocommit=False, connect_timeout=10, application_name=self._application_name
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"cannot connect to the target: {_first_line(exc)}") from exc
            self._shapes.clear()
            self._signatures.clear()
            self._control_ready = False
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        """A transaction; psycopg errors become TransientSinkError or BatchRejectedError."""
        conn = self._connection()
        guard = _StallGuard(conn, self._stall_timeout_s)
        try:
            with guard, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            self._forget_shapes()  # DDL may have been rolled back
            if guard.fired:
                self._discard_connection()
                raise TransientSinkError(
                    f"target did not answer within {self._stall_timeout_s:g}s (stalled); connection dropped"
                ) from exc
            if is_transient(exc) or conn.broken:
                self._discard_connection()
                raise TransientSinkError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
            if getattr(exc, "sqlstate", None) in _STALE_SHAPE_SQLSTATES:
                raise TransientSinkError(f"target schema changed: {_first_line(exc)}", retry_after_s=0) from exc
            raise BatchRejectedError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        except BaseException:
            self._forget_shapes()
            raise
        report_changes(self._pending_changes)

    def _forget_shapes(self) -> None:
        self._shapes.clear()
        self._known.clear()
        self._signatures.clear()
        self._pending_changes.clear()

    def _discard_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Close the connection."""
        self._discard_connection()

    def _ensure_control(self, conn: Conn) -> None:
        if self._control_ready:
            return
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-control-ddl', 0))")
        for stmt in ddl.control_ddl(self._control):
            conn.execute(stmt)
        self._control_ready = True

    def _ctl(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._control), sql.Identifier(name))

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
        with self._transaction() as conn:
            self._ensure_control(conn)
            rows = conn.execute(
                sql.SQL("SELECT topic, kafka_partition, next_offset FROM {} WHERE consumer_group = %s").format(
                    self._ctl("offsets")
                ),
                (group,),
            ).fetchall()
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def reset_offsets(self, group: str) -> int:
        """Delete every stored offset of ``group``; returns the number of rows deleted."""
        with self._transaction() as conn:
            self._ensure_control(conn)
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE consumer_group = %s").format(self._ctl("offsets")), (group,)
            )
            return cur.rowcount

    def _store_offsets(self, conn: Conn, group: str, offsets: OffsetMap) -> None:
        if not offsets:
            return
        conn.cursor().executemany(
            sql.SQL(
                "INSERT INTO {} (consumer_group, topic, kafka_partition, next_offset) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (consumer_group, topic, kafka_partition)"
                " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
            ).format(self._ctl("offsets")),
            [(group, t, p, o) for (t, p), o in offsets.items()],
        )

    # ------------------------------------------------------------------ apply

    def apply(self, batch: ReducedBatch, group: str, offsets: OffsetMap) -> ApplyResult:
        """Apply ``batch`` and store ``offsets`` in one transaction (see :mod:`sinks.base`).

        Raises TransientSinkError (retry) or BatchRejectedError (bad data for this target).
        """
        upserted = deleted = truncated = 0
        stale: dict[TableId, frozenset[str]] = {}
        with self._transaction() as conn:
            self._ensure_control(conn)
            for changes in batch.tables.values():
                shape = self._shape_for(conn, changes)
                if changes.truncate is not None:
                    truncated += self._truncate(conn, shape, changes.truncate)
                watermark = self._truncate_watermark(conn, changes.table)
                skipped: set[str] = set()
                if changes.upserts:
                    upserted += self._upsert(conn, shape, changes, watermark, skipped)
                if changes.deletes:
                    deleted += self._delete(conn, shape, changes, skipped)
                if skipped:
                    stale[changes.table] = frozenset(skipped)
            self._store_offsets(conn, group, offsets)
        return ApplyResult(upserted, deleted, truncated, time.time(), stale)

    # -- DDL

    def _shape_for(self, conn: Conn, changes: TableChanges) -> TableShape:
        table = changes.table
        shape = self._shapes.get(table)
        columns = changes.columns
        signature = schema_signature(changes, pg_type)
        if shape is not None and (columns is None or self._signatures.get(table) == signature):
            return shape
        ddl.lock_table_ddl(conn, table)
        shape = ddl.read_shape(conn, table)
        known = self._known_columns(conn, table)
        if shape is None and known:
            raise TargetSchemaError(
                f"target table {table} was dropped behind the pipeline's back (it held columns"
                f" {sorted(known)}); re-create it and replay (see docs/reliability.md), or delete its rows from"
                f" {self._control}.known_columns to let the pipeline re-create it empty"
            )
        if shape is not None and columns is not None:
            self._check_not_dropped(table, shape, [c.name for c in columns], known)
        if shape is not None and self._table_versions is not None:
            self._check_no_version_columns(shape)
        position = newest_position(changes)
        if shape is None:
            shape = self._create(conn, changes)
            applied: list[ColumnChange] = []
        elif columns is not None:
            applied = self._evolve(conn, shape, changes, known, position)
            if any(c.kind not in ("source_type", "restored") for c in applied):
                shape = ddl.read_shape(conn, table)
                assert shape is not None
        else:
            applied = []
        self._remember_columns(conn, shape, known, columns, applied, position)
        self._shapes[table] = shape
        if columns is not None:
            self._signatures[table] = signature
        return shape

    def _create(self, conn: Conn, changes: TableChanges) -> TableShape:
        table, columns = changes.table, changes.columns
        if not self._create_tables:
            raise BatchRejectedError(f"target table {table} does not exist and create_tables is off")
        if columns is None:
            raise BatchRejectedError(
                f"target table {table} does not exist and the events carry no schema "
                "(enable value.converter.schemas.enable or create the table)"
            )
        for stmt in ddl.create_table_sql(table, columns, changes.key_columns, self._versions):
            conn.execute(stmt)
        log.info("target table created", table=str(table), columns=len(columns))
        shape = ddl.read_shape(conn, table)
        assert shape is not None
        return shape

    def _evolve(
        self,
        conn: Conn,
        shape: TableShape,
        changes: TableChanges,
        known: dict[str, KnownColumn],
        position: Position | None,
    ) -> list[ColumnChange]:
        """Plan (:func:`sinks.evolution.plan_changes`) and run the batch's schema changes."""
        assert changes.columns is not None
        planned = plan_changes(
            EvolutionInput(
                table=shape.table,
                target_types=shape.columns,
                target_keys=() if shape.keyless else shape.key_columns,
                columns=changes.columns,
                key_columns=changes.key_columns,
                known=known,
                position=position,
                type_of=pg_type,
                parse=parse_pg_type,
                source_type_of=pg_type,
                parse_source=parse_pg_type,
                drop_on_target=self._drop_dropped_columns,
                renames=self._renames.get(str(shape.table)),
                add_columns=self._add_columns,
                keyless_events=changes.truncate is None,
            )
        )
        for change in planned:
            for stmt in evolution.change_sql(shape.table, change):
                if change.kind == "dropped_at_source" and shape.columns.get(change.name) is None:
                    continue
                conn.execute(stmt)
        return planned

    def _known_columns(self, conn: Conn, table: TableId) -> dict[str, KnownColumn]:
        if table not in self._known:
            self._known[table] = evolution.read_known(conn, self._ctl("known_columns"), table)
        return self._known[table]

    def _remember_columns(
        self,
        conn: Conn,
        shape: TableShape,
        known: dict[str, KnownColumn],
        columns: tuple[Column, ...] | None,
        applied: list[ColumnChange],
        position: Position | None,
    ) -> None:
        """Record the target's columns, the source types seen and the changes applied (control
        tables ``known_columns`` and ``schema_changes``, in the batch's transaction)."""
        types = {c.name: pg_type(c) for c in columns or ()}
        dropped = {c.name for c in applied if c.kind in ("dropped_at_source", "dropped")}
        names = [n for n in shape.columns if not n.startswith(ddl.OWN_PREFIX)]
        rows = [
            r
            for r in (known_update(n, known.get(n), types.get(n), n in dropped, position) for n in [*names, *dropped])
            if r is not None
        ]
        if rows:
            evolution.write_known(conn, self._ctl("known_columns"), shape.table, rows)
            known.update({r.name: r for r in rows})
        if applied:
            evolution.record_changes(conn, self._ctl("schema_changes"), applied, position)
            self._pending_changes.extend((c, position) for c in applied)

    def _check_no_version_columns(self, shape: TableShape) -> None:
        """In ``table`` mode, refuse a table written in ``columns`` mode (its NOT NULL version
        columns would fail every insert): raise TargetSchemaError."""
        own = sorted(c for c in shape.columns if c.startswith(ddl.OWN_PREFIX))
        if own:
            raise TargetSchemaError(
                f"target table {shape.table} has the columns-mode column(s) {own} but target.versions is"
                " 'table'; drop them (their positions are not migrated) or keep target.versions: columns"
            )

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

    def _truncate(self, conn: Conn, shape: TableShape, position: Position) -> int:
        table = shape.table
        name = str(table)
        if self._table_versions is not None:
            done = self._truncate_watermark(conn, table)
            # A replayed truncate (its watermark stands) has nothing to do: every row there is
            # newer, and a keyless table could not tell them apart.
            rows = 0 if done is not None and done >= position else self._table_versions.truncate(conn, shape, position)
        else:
            cur = conn.execute(  # values as literals: a '%' in a data identifier must not read as a placeholder
                sql.SQL("DELETE FROM {} WHERE ({}, {}) < ({}, {})").format(
                    qualified(table),
                    sql.Identifier(VERSION_COLUMNS[0]),
                    sql.Identifier(VERSION_COLUMNS[1]),
                    sql.Literal(position.commit_lsn),
                    sql.Literal(position.lsn),
                )
            )
            rows = max(cur.rowcount, 0)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_name, commit_lsn, lsn) VALUES (%s, %s, %s) ON CONFLICT (table_name)"
                " DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn, truncated_at = now()"
                " WHERE ({t}.commit_lsn, {t}.lsn) < (EXCLUDED.commit_lsn, EXCLUDED.lsn)"
            ).format(self._ctl("truncations"), t=sql.Identifier("truncations")),
            (name, position.commit_lsn, position.lsn),
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE table_name = %s AND (commit_lsn, lsn) < (%s, %s)").format(
                self._ctl("tombstones")
            ),
            (name, position.commit_lsn, position.lsn),
        )
        log.info("target table truncated", table=name, rows=rows, position=str(position))
        return 1

    def _truncate_watermark(self, conn: Conn, table: TableId) -> Position | None:
        row = conn.execute(
            sql.SQL("SELECT commit_lsn, lsn FROM {} WHERE table_name = %s").format(self._ctl("truncations")),
            (str(table),),
        ).fetchone()
        return Position(row[0], row[1]) if row else None

    def _has_tombstones(self, conn: Conn, table: TableId) -> bool:
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE table_name = %s)").format(self._ctl("tombstones")),
            (str(table),),
        ).fetchone()
        return bool(row and row[0])

    # -- upsert

    def _upsert(
        self, conn: Conn, shape: TableShape, changes: TableChanges, watermark: Position | None, stale: set[str]
    ) -> int:
        """Upsert the batch's rows of one table; returns rows written, adds the stale keys to ``stale``.

        Only the columns an event carries are written: a column it lacks (dropped at the source,
        or added after the event's schema) keeps its stored value or the default.
        """
        writable = [c for c in shape.columns if not c.startswith(ddl.OWN_PREFIX)]
        renames = self._renames.get(str(shape.table))
        if renames:
            carry_renames((up.row for up in changes.upserts.values()), renames, writable)
        groups: dict[frozenset[str], list[Upsert]] = defaultdict(list)
        for up in changes.upserts.values():
            absent = frozenset(c for c in writable if c not in up.row and c not in shape.key_columns)
            groups[up.unavailable | absent].append(up)
        has_tombstones = self._has_tombstones(conn, shape.table)
        total = 0
        for unavailable, ups in groups.items():
            columns = [c for c in shape.columns if c not in unavailable and not c.startswith(ddl.OWN_PREFIX)]
            written, skipped = self._upsert_group(conn, shape, columns, ups, watermark, has_tombstones)
            total += written
            stale.update(skipped)
        return total

    def _upsert_group(
        self,
        conn: Conn,
        shape: TableShape,
        columns: list[str],
        ups: list[Upsert],
        watermark: Position | None,
        has_tombstones: bool,
    ) -> tuple[int, set[str]]:
        """Write one group of upserts: ``(rows written, keys of the stale rows)``."""
        table = shape.table
        interval_cols = {c for c, t in shape.columns.items() if t == "interval"}
        extra = [c for c in ups[0].row if c not in shape.columns] if ups else []
        if extra:
            self._check_not_dropped(table, shape, extra, self._known.get(table, {}))
            raise BatchRejectedError(f"{table}: target has no column(s) {extra} (add them or drop them by transform)")
        conditions = self._upsert_conditions(table, watermark, has_tombstones)
        if self._table_versions is not None:
            return self._table_versions.upsert_group(conn, shape, columns, ups, conditions)
        stg = sql.Identifier("cdc_stg_upsert")
        all_cols = [*columns, *VERSION_COLUMNS] + ([ROW_ID] if shape.keyless else [])
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stg, sql.SQL(", ").join(map(sql.Identifier, all_cols)), qualified(table)
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN __cdc_key text").format(stg))
        copy_cols = sql.SQL(", ").join(map(sql.Identifier, [*all_cols, "__cdc_key"]))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stg, copy_cols)) as copy:
            for up in ups:
                values = [adapt_value(up.row.get(c), c in interval_cols) for c in columns]
                values += [up.position.commit_lsn, up.position.lsn]
                if shape.keyless:
                    values.append(up.key)
                values.append(up.key)
                copy.write_row(values)
        cols = sql.SQL(", ").join(map(sql.Identifier, all_cols))
        s_cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in all_cols)
        # Values go in as literals and the statement is sent without parameters: psycopg would
        # read a '%' inside a quoted data identifier as a placeholder.
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        if shape.keyless:
            conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(sql.Identifier(ROW_ID))
        else:
            keys = sql.SQL(", ").join(map(sql.Identifier, shape.key_columns))
            updates = [c for c in [*columns, *VERSION_COLUMNS] if c not in shape.key_columns]
            set_list = sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in updates
            )
            conflict = sql.SQL(
                "ON CONFLICT ({}) DO UPDATE SET {} WHERE (tgt.__cdc_commit_lsn, tgt.__cdc_lsn)"
                " < (EXCLUDED.__cdc_commit_lsn, EXCLUDED.__cdc_lsn)"
            ).format(keys, set_list)
        # INSERT ... ON CONFLICT returns only the rows it inserted or updated (PostgreSQL docs,
        # INSERT "Outputs"): the staged rows it did not return were stale.
        ident = [ROW_ID] if shape.keyless else list(shape.key_columns)
        returning = sql.SQL(", ").join(map(sql.Identifier, ident))
        same = sql.SQL(" AND ").join(sql.SQL("w.{c} = s.{c}").format(c=sql.Identifier(c)) for c in ident)
        cur = conn.execute(
            sql.SQL(
                "WITH w AS (INSERT INTO {} AS tgt ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} s{} {} RETURNING {})"
                " SELECT s.__cdc_key FROM {} s WHERE NOT EXISTS (SELECT 1 FROM w WHERE {})"
            ).format(qualified(table), cols, s_cols, stg, where, conflict, returning, stg, same)
        )
        skipped = {str(r[0]) for r in cur.fetchall()}
        conn.execute(sql.SQL("DROP TABLE {}").format(stg))
        return len(ups) - len(skipped), skipped

    def _upsert_conditions(
        self, table: TableId, watermark: Position | None, has_tombstones: bool
    ) -> list[sql.Composable]:
        """Filters over the staged rows ``s``: no tombstone at or past the row, newer than the
        truncate watermark (values as literals)."""
        conditions: list[sql.Composable] = []
        if has_tombstones:
            conditions.append(
                sql.SQL(
                    "NOT EXISTS (SELECT 1 FROM {} t WHERE t.table_name = {} AND t.row_key = s.__cdc_key"
                    " AND (t.commit_lsn, t.lsn) >= (s.__cdc_commit_lsn, s.__cdc_lsn))"
                ).format(self._ctl("tombstones"), sql.Literal(str(table)))
            )
        if watermark is not None:
            conditions.append(
                sql.SQL("(s.__cdc_commit_lsn, s.__cdc_lsn) > ({}, {})").format(
                    sql.Literal(watermark.commit_lsn), sql.Literal(watermark.lsn)
                )
            )
        return conditions

    # -- delete

    def _delete(self, conn: Conn, shape: TableShape, changes: TableChanges, stale: set[str]) -> int:
        """Guarded deletes and tombstones of one table; returns rows deleted, adds to ``stale`` the
        keys whose tombstone was already at or past the delete (nothing to do: a replay)."""
        if shape.keyless:
            if self._table_versions is not None:
                return self._table_versions.delete_keyless(conn, shape, list(changes.deletes.values()), stale)
            return self._delete_keyless(conn, shape, list(changes.deletes.values()), stale)
        if self._table_versions is not None:
            deleted, moved = self._table_versions.delete_keyed(conn, shape, list(changes.deletes.values()))
            stale.update(set(changes.deletes) - moved)
            return deleted
        table = shape.table
        keys = list(shape.key_columns)
        stg = sql.Identifier("cdc_stg_delete")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stg, sql.SQL(", ").join(map(sql.Identifier, [*keys, *VERSION_COLUMNS])), qualified(table)
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN __cdc_key text").format(stg))
        copy_cols = sql.SQL(", ").join(map(sql.Identifier, [*keys, *VERSION_COLUMNS, "__cdc_key"]))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stg, copy_cols)) as copy:
            for d in changes.deletes.values():
                copy.write_row([*(d.key_values[k] for k in keys), d.position.commit_lsn, d.position.lsn, d.key])
        # Statistics let the planner probe the target's primary key instead of hash-joining a
        # full scan of it (36 ms -> 3 ms per batch on a 45k-row table, docs/benchmarks.md).
        conn.execute(sql.SQL("ANALYZE {}").format(stg))
        match = sql.SQL(" AND ").join(sql.SQL("t.{} = d.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in keys)
        cur = conn.execute(
            sql.SQL(
                "DELETE FROM {} t USING {} d WHERE {}"
                " AND (t.__cdc_commit_lsn, t.__cdc_lsn) < (d.__cdc_commit_lsn, d.__cdc_lsn)"
            ).format(qualified(table), stg, match)
        )
        stones = conn.execute(
            sql.SQL(
                "INSERT INTO {} AS tb (table_name, row_key, commit_lsn, lsn)"
                " SELECT %s, __cdc_key, __cdc_commit_lsn, __cdc_lsn FROM {}"
                " ON CONFLICT (table_name, row_key) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn,"
                " lsn = EXCLUDED.lsn, deleted_at = now()"
                " WHERE (tb.commit_lsn, tb.lsn) < (EXCLUDED.commit_lsn, EXCLUDED.lsn) RETURNING tb.row_key"
            ).format(self._ctl("tombstones"), stg),
            (str(table),),
        )
        # A row older than the delete exists only under an older tombstone (or none), so a delete
        # whose tombstone did not move also deleted nothing: stale.
        stale.update(set(changes.deletes) - {str(r[0]) for r in stones.fetchall()})
        conn.execute(sql.SQL("DROP TABLE {}").format(stg))
        return max(cur.rowcount, 0)

    def _delete_keyless(self, conn: Conn, shape: TableShape, deletes: list[Delete], stale: set[str]) -> int:
        """Delete one row equal to each ``before`` image, once per delete event (by its marker),
        and tombstone the removed row's id so a replayed insert of it is skipped."""
        table = shape.table
        done = 0
        for d in sorted(deletes, key=lambda x: x.position):
            seen = conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE table_name = %s AND row_key = %s").format(self._ctl("tombstones")),
                (str(table), d.key),
            ).fetchone()
            if seen:
                stale.add(d.key)
                continue
            match = whole_row_match(shape.columns, d.key_values)
            row = conn.execute(
                sql.SQL(
                    "DELETE FROM {t} WHERE {rid} = (SELECT {rid} FROM {t} WHERE {m}"
                    " AND (__cdc_commit_lsn, __cdc_lsn) < ({c}, {l}) ORDER BY {rid} LIMIT 1) RETURNING {rid}"
                ).format(
                    t=qualified(table),
                    rid=sql.Identifier(ROW_ID),
                    m=match,
                    c=sql.Literal(d.position.commit_lsn),
                    l=sql.Literal(d.position.lsn),
                )
            ).fetchone()
            markers = [d.key] + ([str(row[0])] if row else [])
            conn.cursor().executemany(
                sql.SQL(
                    "INSERT INTO {} (table_name, row_key, commit_lsn, lsn) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (table_name, row_key) DO NOTHING"
                ).format(self._ctl("tombstones")),
                [(str(table), m, d.position.commit_lsn, d.position.lsn) for m in markers],
            )
            done += 1 if row else 0
        return done


class _StallGuard:
    """Context manager: when the block runs longer than ``timeout_s``, shut the connection's
    socket down from a timer thread, so the blocked libpq call fails with a connection error
    (``fired`` tells the caller why). The kernel keeps a frozen server's TCP connection open and
    acknowledges our packets, so neither keepalives nor ``tcp_user_timeout`` would notice."""

    def __init__(self, conn: Conn, timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s
        self._timer: threading.Timer | None = None
        self._done = threading.Lock()
        self.fired = False

    def __enter__(self) -> _StallGuard:
        self._timer = threading.Timer(self._timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._done:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        with self._done:
            if self._timer is None:
                return
            self.fired = True
            try:
                fd = os.dup(self._conn.pgconn.socket)
            except (OSError, psycopg.Error):
                return
            sock = socket.socket(fileno=fd)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()
            log.warning("target stalled: connection dropped", timeout_s=self._timeout_s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
