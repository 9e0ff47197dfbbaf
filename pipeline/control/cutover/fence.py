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


def fence_plan(database: str, pipeline_user: str, roles: Sequence[str]) -> list[tuple[str | None, str]]:
    """``(role or None for the database, value)`` to set, in order (pure): each role ``on``; with
    no roles, the pipeline's role ``off`` (so it is exempt), then the database ``on``. Raises
    FenceError when ``roles`` names the pipeline's role (that would stop the drain's heartbeat)."""
    if pipeline_user in roles:
        raise FenceError(f"cutover.fence.roles: {pipeline_user!r} is the pipeline's own role; it is never fenced")
    if roles:
        return [(role, "on") for role in roles]
    return [(pipeline_user, "off"), (None, "on")]  # exempt first: no pipeline session starts read-only


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
    conn: psycopg.Connection[Any], source: SourceSettings, fence: FenceSettings, record: FenceRecord
) -> None:
    """Apply ``record``'s fence (read_only: the planned settings, then the sessions' termination
    when ``fence.terminate_sessions``; command: ``fence.command``). Fills ``record.terminated``
    and sets ``record.applied``. Raises FenceError."""
    if fence.method == "command":
        run_command(fence.command or [], fence.timeout_s, "fence command")
        record.applied = True
        return
    try:
        for role, value in fence_plan(source.database, source.user, fence.roles):
            conn.execute(set_statement(source.database, role, value))
        record.applied = True
        if fence.terminate_sessions:
            query, params = sessions_query(fence.roles, source.user)
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
