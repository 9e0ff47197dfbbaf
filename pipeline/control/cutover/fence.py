"""The write fence on the source: ``default_transaction_read_only`` for the application roles
(or the whole database, the pipeline's role exempt), then the termination of their open sessions;
or a user command. The prior settings are read and returned BEFORE anything changes, so the
caller stores them durably and an unfence restores exactly what was there.

PostgreSQL facts relied on (docs "ALTER ROLE", "ALTER DATABASE", "pg_db_role_setting",
"default_transaction_read_only", "pg_stat_activity"): a per-database role setting beats a
database setting, which beats the server's; settings apply to sessions started afterwards,
hence the termination of those already open; ``backend_type = 'client backend'`` excludes
walsenders (the replication connection) and background workers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from pipeline.control.cutover.state import FenceRecord, SavedSetting
from pipeline.core.settings.models import FenceSettings, SourceSettings

SETTING = "default_transaction_read_only"


class FenceError(RuntimeError):
    """The fence (or unfence) could not be applied: a refused statement, a command that failed
    or timed out. The message says which step."""


def fence_plan(
    database: str, pipeline_user: str, roles: Sequence[str], overrides: Sequence[str] = ()
) -> list[tuple[str | None, str]]:
    """``(role or None for the database, value)`` to set, in order (pure): each role ``on``; with
    no roles, every role of ``overrides`` ``on`` (roles with a setting of their own, which would
    beat the database's), the pipeline's role ``off`` (so it is exempt), then the database ``on``.
    Raises FenceError when ``roles`` names the pipeline's role (that would stop the drain's
    heartbeat)."""
    if pipeline_user in roles:
        raise FenceError(f"cutover.fence.roles: {pipeline_user!r} is the pipeline's own role; it is never fenced")
    if roles:
        return [(role, "on") for role in roles]
    own = [(role, "on") for role in dict.fromkeys(overrides) if role != pipeline_user]
    return [*own, (pipeline_user, "off"), (None, "on")]  # exempt first: no pipeline session starts read-only


def resolve_plan(
    conn: psycopg.Connection[Any], database: str, pipeline_user: str, roles: Sequence[str]
) -> list[tuple[str | None, str]]:
    """The fence plan for the source as it is now: ``fence_plan`` over ``roles`` and, through
    ``pg_auth_members``, every role that is a member of one of them at any depth (settings are
    not inherited: a group role's setting reaches none of its members' sessions), the pipeline's
    role excepted; for a whole-database fence, the roles with their own
    ``default_transaction_read_only`` (``pg_db_role_setting`` for this database or all
    databases), which a database setting does not override. Raises FenceError for a role that
    does not exist, psycopg.Error."""
    for role in roles:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            raise FenceError(f"cutover.fence.roles: role {role!r} does not exist on the source")
    if pipeline_user in roles:
        return fence_plan(database, pipeline_user, roles)
    if roles:
        rows = conn.execute(
            "WITH RECURSIVE m(oid) AS (SELECT oid FROM pg_roles WHERE rolname = ANY(%s)"
            " UNION SELECT a.member FROM pg_auth_members a JOIN m ON a.roleid = m.oid)"
            " SELECT r.rolname FROM m JOIN pg_roles r ON r.oid = m.oid WHERE r.rolname <> %s ORDER BY 1",
            (list(roles), pipeline_user),
        ).fetchall()
        members = [_first_value(r) for r in rows if _first_value(r) not in roles]
        return fence_plan(database, pipeline_user, [*roles, *members])
    rows = conn.execute(
        "SELECT DISTINCT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
        " WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = %s)) ORDER BY 1",
        (database,),
    ).fetchall()
    own = [_first_value(r) for r in rows if parse_setconfig(_values(r)[1]) is not None]
    return fence_plan(database, pipeline_user, roles, own)


def fenced_roles(plan: Sequence[tuple[str | None, str]], whole_database: bool) -> list[str]:
    """The roles whose sessions a fence of ``plan`` ends (pure): the roles set ``on``, or none
    (meaning every role but the pipeline's) for a whole-database fence."""
    return [] if whole_database else [role for role, value in plan if role is not None and value == "on"]


def _first_value(row: Any) -> str:
    return str(_values(row)[0])


def set_statement(database: str, role: str | None, value: str | None) -> sql.Composed:
    """``ALTER ROLE r IN DATABASE d SET default_transaction_read_only = v`` (``ALTER DATABASE d
    SET ...`` when ``role`` is None); ``value`` None RESETs it (pure; identifiers quoted)."""
    head = (
        sql.SQL("ALTER DATABASE {d}").format(d=sql.Identifier(database))
        if role is None
        else sql.SQL("ALTER ROLE {r} IN DATABASE {d}").format(r=sql.Identifier(role), d=sql.Identifier(database))
    )
    if value is None:
        return sql.SQL("{head} RESET {s}").format(head=head, s=sql.Identifier(SETTING))
    return sql.SQL("{head} SET {s} = {v}").format(head=head, s=sql.Identifier(SETTING), v=sql.Literal(value))


def parse_setconfig(setconfig: Sequence[str] | None) -> str | None:
    """The ``default_transaction_read_only`` value in a ``pg_db_role_setting.setconfig`` array
    (``['name=value', ...]``), or None when it is not set (pure)."""
    for item in setconfig or ():
        name, _, value = item.partition("=")
        if name.strip().lower() == SETTING:
            return value
    return None


def read_prior(
    conn: psycopg.Connection[Any], database: str, plan: Sequence[tuple[str | None, str]]
) -> list[SavedSetting]:
    """The current per-database value of every setting ``plan`` will change
    (``pg_db_role_setting``; ``setrole = 0`` is the database-level row). Raises FenceError for a
    role that does not exist, psycopg.Error."""
    saved = []
    for role, _ in plan:
        if role is not None and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            raise FenceError(f"cutover.fence.roles: role {role!r} does not exist on the source")
        row = conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = %s AND s.setrole = COALESCE((SELECT oid FROM pg_roles WHERE rolname = %s), 0)",
            (database, role),
        ).fetchone()
        config = None if row is None else _first(row)
        saved.append(SavedSetting(database, role, parse_setconfig(config)))
    return saved


