"""The PostgreSQL implementation of the ``Target`` seam: the sink plus the control-plane reads."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pipeline.core.events import TableId
from sinks.base import TopicPartition, TransientSinkError
from sinks.postgres.bulk import PostgresBulkLoad
from sinks.postgres.cutover import PostgresCutover
from sinks.postgres.sink import PostgresSink
from sinks.postgres.verification import PostgresVerification

READ_TIMEOUT_MS = 10_000
"""``statement_timeout`` of the control-plane reads (ms): a frozen target fails them instead of hanging."""


class PostgresTarget(PostgresSink):
    """A PostgreSQL target (see :class:`sinks.base.Target`).

    Control-plane reads use a second, autocommit, read-only session, so they never wait on or
    take part in an apply transaction.
    """

    kind = "postgresql"

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        self._read: psycopg.Connection[dict[str, Any]] | None = None

    def _reader(self) -> psycopg.Connection[dict[str, Any]]:
        if self._read is None or self._read.closed or self._read.broken:
            try:
                self._read = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=f"{self._application_name}:reads",
                    options=f"-c default_transaction_read_only=on -c statement_timeout={READ_TIMEOUT_MS}",
                    row_factory=dict_row,
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"cannot connect to the target: {str(exc).strip().splitlines()[0]}") from exc
        return self._read

    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        """The ``ts`` of ``source_name``'s row in the heartbeat table ``table`` (cast to
        ``timestamptz``, so a table that stored it as ISO text works too); None when the table
        or row does not exist yet. Raises TransientSinkError when the target is unreachable."""
        query = sql.SQL("SELECT ({ts})::timestamptz AS ts FROM {table} WHERE {src} = %s").format(
            ts=sql.Identifier("ts"), table=sql.Identifier(table.schema, table.table), src=sql.Identifier("source")
        )
        try:
            row = self._reader().execute(query, (source_name,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.OperationalError as exc:
            self._close_reader()
            raise TransientSinkError(f"heartbeat read failed: {str(exc).strip().splitlines()[0]}") from exc
        ts = None if row is None else row["ts"]
        if not isinstance(ts, datetime):
            return None
        return ts.astimezone(UTC)

    def verification(self, statement_timeout_s: float = 600.0) -> PostgresVerification:
        """A verification session of its own (see :class:`sinks.base.TargetVerification`)."""
        return PostgresVerification(
            self._conninfo, f"{self._application_name}:verify", self._control, statement_timeout_s
        )

    def _close_reader(self) -> None:
        if self._read is not None:
            with contextlib.suppress(psycopg.Error):
                self._read.close()
        self._read = None

    def close(self) -> None:
        """Close both sessions."""
        self._close_reader()
        super().close()

    def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int | None]) -> int:
        """Store (int) or delete (None) ``group``'s offset of each partition of ``offsets`` in one
        transaction on the write session (see :meth:`sinks.base.Target.set_offsets`); rows changed.
        Raises TransientSinkError when the target is unreachable."""
        stored = {tp: o for tp, o in offsets.items() if o is not None}
        dropped = [tp for tp, o in offsets.items() if o is None]
        with self._transaction() as conn:
            self._ensure_control(conn)
            self._store_offsets(conn, group, stored)
            deleted = 0
            for topic, partition in dropped:
                cur = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE consumer_group = %s AND topic = %s AND kafka_partition = %s").format(
                        self._ctl("offsets")
                    ),
                    (group, topic, partition),
                )
                deleted += cur.rowcount
        return len(stored) + deleted

    def cutover(self) -> PostgresCutover:
        """The cutover state and sequences on a session of its own (see :class:`sinks.base.TargetCutover`)."""
        return PostgresCutover(self._conninfo, f"{self._application_name}:cutover", self._control)

    def bulk_load(self) -> PostgresBulkLoad:
        """The bulk-load side on a session of its own (see :class:`sinks.base.TargetBulkLoad`)."""
        return PostgresBulkLoad(self._conninfo, f"{self._application_name}:bulk", self._control)
