"""The bulk-load part of the ``Target`` seam on MariaDB/MySQL and SQLite: the load state in
``<control_schema>.bulk_loads`` (one JSON document per pipeline, like ``cutover_state``), row
counts, truncation of loaded tables with their bookkeeping, and target tables created by the
sink's own DDL. There is no COPY here: the bulk load's rows path writes through the sink."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.core.batch import TableChanges
from pipeline.core.events import Column, TableId
from sinks.base import CopyWriter, PreparedTable
from sinks.sqlalchemy import ddl
from sinks.sqlalchemy.state_docs import StateDocuments

if TYPE_CHECKING:
    from sinks.sqlalchemy.sink import SqlAlchemySink


class SqlAlchemyBulkLoad:
    """:class:`sinks.base.TargetBulkLoad` on a MariaDB/MySQL or SQLite target (see there); uses
    the target sink's engine and DDL."""

    supports_copy = False

    def __init__(self, sink: SqlAlchemySink, control_schema: str) -> None:
        self._sink = sink
        self._dialect = sink.dialect
        self._docs = StateDocuments(
            sink.engine, sink.dialect, TableId(control_schema, "bulk_loads"), "target bulk-load query"
        )
        self._run = self._docs.run

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored document of ``pipeline`` or None."""
        return self._docs.load(pipeline)

    def save_state(self, pipeline: str, state: Mapping[str, Any]) -> None:
        """Replace ``pipeline``'s document in one committed transaction."""
        self._docs.save(pipeline, state)

    def clear_state(self, pipeline: str) -> None:
        """Delete ``pipeline``'s document (none is fine)."""
        self._docs.clear(pipeline)

    def _exists(self, conn: Connection, table: TableId) -> bool:
        schema, name = ddl.physical(table, self._dialect)
        return bool(sa.inspect(conn).has_table(name, schema=schema))

    def row_count(self, table: TableId) -> int:
        """``count(*)`` of ``table``; 0 when it does not exist."""
        schema, name = ddl.physical(table, self._dialect)

        def count(conn: Connection) -> int:
            if not self._exists(conn, table):
                return 0
            t = sa.table(name, schema=schema)
            return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0)

        result: int = self._run(count)
        return result

    def truncate(self, tables: Sequence[TableId]) -> None:
        """Delete every row of ``tables`` (absent ones ignored) and their tombstones, truncation
        marks and row versions, in one transaction. ``DELETE``, not ``TRUNCATE``: MariaDB's
        TRUNCATE commits implicitly (MariaDB "TRUNCATE TABLE") and SQLite has none."""
        self._sink._ensure_control()
        control = self._sink._control

        def wipe(conn: Connection) -> None:
            for table in tables:
                if self._exists(conn, table):
                    schema, name = ddl.physical(table, self._dialect)
                    conn.execute(sa.delete(sa.table(name, schema=schema)))
                for side in (control.tombstones, control.truncations, control.row_versions):
                    conn.execute(sa.delete(side).where(side.c.table_name == str(table)))

        self._run(wipe)
        self._sink._forget()

    def prepare_table(self, table: TableId, columns: Sequence[Column], key_columns: Sequence[str]) -> PreparedTable:
        """Create ``table`` (or evolve it) exactly as the sink does for a first batch of reads,
        recording its columns in ``known_columns``, so the streaming path finds it as its own.
        Raises TargetSchemaError / BatchRejectedError as the sink would."""
        self._sink._ensure_control()
        changes = TableChanges(table, table, tuple(key_columns), tuple(columns))
        shape = self._sink._shape_for(changes)
        extra = (*ddl.VERSION_COLUMNS, ddl.ROW_ID) if shape.keyless else ddl.VERSION_COLUMNS
        data = {c: t for c, t in shape.columns.items() if not c.startswith(ddl.OWN_PREFIX)}
        return PreparedTable(table, data, shape.keyless, tuple(extra))

    def copy_in(self, table: TableId, columns: Sequence[str], binary: bool) -> AbstractContextManager[CopyWriter]:
        """Not on this backend (:attr:`supports_copy` is False): raises NotImplementedError."""
        raise NotImplementedError(f"{self._dialect} targets have no COPY; the bulk load uses the rows path")

    def close(self) -> None:
        """Nothing of its own to release (the target's engine is shared)."""
