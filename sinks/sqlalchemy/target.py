"""The MariaDB/MySQL and SQLite implementation of the ``Target`` seam: the sink plus control-plane reads."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from pipeline.core.events import TableId
from sinks.base import TopicPartition, TransientSinkError
from sinks.sqlalchemy import ddl
from sinks.sqlalchemy.bulk import SqlAlchemyBulkLoad
from sinks.sqlalchemy.cutover import SqlAlchemyCutover
from sinks.sqlalchemy.sink import SqlAlchemySink, is_transient
from sinks.sqlalchemy.verification import SqlAlchemyVerification


class SqlAlchemyTarget(SqlAlchemySink):
    """A MariaDB/MySQL or SQLite target (see :class:`sinks.base.Target`)."""

    @property
    def kind(self) -> str:
        """``mysql`` (MariaDB too) or ``sqlite``."""
        return self.dialect

    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        """The heartbeat ``ts`` of ``source_name`` (stored in UTC without zone by the sink, returned
        aware), or None when the table or row does not exist yet. Raises TransientSinkError when
        the target is unreachable."""
        schema, name = ddl.physical(table, self.dialect)
        t = sa.table(name, sa.column("ts"), sa.column("source"), schema=schema)
        try:
            with self.engine.connect() as conn:
                value = conn.execute(sa.select(t.c.ts).where(t.c.source == source_name)).scalar()
        except sa.exc.DBAPIError as exc:
            if is_transient(exc):
                raise TransientSinkError(f"heartbeat read failed: {exc.orig}") from exc
            return None  # no such table yet
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def verification(self, statement_timeout_s: float = 600.0) -> SqlAlchemyVerification:
        """A verification session on the target's engine (see :class:`sinks.base.TargetVerification`);
        ``statement_timeout_s`` is not applied (no portable statement timeout)."""
        return SqlAlchemyVerification(self.engine, self.dialect, self._control_schema)

    def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int | None]) -> int:
        """Store (int) or delete (None) ``group``'s offset of each partition of ``offsets`` in one
        transaction (see :meth:`sinks.base.Target.set_offsets`); rows changed. Raises
        TransientSinkError when the target is unreachable."""
        self._ensure_control()
        stored = {tp: o for tp, o in offsets.items() if o is not None}
        dropped = [tp for tp, o in offsets.items() if o is None]
        t = self._control.offsets
        deleted = 0
        with self._transaction() as conn:
            self._store_offsets(conn, group, stored)
            for topic, partition in dropped:
                where = (t.c.consumer_group == group) & (t.c.topic == topic) & (t.c.kafka_partition == partition)
                deleted += int(conn.execute(sa.delete(t).where(where)).rowcount)
        return len(stored) + deleted

    def cutover(self) -> SqlAlchemyCutover:
        """The cutover state and sequences on the target's engine (see :class:`sinks.base.TargetCutover`)."""
        return SqlAlchemyCutover(self.engine, self.dialect, self._control_schema)

    def bulk_load(self) -> SqlAlchemyBulkLoad:
        """The bulk-load state, counts, truncation and table preparation on the target's engine
        (see :class:`sinks.base.TargetBulkLoad`)."""
        return SqlAlchemyBulkLoad(self, self._control_schema)