def _first(row: Any) -> Any:
    return row["setconfig"] if isinstance(row, dict) else row[0]


def sessions_query(roles: Sequence[str], pipeline_user: str) -> tuple[sql.Composed, list[Any]]:
    """The ``pg_stat_activity`` query of the client backends a fence ends (pure): of ``roles`` (or
    of every role but ``pipeline_user``) in the current database, never our own backend."""
    where = [
        sql.SQL("datname = current_database()"),
        sql.SQL("backend_type = 'client backend'"),
        sql.SQL("pid <> pg_backend_pid()"),
        sql.SQL("usename IS DISTINCT FROM %s"),
    ]
    params: list[Any] = [pipeline_user]
    if roles:
        where.append(sql.SQL("usename = ANY(%s)"))
        params.append(list(roles))
    query = sql.SQL(
        "SELECT pid, usename, application_name, client_addr::text AS client_addr, state"
        " FROM pg_stat_activity WHERE {w} ORDER BY pid"
    ).format(w=sql.SQL(" AND ").join(where))
    return query, params


def fenced_sessions(conn: psycopg.Connection[Any], roles: Sequence[str], pipeline_user: str) -> list[dict[str, Any]]:
    """The sessions a fence would terminate now (``cutover plan``). Raises psycopg.Error."""
    query, params = sessions_query(roles, pipeline_user)
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, _values(r), strict=True)) for r in cur.fetchall()]


def _values(row: Any) -> list[Any]:
    return list(row.values()) if isinstance(row, dict) else list(row)


def apply_fence(
    conn: psycopg.Connection[Any],
    source: SourceSettings,
    fence: FenceSettings,
    record: FenceRecord,
    plan: Sequence[tuple[str | None, str]] = (),
) -> None:
    """Apply ``record``'s fence (read_only: ``plan``, from :func:`resolve_plan`, then the
    termination of the fenced roles' sessions when ``fence.terminate_sessions``; command:
    ``fence.command``). Fills ``record.terminated`` and sets ``record.applied``. Raises FenceError."""
    if fence.method == "command":
        run_command(fence.command or [], fence.timeout_s, "fence command")
        record.applied = True
        return
    try:
        for role, value in plan:
            conn.execute(set_statement(source.database, role, value))
        record.applied = True
        if fence.terminate_sessions:
            query, params = sessions_query(fenced_roles(plan, not fence.roles), source.user)
            terminate = sql.SQL("SELECT s.*, pg_terminate_backend(s.pid) AS terminated FROM ({q}) s").format(q=query)
            cur = conn.execute(terminate, params)
            names = [d.name for d in cur.description or []]
            record.terminated = [dict(zip(names, _values(r), strict=True)) for r in cur.fetchall()]
    except psycopg.Error as exc:
        raise FenceError(f"fence failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc


def lift_fence(conn: psycopg.Connection[Any], fence: FenceSettings, record: FenceRecord) -> None:
    """Restore every saved prior setting of ``record`` (read_only), or run ``fence.unfence_command``.
    Idempotent. Raises FenceError."""
    if record.method == "command":
        run_command(fence.unfence_command or [], fence.timeout_s, "unfence command")
        return
    try:
        for saved in record.saved:
            conn.execute(set_statement(saved.database, saved.role, saved.value))
    except psycopg.Error as exc:
        raise FenceError(f"unfence failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc


def run_command(argv: Sequence[str], timeout_s: float, what: str) -> None:
    """Run ``argv`` (no shell) within ``timeout_s`` seconds; exit 0 is success. Raises FenceError."""
    if not argv:
        raise FenceError(f"{what}: not configured")
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FenceError(f"{what} {argv[0]!r} failed: {exc}") from exc
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        raise FenceError(f"{what} {argv[0]!r} exited {done.returncode}: {tail}")


def current_lsn(conn: psycopg.Connection[Any]) -> str:
    """``pg_current_wal_lsn()`` as text (the fence LSN when taken after the fence). Raises psycopg.Error."""
    row = conn.execute("SELECT pg_current_wal_lsn()::text AS lsn").fetchone()
    value = None if row is None else (row["lsn"] if isinstance(row, dict) else row[0])
    return str(value)
