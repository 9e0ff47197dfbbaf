"""The ``each_target`` fixture: one real :class:`sinks.base.Target` per backend (SQLite file,
the stack's MariaDB, the stack's PostgreSQL target) with a fresh control schema, dropped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pipeline.localstack import LocalStack
from sinks.base import Target
from sinks.postgres.target import PostgresTarget
from sinks.sqlalchemy.target import SqlAlchemyTarget
from tests.conftest import Databases


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def each_target(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Target]:
    """A Target of each backend in turn; MariaDB's control database (and its ``_data`` twin) are dropped after."""
    control = unique("ctl")
    if request.param == "sqlite":
        t: Target = SqlAlchemyTarget(make_url(f"sqlite:///{tmp_path / 'target.db'}"), control_schema=control)
        yield t
        t.close()
        return
    if request.param == "postgresql":
        databases: Databases = request.getfixturevalue("databases")
        t = PostgresTarget(databases.target_dsn, control_schema=control)
        yield t
        t.close()
        return
    stack: LocalStack = request.getfixturevalue("local_stack")
    t = SqlAlchemyTarget(make_url(stack.settings.mariadb_url()), control_schema=control)
    yield t
    t.close()
    conn = stack.mariadb.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{control}`")
        cur.execute(f"DROP DATABASE IF EXISTS `{control}_data`")
    conn.close()
