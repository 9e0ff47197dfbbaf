"""Source-database checks and preparation for the Debezium PostgreSQL connector (psycopg 3).

:func:`check` answers "can Debezium capture these tables from this database, as configured?"
with one :class:`CheckResult` per concern, each failed one carrying the exact SQL or setting
that fixes it. :func:`prepare` creates what the connector configuration
(:mod:`connectors.debezium`) expects, idempotently: the control schema, the heartbeat table,
this source's signal table and the publication for exactly the captured tables plus those two.

Facts relied on (PostgreSQL 15 documentation unless noted):

- logical decoding needs ``wal_level = logical``; it, ``max_replication_slots`` and
  ``max_wal_senders`` only change with a server restart ("Replication" > "Sending Servers");
- ``max_slot_wal_keep_size = -1`` (the default) lets a slot retain WAL without limit: a stopped
  or lagging connector can fill the disk; with a limit the slot is invalidated instead
  (``pg_replication_slots.wal_status = 'lost'``) and the connector must snapshot again;
- a replication connection needs the ``REPLICATION`` attribute (or superuser) ("Debezium
  connector for PostgreSQL" > "Setting up permissions"); snapshots need ``SELECT``;
- a table in a publication that publishes UPDATE/DELETE must have a replica identity (a
  primary key, ``USING INDEX`` or ``FULL``), otherwise *UPDATE and DELETE on it fail on the
  source* ("Logical Replication" > "Publication"); so :func:`prepare` refuses such a table;
- with ``publication.autocreate.mode=disabled`` Debezium uses the publication as it is
  (Debezium docs, ``publication.autocreate.mode``), and it only sees changes of tables in it,
  the heartbeat table included ("WAL disk space consumption"); the source signaling channel
  reads the signal table from the WAL too ("Signaling and notifications").

Every identifier is composed with :mod:`psycopg.sql`; nothing is formatted into SQL by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from connectors.debezium import (
    Redactor,
    TableRef,
    captured_tables,
    heartbeat_table,
    publication_tables,
    signal_table,
)
from connectors.slots import SlotState, slot_state
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import SourceSettings

log = get_logger("connectors.source_prep")

PUBLISH_ALL = "insert, update, delete, truncate"
RESTART = "then restart PostgreSQL (this setting needs a restart)"

Conn = psycopg.Connection[dict[str, Any]]


class PrepareError(Exception):
    """:func:`prepare` cannot proceed; the message says why and how to fix it (no secrets)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One source check.

    ``ok`` False is a failure (the connector would not work, or would lose or break data);
    ``warning`` marks a passed check with a risk worth reading. ``fix`` is the exact SQL or
    setting to apply (several lines possible), None when nothing is needed.
    """

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False

    @property
    def level(self) -> Literal["PASS", "WARN", "FAIL"]:
        """``PASS``, ``WARN`` or ``FAIL`` for display."""
        if not self.ok:
            return "FAIL"
        return "WARN" if self.warning else "PASS"


@dataclass(frozen=True, slots=True)
class Step:
    """One statement :func:`prepare` runs: what it does and the SQL."""

    description: str
    statement: sql.Composed

    @property
    def sql_text(self) -> str:
        """The statement as SQL text (identifiers quoted)."""
        return self.statement.as_string(None)


# --------------------------------------------------------------------------- connection


def conninfo(source: SourceSettings, application_name: str = "cdc-pipeline", connect_timeout_s: int = 10) -> str:
    """libpq connection string of ``source`` as its configured user (holds the password: never log it)."""
    password = source.password.get_secret_value() if source.password is not None else None
    return make_conninfo(
        "",
        host=source.host,
        port=source.port,
        dbname=source.database,
        user=source.user,
        password=password,
        sslmode=source.sslmode,
        application_name=application_name,
        connect_timeout=connect_timeout_s,
    )


def connect(source: SourceSettings, application_name: str = "cdc-pipeline") -> Conn:
    """An autocommit connection to ``source`` returning dict rows.

    Raises psycopg.OperationalError when it cannot connect; pass its text through
    :func:`redactor` before showing it.
    """
    return psycopg.connect(conninfo(source, application_name), autocommit=True, row_factory=dict_row)


def redactor(source: SourceSettings) -> Redactor:
    """A redactor that knows ``source``'s password."""
    red = Redactor()
    if source.password is not None:
        red.add(source.password.get_secret_value())
    return red


