"""The read_only fence against the real source cluster, for the two ways a session used to escape
it: a role reached only through a group role named in ``fence.roles`` (settings are not
inherited), and, in a whole-database fence, a role with its own ``default_transaction_read_only
= off`` (a role setting beats the database's). Each new session of those roles must start read
only once fenced, and the unfence must restore exactly what was there."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from pipeline.control.cutover.fence import apply_fence, lift_fence, read_prior, resolve_plan
from pipeline.control.cutover.state import FenceRecord
from pipeline.core.settings.models import FenceSettings, SourceSettings
from pipeline.localstack import LocalStack
from tests.conftest import Databases

PASSWORD = "pw-fence-test"


@pytest.fixture
def roles(local_stack: LocalStack, databases: Databases, unique: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """``group`` (NOLOGIN), ``member`` (LOGIN, in ``group`` through ``mid``), ``loner`` (LOGIN, with
    a role-wide ``default_transaction_read_only = off``) and ``pipeline`` (LOGIN, a member of
    ``group`` too: the pipeline's role is never fenced); all dropped after the test."""
    names = {k: unique(k) for k in ("group", "mid", "member", "loner", "pipeline")}
    ddl = [
        "CREATE ROLE {group} NOLOGIN",
        "CREATE ROLE {mid} NOLOGIN IN ROLE {group}",
        "CREATE ROLE {member} LOGIN PASSWORD {pw} IN ROLE {mid}",
        "CREATE ROLE {loner} LOGIN PASSWORD {pw}",
        "CREATE ROLE {pipeline} LOGIN PASSWORD {pw} IN ROLE {group}",
        "ALTER ROLE {loner} SET default_transaction_read_only = off",
    ]
    idents = {k: sql.Identifier(v) for k, v in names.items()}
    with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
        for statement in ddl:
            conn.execute(sql.SQL(statement).format(pw=sql.Literal(PASSWORD), **idents))
    yield names
    with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
        for name in ("member", "loner", "pipeline", "mid", "group"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(idents[name]))


def _read_only(stack: LocalStack, database: str, role: str) -> str:
    s = stack.settings
    dsn = f"postgresql://{role}:{PASSWORD}@{s.host}:{s.source_pg_port}/{database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW default_transaction_read_only").fetchone()
    assert row is not None
    return str(row[0])


def _fence(stack: LocalStack, db: Databases, pipeline_role: str, roles: list[str]) -> FenceRecord:
    s = stack.settings
    source = SourceSettings(
        name="src", host=s.host, port=s.source_pg_port, database=db.name, user=pipeline_role, tables=["public.t"]
    )
    fence = FenceSettings(roles=roles, terminate_sessions=True)
    record = FenceRecord("read_only", roles)
    with psycopg.connect(db.source_dsn, autocommit=True) as conn:
        plan = resolve_plan(conn, db.name, pipeline_role, roles)
        record.saved = read_prior(conn, db.name, plan)
        apply_fence(conn, source, fence, record, plan)
    return record


def _unfence(db: Databases, record: FenceRecord) -> None:
    with psycopg.connect(db.source_dsn, autocommit=True) as conn:
        lift_fence(conn, FenceSettings(roles=record.roles), record)


def test_a_group_role_fences_its_members_at_any_depth_but_never_the_pipeline(
    local_stack: LocalStack, databases: Databases, roles: dict[str, str]
) -> None:
    assert _read_only(local_stack, databases.name, roles["member"]) == "off"
    record = _fence(local_stack, databases, roles["pipeline"], [roles["group"]])
    assert _read_only(local_stack, databases.name, roles["member"]) == "on"
    assert _read_only(local_stack, databases.name, roles["pipeline"]) == "off"
    assert {s.role for s in record.saved} == {roles["group"], roles["mid"], roles["member"]}
    _unfence(databases, record)
    assert _read_only(local_stack, databases.name, roles["member"]) == "off"


def test_a_whole_database_fence_also_holds_a_role_with_its_own_setting(
    local_stack: LocalStack, databases: Databases, roles: dict[str, str]
) -> None:
    assert _read_only(local_stack, databases.name, roles["loner"]) == "off"
    record = _fence(local_stack, databases, "postgres", [])  # the stack's superuser is the pipeline's role here
    assert _read_only(local_stack, databases.name, roles["loner"]) == "on"
    assert _read_only(local_stack, databases.name, roles["member"]) == "on"  # the database setting
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
    _unfence(databases, record)
    assert _read_only(local_stack, databases.name, roles["loner"]) == "off"  # its role-wide setting again
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = %s",
            (databases.name,),
        ).fetchone()
    assert left == (0,)
