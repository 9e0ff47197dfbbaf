"""The cutover part of the ``Target`` seam on MariaDB/MySQL and SQLite: the durable cutover state
in ``<control_schema>.cutover_state`` and the target's "sequences".

MariaDB/MySQL carry a serial or identity column's counter as the table's ``AUTO_INCREMENT``
(``ALTER TABLE ... AUTO_INCREMENT = n`` sets the next value; MariaDB KB "AUTO_INCREMENT");
free-standing sequences exist on MariaDB (10.3+, ``SETVAL``), not on MySQL. SQLite keeps an
``AUTOINCREMENT`` table's counter in ``sqlite_sequence`` (SQLite docs "autoinc.html"); other
rowid tables take ``max(rowid) + 1`` and need nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.core.events import TableId
from sinks.base import SequenceSpec
from sinks.sqlalchemy import ddl
from sinks.sqlalchemy.sink import run_committed

SQLITE = "sqlite"


class SqlAlchemyCutover:
    """:class:`sinks.base.TargetCutover` on a MariaDB/MySQL or SQLite target (see there)."""

    def __init__(self, engine: Engine, dialect: str, control_schema: str) -> None:
        self._engine = engine
        self._dialect = dialect
        schema, name = ddl.physical(TableId(control_schema, "cutover_state"), dialect)
        self._table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("pipeline", sa.String(255), primary_key=True),
            sa.Column("phase", sa.String(64), nullable=False),
            sa.Column(
                "state", sa.Text().with_variant(sa.dialects.mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False
            ),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            schema=schema,
        )
        self._ready = False

    def _run(self, work: Any) -> Any:
        """``work(conn)`` in one committed transaction (:func:`~sinks.sqlalchemy.sink.run_committed`)."""
        return run_committed(self._engine, work, "target cutover query")

    def _ensure_table(self) -> None:
        if self._ready:
            return

        def create(conn: Connection) -> None:
            if self._table.schema is not None:
                conn.execute(sa.schema.CreateSchema(self._table.schema, if_not_exists=True))
            self._table.create(conn, checkfirst=True)

        self._run(create)
        self._ready = True

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored document of ``pipeline`` or None (also before the table exists)."""
        self._ensure_table()
        t = self._table
        text = self._run(lambda conn: conn.execute(sa.select(t.c.state).where(t.c.pipeline == pipeline)).scalar())
        return None if text is None else dict(json.loads(text))

    def save_state(self, pipeline: str, phase: str, state: Mapping[str, Any]) -> None:
        """Replace ``pipeline``'s row in one committed transaction."""
        self._ensure_table()
        t = self._table
        row = {
            "pipeline": pipeline,
            "phase": phase,
            "state": json.dumps(dict(state), default=str),
            "updated_at": datetime.now(UTC).replace(tzinfo=None),
        }

        def save(conn: Connection) -> None:
            conn.execute(sa.delete(t).where(t.c.pipeline == pipeline))
            conn.execute(sa.insert(t), [row])

        self._run(save)

    def _physical(self, spec: SequenceSpec) -> tuple[str | None, str]:
        if spec.table is None:
            return ddl.physical(spec.name, self._dialect)
        return ddl.physical(spec.table, self._dialect)

    def read_sequence(self, spec: SequenceSpec) -> int | None:
        """MariaDB/MySQL: ``AUTO_INCREMENT - 1`` of the table (``information_schema.TABLES``); SQLite:
        ``sqlite_sequence.seq``; free-standing: MariaDB's ``lastval`` is per session, so None."""
        if spec.table is None:
            return None
        schema, name = self._physical(spec)
        if self._dialect == SQLITE:
            query = sa.text("SELECT seq FROM sqlite_sequence WHERE name = :n")
            params: dict[str, Any] = {"n": name}
        else:
            query = sa.text(
                "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = :s AND TABLE_NAME = :n"
            )
            params = {"s": schema, "n": name}
        try:
            value = self._run(lambda conn: conn.execute(query, params).scalar())
        except sa.exc.DBAPIError:
            return None  # no sqlite_sequence: no AUTOINCREMENT table at all
        if value is None:
            return None
        return int(value) if self._dialect == SQLITE else int(value) - 1

    def set_sequence(self, spec: SequenceSpec, value: int) -> str:
        """Make the next generated value greater than ``value`` (see the module docstring);
        returns what was set. Raises ValueError for a free-standing sequence on SQLite."""
        schema, name = self._physical(spec)
        prep = self._engine.dialect.identifier_preparer
        qualified = prep.quote(name) if schema is None else f"{prep.quote_schema(schema)}.{prep.quote(name)}"
        if spec.table is None:
            if self._dialect == SQLITE:
                raise ValueError(f"sequence {spec.name}: SQLite has no sequences")
            statements = [f"CREATE SEQUENCE IF NOT EXISTS {qualified}", f"SELECT SETVAL({qualified}, {int(value)})"]
            self._run(lambda conn: [conn.execute(sa.text(s)) for s in statements])
            return f"sequence {schema}.{name}"
        if self._dialect == SQLITE:
            return self._set_sqlite(name, value)
        self._run(lambda conn: conn.execute(sa.text(f"ALTER TABLE {qualified} AUTO_INCREMENT = {int(value) + 1}")))
        return f"{schema}.{name} AUTO_INCREMENT"

    def _set_sqlite(self, name: str, value: int) -> str:
        def update(conn: Connection) -> str:
            has = conn.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")).scalar()
            if not has:
                return f"{name}: rowid table (next id is max(rowid) + 1)"
            done = conn.execute(
                sa.text("UPDATE sqlite_sequence SET seq = max(seq, :v) WHERE name = :n"), {"v": value, "n": name}
            )
            if done.rowcount == 0:
                conn.execute(
                    sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:n, :v)"), {"v": value, "n": name}
                )
            return f"{name} sqlite_sequence"

        result: str = self._run(update)
        return result

    def close(self) -> None:
        """Nothing of its own to release (the target's engine is shared)."""