def _q(statement: sql.Composable) -> str:
    return statement.as_string(None)


def _ident(name: str) -> str:
    return _q(sql.Identifier(name))


# --------------------------------------------------------------------------- inspection


@dataclass(frozen=True, slots=True)
class _TableInfo:
    ref: TableRef
    exists: bool
    relkind: str | None = None
    replident: str | None = None
    has_pk: bool = False
    can_select: bool = False
    can_insert: bool = False
    can_update: bool = False
    can_delete: bool = False
    columns: tuple[str, ...] = ()

    @property
    def has_replica_identity(self) -> bool:
        return self.replident in ("f", "i") or (self.replident == "d" and self.has_pk)


def _table_info(conn: Conn, ref: TableRef) -> _TableInfo:
    row = conn.execute(
        """
        SELECT c.oid, c.relkind::text AS relkind, c.relreplident::text AS replident,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
               has_table_privilege(c.oid, 'SELECT') AS can_select,
               has_table_privilege(c.oid, 'INSERT') AS can_insert,
               has_table_privilege(c.oid, 'UPDATE') AS can_update,
               has_table_privilege(c.oid, 'DELETE') AS can_delete,
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum) AS columns
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (ref.schema, ref.table),
    ).fetchone()
    if row is None:
        return _TableInfo(ref, exists=False)
    return _TableInfo(
        ref,
        exists=True,
        relkind=row["relkind"],
        replident=row["replident"],
        has_pk=row["has_pk"],
        can_select=row["can_select"],
        can_insert=row["can_insert"],
        can_update=row["can_update"],
        can_delete=row["can_delete"],
        columns=tuple(row["columns"]),
    )


@dataclass(frozen=True, slots=True)
class _PublicationInfo:
    exists: bool
    all_tables: bool = False
    publishes: frozenset[str] = frozenset()
    tables: frozenset[TableRef] = frozenset()
    schemas: tuple[str, ...] = ()
    filtered: tuple[TableRef, ...] = ()  # tables with a row filter or a column list (PostgreSQL 15+)


def _publication_info(conn: Conn, name: str) -> _PublicationInfo:
    pub = conn.execute(
        "SELECT oid, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if pub is None:
        return _PublicationInfo(exists=False)
    publishes = frozenset(op for op in ("insert", "update", "delete", "truncate") if pub[f"pub{op}"])
    version = _server_version(conn)
    filters = (
        "pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL" if version >= 150000 else "false"  # columns added in 15
    )
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname::text AS schema, c.relname::text AS name, ({filters}) AS filtered "
            "FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pr.prpubid = %s"
        ).format(filters=sql.SQL(filters)),
        (pub["oid"],),
    ).fetchall()
    schemas: tuple[str, ...] = ()
    if version >= 150000:
        schemas = tuple(
            r["nspname"]
            for r in conn.execute(
                "SELECT n.nspname::text AS nspname FROM pg_publication_namespace pn "
                "JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE pn.pnpubid = %s",
                (pub["oid"],),
            ).fetchall()
        )
    return _PublicationInfo(
        exists=True,
        all_tables=pub["puballtables"],
        publishes=publishes,
        tables=frozenset(TableRef(r["schema"], r["name"]) for r in rows),
        schemas=schemas,
        filtered=tuple(sorted(TableRef(r["schema"], r["name"]) for r in rows if r["filtered"])),
    )


def _server_version(conn: Conn) -> int:
    return int(conn.info.server_version)


def _settings(conn: Conn) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('wal_level', 'max_replication_slots', 'max_wal_senders', 'max_slot_wal_keep_size')"
    ).fetchall()
    return {r["name"]: r["setting"] for r in rows}


# --------------------------------------------------------------------------- replication slot


def recover_command(source: SourceSettings) -> str:
    """The command that brings back a connector whose slot or WAL position is gone."""
    return f"cdc-pipeline connectors recover -c FILE --source {source.name}"


# --------------------------------------------------------------------------- checks


def check(source: SourceSettings, conn: Conn | None = None) -> list[CheckResult]:
    """Run every source check for ``source``; connects as its user unless ``conn`` is given.

    Returns the results in a stable order. A connection failure is returned as a single failed
    ``connection`` check (its message redacted); no exception is raised for database problems
    other than a lost connection mid-way (psycopg.OperationalError).
    """
    if conn is None:
        try:
            with connect(source, "cdc-pipeline source check") as own:
                return check(source, own)
        except psycopg.OperationalError as exc:
            return [
                CheckResult(
                    "connection",
                    False,
                    redactor(source)(str(exc).strip()),
                    fix=(
                        f"check sources[{source.name}] host/port/database/user/password/sslmode, that PostgreSQL "
                        "listens there and that pg_hba.conf allows this client"
                    ),
                )
            ]
    results = [CheckResult("connection", True, f"{source.user}@{source.host}:{source.port}/{source.database}")]
    results.append(_check_server_version(conn))
    settings = _settings(conn)
    results.append(_check_wal_level(settings))
    slot = slot_state(conn, source.resolved_slot_name)
    results.append(_check_slots(conn, settings, slot is not None))
    results.append(_check_wal_senders(conn, settings, bool(slot and slot.active)))
    results.append(_check_wal_keep_size(settings))
    results.append(_check_slot(source, slot))
    results.append(_check_role(conn, source))
    infos = [_table_info(conn, t) for t in captured_tables(source)]
    results.append(_check_tables_exist(source, infos))
    results.append(_check_select(source, infos))
    results.append(_check_replica_identity(infos))
    results.append(_check_control_tables(conn, source))
    results.append(check_publication(source, conn))
    return results


def _check_server_version(conn: Conn) -> CheckResult:
    version = _server_version(conn)
    text = f"{version // 10000}.{version % 10000}"
    if version < 100000:
        return CheckResult(
            "server version", False, f"PostgreSQL {text}: pgoutput needs 10 or later", "upgrade PostgreSQL"
        )
    return CheckResult("server version", True, f"PostgreSQL {text}")


def _check_wal_level(settings: dict[str, str]) -> CheckResult:
    level = settings.get("wal_level", "?")
    if level == "logical":
        return CheckResult("wal_level", True, "logical")
    return CheckResult(
        "wal_level",
        False,
        f"wal_level is {level!r}; logical decoding (and so Debezium) needs 'logical'",
        f"ALTER SYSTEM SET wal_level = logical;  -- {RESTART}",
    )


def _check_slots(conn: Conn, settings: dict[str, str], slot_exists: bool) -> CheckResult:
    limit = int(settings.get("max_replication_slots", "0"))
    used = _count(conn, "SELECT count(*) AS n FROM pg_replication_slots")
    needed = 0 if slot_exists else 1
    detail = f"{used} of {limit} used" + ("; this source's slot exists" if slot_exists else "; 1 needed")
    if limit - used >= needed:
        return CheckResult("max_replication_slots", True, detail)
    return CheckResult(
        "max_replication_slots",
        False,
        detail + ": no free replication slot",
        f"ALTER SYSTEM SET max_replication_slots = {used + needed + 4};  -- {RESTART}; "
        "or drop unused slots: SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active;",
    )


def _check_wal_senders(conn: Conn, settings: dict[str, str], slot_active: bool) -> CheckResult:
    limit = int(settings.get("max_wal_senders", "0"))
    used = _count(conn, "SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'walsender'")
    needed = 0 if slot_active else 1
    detail = f"{used} of {limit} in use" + ("; this source's slot is being streamed" if slot_active else "; 1 needed")
    if limit - used >= needed:
        return CheckResult("max_wal_senders", True, detail)
    return CheckResult(
        "max_wal_senders",
        False,
        detail + ": no free WAL sender",
        f"ALTER SYSTEM SET max_wal_senders = {used + needed + 4};  -- {RESTART}",
    )


def _check_wal_keep_size(settings: dict[str, str]) -> CheckResult:
    value = settings.get("max_slot_wal_keep_size")
    if value is None:
        return CheckResult(
            "max_slot_wal_keep_size",
            True,
            "not available before PostgreSQL 13: a stopped connector's slot retains WAL without limit",
            warning=True,
        )
    if value == "-1":
        return CheckResult(
            "max_slot_wal_keep_size",
            True,
            "unlimited (-1): while the connector is stopped or behind, its slot retains all WAL and can fill the "
            "disk of the source; with a limit, PostgreSQL invalidates the slot instead (wal_status 'lost') and the "
            "connector must snapshot again. Monitor slot lag either way.",
            fix="ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();  -- size to the WAL disk",
            warning=True,
        )
    return CheckResult("max_slot_wal_keep_size", True, f"{value} MB")


def _check_slot(source: SourceSettings, slot: SlotState | None) -> CheckResult:
    name = source.resolved_slot_name
    if slot is None:
        return CheckResult("replication slot", True, f"{name} absent; the connector creates it on first start")
    problems = []
    if slot.slot_type != "logical" or slot.plugin != "pgoutput":
        problems.append(f"it is a {slot.slot_type} slot of plugin {slot.plugin!r}, not pgoutput")
    if slot.database != source.database:
        problems.append(f"it belongs to database {slot.database!r}")
    if slot.lost:
        problems.append("its WAL was removed (wal_status 'lost'): it can never be streamed again")
    detail = f"{name}: " + ("active" if slot.active else "inactive") + f", wal_status {slot.wal_status}"
    if not problems:
        return CheckResult("replication slot", True, detail)
    if slot.lost:
        return CheckResult("replication slot", False, f"{name}: " + "; ".join(problems), recover_command(source))
    drop = _q(sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(name)))
    return CheckResult(
        "replication slot",
        False,
        f"{name}: " + "; ".join(problems),
        f"{drop}  -- then let the connector create it again (it re-snapshots per snapshot.mode), "
        f"or set sources[{source.name}].slot_name to another name",
    )


def _check_role(conn: Conn, source: SourceSettings) -> CheckResult:
    row = conn.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()
    if row is not None and (row["rolsuper"] or row["rolreplication"]):
        return CheckResult(
            "replication role", True, f"{source.user}: " + ("superuser" if row["rolsuper"] else "REPLICATION")
        )
    return CheckResult(
        "replication role",
        False,
        f"{source.user} has neither REPLICATION nor superuser: it cannot open a replication connection",
        _q(sql.SQL("ALTER ROLE {} WITH REPLICATION;").format(sql.Identifier(source.user)))
        + "  -- Amazon RDS / Aurora: GRANT rds_replication TO the role",
    )


def _check_tables_exist(source: SourceSettings, infos: list[_TableInfo]) -> CheckResult:
    missing = [str(i.ref) for i in infos if not i.exists]
    if not missing:
        return CheckResult("tables exist", True, f"{len(infos)} table(s) found")
    return CheckResult(
        "tables exist",
        False,
        "missing: " + ", ".join(missing),
        f"create the table(s), or remove them from sources[{source.name}].tables",
    )


def _check_select(source: SourceSettings, infos: list[_TableInfo]) -> CheckResult:
    lacking = [i.ref for i in infos if i.exists and not i.can_select]
    if not lacking:
        return CheckResult("select privilege", True, f"{source.user} can read every captured table")
    grant = sql.SQL("GRANT SELECT ON {} TO {};").format(
        sql.SQL(", ").join(t.identifier() for t in lacking), sql.Identifier(source.user)
    )
    return CheckResult(
        "select privilege",
        False,
        f"{source.user} cannot SELECT from " + ", ".join(map(str, lacking)) + " (needed for snapshots)",
        _q(grant),
    )


def _check_replica_identity(infos: list[_TableInfo]) -> CheckResult:
    lacking = [i.ref for i in infos if i.exists and not i.has_replica_identity]
    if not lacking:
        return CheckResult("replica identity", True, "every captured table has a primary key or a replica identity")
    fixes = [_q(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL;").format(t.identifier())) for t in lacking]
    return CheckResult(
        "replica identity",
        False,
        "no primary key and no REPLICA IDENTITY FULL/USING INDEX: "
        + ", ".join(map(str, lacking))
        + ". In a publication, UPDATE and DELETE on such a table fail on the source; otherwise they could not "
        "be captured. (Or add a primary key.)",
        "\n".join(fixes),
    )


def _check_control_tables(conn: Conn, source: SourceSettings) -> CheckResult:
    """Heartbeat and signal tables exist with the right columns and the role may write them.

    ``heartbeat.action.query`` is an upsert (needs SELECT, INSERT, UPDATE); incremental
    snapshots insert watermarks into the signal table (INSERT); both need USAGE on the schema.
    """
    hb = _table_info(conn, heartbeat_table(source))
    sig = _table_info(conn, signal_table(source))
    problems: list[str] = []
    fixes: list[str] = []
    prepare_fix = f"cdc-pipeline source prepare -c FILE --source {source.name}"
    user = sql.Identifier(source.user)
    usage = conn.execute(
        "SELECT has_schema_privilege(n.oid, 'USAGE') AS usage FROM pg_namespace n WHERE n.nspname = %s",
        (source.control_schema,),
    ).fetchone()
    if usage is not None and not usage["usage"]:
        problems.append(f"{source.user} has no USAGE on schema {source.control_schema}")
        fixes.append(_q(sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(sql.Identifier(source.control_schema), user)))
    for info, columns, privileges, purpose in (
        (hb, ["source", "ts"], ("SELECT", "INSERT", "UPDATE"), "heartbeat.action.query upsert"),
        (sig, ["id", "type", "data"], ("INSERT",), "incremental snapshot watermarks"),
    ):
        if not info.exists:
            problems.append(f"{info.ref} missing")
            fixes.append(prepare_fix)
            continue
        if info.columns[: len(columns)] != tuple(columns):
            problems.append(f"{info.ref} must start with the columns ({', '.join(columns)})")
            fixes.append(_q(sql.SQL("DROP TABLE {};").format(info.ref.identifier())) + f"  -- then: {prepare_fix}")
        held = {"SELECT": info.can_select, "INSERT": info.can_insert, "UPDATE": info.can_update}
        if not all(held[p] for p in privileges):
            problems.append(f"{source.user} cannot {', '.join(privileges)} on {info.ref} ({purpose})")
            fixes.append(
                _q(
                    sql.SQL("GRANT {} ON {} TO {};").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                        info.ref.identifier(),
                        user,
                    )
                )
            )
    if not problems:
        return CheckResult("control tables", True, f"{hb.ref} and {sig.ref} ready")
    return CheckResult("control tables", False, "; ".join(problems), "\n".join(dict.fromkeys(fixes)))


def check_publication(source: SourceSettings, conn: Conn, live_include: str | None = None) -> CheckResult:
    """Whether the publication exists and covers exactly the captured, heartbeat and signal tables.

    Also fails when it is ``FOR ALL TABLES`` or ``FOR TABLES IN SCHEMA``, does not publish all
    of insert/update/delete/truncate, or has a row filter or column list on a table (changes
    would be silently partial). ``fix`` is the SQL :func:`prepare` would run.

    ``live_include`` is the ``table.include.list`` of the connector's *live* configuration
    (Connect REST ``GET /connectors/{name}/config``), when the caller could read it: a
    publication table it captures is expected too, so a process started with an older YAML
    does not flag (nor offer to remove) a table added since by ``connectors apply``.
    """
    name = source.resolved_publication_name
    info = _publication_info(conn, name)
    expected = publication_tables(source)
    if live_include:
        patterns = include_patterns(live_include)
        expected += sorted(t for t in info.tables - set(expected) if any(p.fullmatch(str(t)) for p in patterns))
    steps = _publication_steps(source, info, expected)
    if not info.exists:
        return CheckResult(
            "publication", False, f"{name} does not exist", "\n".join(s.sql_text + ";" for s in steps) or None
        )
    problems: list[str] = []
    if info.all_tables:
        problems.append("it is FOR ALL TABLES")
    if info.schemas:
        problems.append("it includes whole schemas: " + ", ".join(info.schemas))
    missing = [t for t in expected if t not in info.tables]
    extra = sorted(info.tables - set(expected))
    if missing:
        problems.append("missing " + ", ".join(map(str, missing)))
    if extra:
        problems.append("also holds " + ", ".join(map(str, extra)))
    if info.filtered:
        problems.append("row filter or column list on " + ", ".join(map(str, info.filtered)))
    if info.publishes != {"insert", "update", "delete", "truncate"}:
        problems.append("publishes only " + (", ".join(sorted(info.publishes)) or "nothing"))
    if not problems:
        return CheckResult("publication", True, f"{name}: {len(expected)} table(s), all operations")
    if info.all_tables or info.schemas:
        fix = (
            _q(sql.SQL("DROP PUBLICATION {};").format(sql.Identifier(name)))
            + f"  -- then: cdc-pipeline source prepare -c FILE --source {source.name}"
        )
    else:
        fix = "\n".join(s.sql_text + ";" for s in steps)
    return CheckResult("publication", False, f"{name}: " + "; ".join(problems), fix)


def include_patterns(include_list: str) -> list[re.Pattern[str]]:
    """The entries of a Debezium ``table.include.list`` value as Python patterns (to fullmatch
    ``schema.table``).

    Debezium splits the value at unescaped commas, turns ``\\,`` back into ``,`` and trims each
    entry (``io.debezium.util.Strings.RegExSplitter``), then matches each entry, anchored and
    case-insensitively, against ``<schema>.<table>`` (``io.debezium.function.Predicates``); a
    leading ``(?-i)`` (what :func:`connectors.debezium.table_regex` writes) makes it
    case-sensitive. Entries Python's ``re`` cannot compile are left out (the table is then
    checked against the YAML only).
    """
    patterns: list[re.Pattern[str]] = []
    for entry in re.split(r"(?<!\\),", include_list):
        text = entry.replace("\\,", ",").strip()
        if not text:
            continue
        flags = re.IGNORECASE
        if text.startswith("(?-i)"):
            text, flags = text[5:], re.NOFLAG
        try:
            patterns.append(re.compile(text, flags))
        except re.error:
            continue
    return patterns


def _count(conn: Conn, query: LiteralString) -> int:
    row = conn.execute(query).fetchone()
    return int(row["n"]) if row else 0


# --------------------------------------------------------------------------- prepare


def _publication_steps(source: SourceSettings, info: _PublicationInfo, expected: list[TableRef]) -> list[Step]:
    name = sql.Identifier(source.resolved_publication_name)
    table_list = sql.SQL(", ").join(t.identifier() for t in expected)
    if not info.exists:
        return [
            Step(
                f"create publication {source.resolved_publication_name} for {len(expected)} table(s)",
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                    name, table_list, sql.Literal(PUBLISH_ALL)
                ),
            )
        ]
    if info.all_tables:
        return []  # cannot be altered into a table list; check_publication says to drop it
    steps: list[Step] = []
    if info.tables != set(expected) or info.schemas or info.filtered:
        steps.append(
            Step(
                f"set the tables of publication {source.resolved_publication_name} ({len(expected)} table(s))",
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, table_list),
            )
        )
    if info.publishes != {"insert", "update", "delete", "truncate"}:
        steps.append(
            Step(
                f"publish all operations in {source.resolved_publication_name}",
                sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(name, sql.Literal(PUBLISH_ALL)),
            )
        )
    return steps


def plan(source: SourceSettings, conn: Conn) -> list[Step]:
    """The statements :func:`prepare` would run now, in order (empty when all is in place).

    Raises PrepareError when preparation cannot be planned: a captured table is missing, has
    no replica identity (adding it to the publication would make UPDATE/DELETE on it fail on
    the source), or the publication is ``FOR ALL TABLES``.
    """
    infos = [_table_info(conn, t) for t in captured_tables(source)]
    missing = [str(i.ref) for i in infos if not i.exists]
    if missing:
        raise PrepareError(
            f"tables not found: {', '.join(missing)} (create them or remove them from sources[{source.name}].tables)"
        )
    no_identity = [i.ref for i in infos if not i.has_replica_identity]
    if no_identity:
        fixes = " ".join(
            _q(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL;").format(t.identifier())) for t in no_identity
        )
        raise PrepareError(
            f"no primary key nor replica identity: {', '.join(map(str, no_identity))}; in the publication, UPDATE and "
            f"DELETE on them would fail on the source. Run first: {fixes}"
        )
    steps: list[Step] = []
    schema = source.control_schema
    has_schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None
    if not has_schema:
        steps.append(
            Step(f"create schema {schema}", sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        )
    hb = heartbeat_table(source)
    if not _table_info(conn, hb).exists:
        steps.append(
            Step(
                f"create heartbeat table {hb}",
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (source text PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now())"
                ).format(hb.identifier()),
            )
        )
    sig = signal_table(source)
    if not _table_info(conn, sig).exists:
        steps.append(
            Step(
                f"create signal table {sig}",
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} "
                    "(id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048) NULL)"
                ).format(sig.identifier()),
            )
        )
    info = _publication_info(conn, source.resolved_publication_name)
    if info.all_tables:
        raise PrepareError(
            f"publication {source.resolved_publication_name} is FOR ALL TABLES and cannot be narrowed; drop it "
            f"({_q(sql.SQL('DROP PUBLICATION {}').format(sql.Identifier(source.resolved_publication_name)))}) or set "
            f"sources[{source.name}].publication_name to another name"
        )
    steps.extend(_publication_steps(source, info, publication_tables(source)))
    return steps


def prepare(source: SourceSettings, conn: Conn | None = None) -> list[Step]:
    """Create the control schema, heartbeat and signal tables and the publication; idempotent.

    Runs :func:`plan` and executes its steps in one transaction, as ``source``'s user (who
    needs ``CREATE`` on the database and ownership of the captured tables, or superuser).
    Returns the steps run (empty when nothing was needed). Raises PrepareError (see
    :func:`plan`, or a database error with the SQL that failed; messages redacted).
    """
    if conn is None:
        try:
            with connect(source, "cdc-pipeline source prepare") as own:
                return prepare(source, own)
        except psycopg.OperationalError as exc:
            raise PrepareError(f"cannot connect: {redactor(source)(str(exc).strip())}") from None
    with conn.transaction():
        steps = plan(source, conn)
        for step in steps:
            try:
                conn.execute(step.statement)
            except psycopg.Error as exc:
                raise PrepareError(
                    f"{step.description} failed: {redactor(source)(str(exc).strip())}\n  SQL: {step.sql_text}"
                ) from None
            log.info("source prepared", source=source.name, step=step.description)
    return steps


def format_steps(steps: Iterable[Step]) -> list[str]:
    """SQL lines of ``steps`` (for ``--dry-run`` output)."""
    return [s.sql_text + ";" for s in steps]


# --------------------------------------------------------------------------- removal (cutover finish)


def publication_exists(conn: Conn, name: str) -> bool:
    """True when the publication ``name`` exists in the connection's database."""
    return conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone() is not None


def drop_publication(conn: Conn, name: str) -> bool:
    """``DROP PUBLICATION IF EXISTS name``; True when it existed (needs its owner or superuser)."""
    existed = publication_exists(conn, name)
    if existed:
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        log.info("publication dropped", publication=name)
    return existed


def existing_tables(conn: Conn, tables: Iterable[TableRef]) -> list[TableRef]:
    """The tables of ``tables`` that exist (ordinary or partitioned), in the given order."""
    return [t for t in tables if _table_info(conn, t).exists]


def drop_tables(conn: Conn, tables: Iterable[TableRef]) -> list[TableRef]:
    """``DROP TABLE IF EXISTS`` each of ``tables`` (no CASCADE); returns those that existed.

    Meant for the pipeline's own heartbeat and signal tables; a table something else depends on
    (a view) makes PostgreSQL refuse, raised as psycopg.Error.
    """
    dropped = existing_tables(conn, tables)
    for table in dropped:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.identifier()))
        log.info("table dropped", table=str(table))
    return dropped
