"""The cutover part of the ``Target`` seam on MariaDB/MySQL and SQLite: the durable cutover state
in ``<control_schema>.cutover_state`` and the target's "sequences".

MariaDB/MySQL carry a serial or identity column's counter as the table's ``AUTO_INCREMENT``
(``ALTER TABLE ... AUTO_INCREMENT = n`` sets the next value; MariaDB KB "AUTO_INCREMENT");
free-standing sequences exist on MariaDB (10.3+, ``SETVAL``), not on MySQL. SQLite keeps an
``AUTOINCREMENT`` table's counter in ``sqlite_sequence`` (SQLite docs "autoinc.html"); other
rowid tables take ``max(rowid) + 1`` and need nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.core.events import TableId
from sinks.base import SequenceSpec
from sinks.sqlalchemy import ddl
from sinks.sqlalchemy.state_docs import StateDocuments

SQLITE = "sqlite"


class SqlAlchemyCutover:
    """:class:`sinks.base.TargetCutover` on a MariaDB/MySQL or SQLite target (see there)."""

    def __init__(self, engine: Engine, dialect: str, control_schema: str) -> None:
        self._engine = engine
        self._dialect = dialect
        self._docs = StateDocuments(
            engine, dialect, TableId(control_schema, "cutover_state"), "target cutover query", extra=("phase",)
        )
        self._run = self._docs.run

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        """The stored document of ``pipeline`` or None (also before the table exists)."""
        return self._docs.load(pipeline)

    def save_state(self, pipeline: str, phase: str, state: Mapping[str, Any]) -> None:
        """Replace ``pipeline``'s row in one committed transaction."""
        self._docs.save(pipeline, state, phase=phase)

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
