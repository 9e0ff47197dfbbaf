"""One JSON document per pipeline in a control table of a MariaDB/MySQL or SQLite target: the
durable state of the cutover (``cutover_state``) and of the bulk load (``bulk_loads``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.core.events import TableId
from sinks.sqlalchemy import ddl
from sinks.sqlalchemy.sink import run_committed


class StateDocuments:
    """``<control_schema>.<table>(pipeline PK, <extra string columns>, state JSON text, updated_at)``,
    created on first use (schema too). Every call is one committed transaction; a transient
    driver error raises TransientSinkError naming ``what``."""

    def __init__(self, engine: Engine, dialect: str, table: TableId, what: str, extra: tuple[str, ...] = ()) -> None:
        self._engine = engine
        self._what = what
        schema, name = ddl.physical(table, dialect)
        self.table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("pipeline", sa.String(255), primary_key=True),
            *(sa.Column(column, sa.String(64), nullable=False) for column in extra),
            sa.Column(
                "state", sa.Text().with_variant(sa.dialects.mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False
            ),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            schema=schema,
        )
        self._ready = False

    def run(self, work: Any) -> Any:
        """``work(conn)`` in one committed transaction (:func:`~sinks.sqlalchemy.sink.run_committed`)."""
        return run_committed(self._engine, work, self._what)

    def _ensure(self) -> None:
        if self._ready:
            return

        def create(conn: Connection) -> None:
            ddl.ensure_schema(conn, self.table.schema)
            self.table.create(conn, checkfirst=True)

        self.run(create)
        self._ready = True

    def load(self, pipeline: str) -> dict[str, Any] | None:
        """The stored document of ``pipeline``, or None (also before the table exists)."""
        self._ensure()
        t = self.table
        text = self.run(lambda conn: conn.execute(sa.select(t.c.state).where(t.c.pipeline == pipeline)).scalar())
        return None if text is None else dict(json.loads(text))

    def save(self, pipeline: str, state: Mapping[str, Any], **extra: str) -> None:
        """Replace ``pipeline``'s row: the document (JSON, ``str()`` for other values), the extra
        columns given by name, ``updated_at`` now (UTC, naive)."""
        self._ensure()
        t = self.table
        row = {
            "pipeline": pipeline,
            **extra,
            "state": json.dumps(dict(state), default=str),
            "updated_at": datetime.now(UTC).replace(tzinfo=None),
        }

        def save(conn: Connection) -> None:
            conn.execute(sa.delete(t).where(t.c.pipeline == pipeline))
            conn.execute(sa.insert(t), [row])

        self.run(save)

    def clear(self, pipeline: str) -> None:
        """Delete ``pipeline``'s row (none is fine)."""
        self._ensure()
        t = self.table
        self.run(lambda conn: conn.execute(sa.delete(t).where(t.c.pipeline == pipeline)))
