"""DDL of the SQLAlchemy sink: where tables live, control tables, target tables and evolution.

Naming (``target.schema`` / ``target.control_schema`` per dialect):

- MariaDB/MySQL: a schema *is* a database (MariaDB "CREATE DATABASE": ``CREATE SCHEMA`` is a
  synonym), so ``schema.table`` maps to database ``schema``, table ``table``; the control
  tables are ``<control_schema>.offsets`` etc. in database ``control_schema``. Databases are
  created when missing (the user needs the CREATE privilege).
- SQLite: one file, no schemas without ``ATTACH``; ``schema.table`` maps to the table
  ``<schema>__<table>`` and the control tables to ``<control_schema>__offsets`` etc.

Control tables (same meaning as :mod:`sinks.postgres.ddl`): ``offsets``, ``tombstones``,
``truncations``, ``known_columns`` (every column the sink has written, so one dropped by hand
is noticed instead of re-created empty, with the source type last seen and whether it was
dropped at the source), ``schema_changes`` (every source schema change applied) and
``row_versions`` (each row's position in ``target.versions: table`` mode,
:mod:`sinks.sqlalchemy.versions`).
Tombstones and row versions are keyed by ``(table_name, row_hash)`` with ``row_hash`` the SHA-256 hex of the
canonical key text (stored too, in ``row_key``), because InnoDB keys are
limited to 3072 bytes. Text columns of MariaDB tables use the binary, no-pad collation
(``utf8mb4_nopad_bin``; MySQL 8: ``utf8mb4_0900_bin``) so keys compare like PostgreSQL's:
case- and trailing-space-sensitive.

MariaDB commits implicitly before DDL (MariaDB "SQL statements that cause an implicit
commit"), so all DDL runs in its own short transaction *before* a batch's data transaction,
with ``IF NOT EXISTS`` forms so concurrent workers do not conflict. All identifiers are quoted
by SQLAlchemy (table/column constructs, or the dialect's ``IdentifierPreparer``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from pipeline.core.events import Column, TableId
from sinks.sqlalchemy.types import MYSQL, SQLITE, classify, column_type

VERSION_COLUMNS = ("__cdc_commit_lsn", "__cdc_lsn")
ROW_ID = "__cdc_row_id"
OWN_PREFIX = "__cdc_"
SQLITE_SEPARATOR = "__"


class UnsupportedTableError(Exception):
    """A target table the sink cannot write safely (e.g. an extra unique index on MariaDB)."""


def dialect_kind(dialect: sa.engine.Dialect) -> str:
    """``mysql`` (MySQL and MariaDB) or ``sqlite``; raises ValueError for anything else."""
    if dialect.name in (MYSQL, "mariadb"):
        return MYSQL
    if dialect.name == SQLITE:
        return SQLITE
    raise ValueError(f"the SQLAlchemy sink does not support the {dialect.name!r} dialect")


def physical(table: TableId, dialect: str) -> tuple[str | None, str]:
    """``(schema, name)`` of ``table`` in the target database (see the module docstring)."""
    if dialect == SQLITE:
        return None, f"{table.schema}{SQLITE_SEPARATOR}{table.table}"
    return table.schema, table.table


def table_options(dialect: sa.engine.Dialect) -> dict[str, Any]:
    """``sa.Table`` keyword options: InnoDB, utf8mb4 and a binary no-pad collation on MariaDB/MySQL."""
    if dialect_kind(dialect) != MYSQL:
        return {}
    mariadb = getattr(dialect, "is_mariadb", False)
    collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    # Options are read under the dialect's own name: mariadb_* for mariadb:// URLs.
    prefix = dialect.name
    return {f"{prefix}_engine": "InnoDB", f"{prefix}_charset": "utf8mb4", f"{prefix}_collate": collation}


def row_hash(key: str) -> str:
    """SHA-256 hex of a canonical key text (the tombstone table's key)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ControlTables:
    """The control tables as SQLAlchemy ``Table`` objects."""

    offsets: sa.Table
    tombstones: sa.Table
    truncations: sa.Table
    known_columns: sa.Table
    schema_changes: sa.Table
    row_versions: sa.Table

    @property
    def metadata(self) -> sa.MetaData:
        """Their shared metadata (for ``create_all``)."""
        return self.offsets.metadata


def control_tables(control_schema: str, dialect: sa.engine.Dialect) -> ControlTables:
    """The control tables of ``control_schema`` on ``dialect``."""
    kind = dialect_kind(dialect)
    md = sa.MetaData()
    opts = table_options(dialect)

    def make(name: str, *cols: sa.Column[Any]) -> sa.Table:
        schema, physical_name = physical(TableId(control_schema, name), kind)
        return sa.Table(physical_name, md, *cols, schema=schema, **opts)

    ts = sa.DateTime(timezone=False)
    return ControlTables(
        offsets=make(
            "offsets",
            sa.Column("consumer_group", sa.String(255), primary_key=True),
            sa.Column("topic", sa.String(249), primary_key=True),  # Kafka's topic name limit
            sa.Column("kafka_partition", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("next_offset", sa.BigInteger, nullable=False),
            sa.Column("updated_at", ts, nullable=False),
        ),
        tombstones=make(
            "tombstones",
            sa.Column("table_name", sa.String(255), primary_key=True),
            sa.Column("row_hash", sa.String(64), primary_key=True),
            sa.Column("row_key", sa.Text, nullable=False),
            sa.Column("commit_lsn", sa.BigInteger, nullable=False),
            sa.Column("lsn", sa.BigInteger, nullable=False),
            sa.Column("deleted_at", ts, nullable=False),
        ),
        truncations=make(
            "truncations",
            sa.Column("table_name", sa.String(255), primary_key=True),
            sa.Column("commit_lsn", sa.BigInteger, nullable=False),
            sa.Column("lsn", sa.BigInteger, nullable=False),
            sa.Column("truncated_at", ts, nullable=False),
        ),
        known_columns=make(
            "known_columns",
            sa.Column("table_name", sa.String(255), primary_key=True),
            sa.Column("column_name", sa.String(255), primary_key=True),
            sa.Column("seen_at", ts, nullable=False),
            *[sa.Column(name, kind, nullable=True) for name, kind in _known_fields()],
        ),
        schema_changes=make(
            "schema_changes",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("table_name", sa.String(255), nullable=False),
            sa.Column("column_name", sa.String(255), nullable=False),
            sa.Column("change", sa.String(32), nullable=False),
            sa.Column("old_type", sa.String(255)),
            sa.Column("new_type", sa.String(255)),
            sa.Column("commit_lsn", sa.BigInteger),
            sa.Column("lsn", sa.BigInteger),
            sa.Column("applied_at", ts, nullable=False),
        ),
        row_versions=make(
            "row_versions",
            sa.Column("table_name", sa.String(255), primary_key=True),
            sa.Column("row_hash", sa.String(64), primary_key=True),
            sa.Column("row_key", sa.Text, nullable=False),
            sa.Column("commit_lsn", sa.BigInteger, nullable=False),
            sa.Column("lsn", sa.BigInteger, nullable=False),
        ),
    )


def _known_fields() -> list[tuple[str, sa.types.TypeEngine[Any]]]:
    """Columns of ``known_columns`` for schema evolution (:class:`sinks.evolution.KnownColumn`);
    added to tables created by older versions by :func:`ensure_control`."""
    return [
        ("source_type", sa.String(255)),
        ("commit_lsn", sa.BigInteger()),
        ("lsn", sa.BigInteger()),
        ("dropped_at_source", sa.DateTime(timezone=False)),
    ]


def ensure_schema(conn: Connection, schema: str | None) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` (a database on MariaDB/MySQL); nothing on SQLite."""
    if schema is not None and dialect_kind(conn.dialect) == MYSQL:
        conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))


def ensure_control(conn: Connection, tables: ControlTables) -> None:
    """Create the control schema and tables when missing (idempotent)."""
    ensure_schema(conn, tables.offsets.schema)
    tables.metadata.create_all(conn, checkfirst=True)
    kc = tables.known_columns
    present = {str(c["name"]) for c in sa.inspect(conn).get_columns(kc.name, schema=kc.schema)}
    prep = conn.dialect.identifier_preparer
    qualified = prep.format_table(kc)
    for name, kind in _known_fields():
        if name not in present:
            conn.exec_driver_sql(
                f"ALTER TABLE {qualified} ADD COLUMN {prep.quote(name)} {kind.compile(dialect=conn.dialect)}"
            )


@dataclass
class TableShape:
    """A target table: ``TableId``, where it lives, its columns (name -> type text as the
    database reports it, lower case) and its primary key."""

    table: TableId
    schema: str | None
    name: str
    columns: dict[str, str]
    key_columns: tuple[str, ...]

    @property
    def keyless(self) -> bool:
        """True when the table is keyed by ``__cdc_row_id`` (``columns`` mode) or has no primary
        key (``table`` mode)."""
        return self.key_columns in ((ROW_ID,), ())

    def clause(self, columns: list[str] | None = None) -> sa.TableClause:
        """A lightweight table construct for DML over ``columns`` (default: all)."""
        names = list(self.columns) if columns is None else columns
        return sa.table(self.name, *(sa.column(c) for c in names), schema=self.schema)


def read_shape(conn: Connection, table: TableId) -> TableShape | None:
    """The table's columns and primary key, or None when it does not exist.

    Raises UnsupportedTableError on MariaDB/MySQL when the table has a unique index other than
    the primary key: ``INSERT ... ON DUPLICATE KEY UPDATE`` fires on *any* unique index
    (MariaDB "INSERT ON DUPLICATE KEY UPDATE"), which would update the wrong row.
    """
    kind = dialect_kind(conn.dialect)
    schema, name = physical(table, kind)
    if kind == MYSQL:
        return _read_mysql_shape(conn, table, schema or "", name)
    inspector = sa.inspect(conn)
    if not inspector.has_table(name, schema=schema):
        return None
    columns = {
        str(c["name"]): str(c["type"].compile(dialect=conn.dialect)).lower()
        for c in inspector.get_columns(name, schema=schema)
    }
    keys = tuple(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or ())
    return TableShape(table, schema, name, columns, keys)


_IS = sa.table(
    "COLUMNS",
    sa.column("TABLE_SCHEMA"),
    sa.column("TABLE_NAME"),
    sa.column("COLUMN_NAME"),
    sa.column("COLUMN_TYPE"),
    sa.column("ORDINAL_POSITION"),
    schema="information_schema",
)
_IS_STATS = sa.table(
    "STATISTICS",
    sa.column("TABLE_SCHEMA"),
    sa.column("TABLE_NAME"),
    sa.column("INDEX_NAME"),
    sa.column("NON_UNIQUE"),
    sa.column("SEQ_IN_INDEX"),
    sa.column("COLUMN_NAME"),
    schema="information_schema",
)


def _exact(column: sa.ColumnClause[object], value: str) -> sa.ColumnElement[bool]:
    """Byte-exact comparison (information_schema compares names case-insensitively)."""
    return sa.cast(column, mysql.BINARY()) == sa.cast(sa.literal(value), mysql.BINARY())


def _read_mysql_shape(conn: Connection, table: TableId, schema: str, name: str) -> TableShape | None:
    """MariaDB/MySQL shape from ``information_schema`` (exact names: SQLAlchemy 2.1's
    ``SHOW CREATE TABLE`` parser keeps doubled backticks in reflected column names)."""
    c = _IS.c
    rows = conn.execute(
        sa.select(c.COLUMN_NAME, c.COLUMN_TYPE)
        .where(_exact(c.TABLE_SCHEMA, schema), _exact(c.TABLE_NAME, name))
        .order_by(c.ORDINAL_POSITION)
    ).all()
    if not rows:
        return None
    st = _IS_STATS.c
    indexes = conn.execute(
        sa.select(st.INDEX_NAME, st.COLUMN_NAME)
        .where(_exact(st.TABLE_SCHEMA, schema), _exact(st.TABLE_NAME, name), st.NON_UNIQUE == 0)
        .order_by(st.INDEX_NAME, st.SEQ_IN_INDEX)
    ).all()
    keys = tuple(str(col) for idx, col in indexes if idx == "PRIMARY")
    unique = sorted({str(idx) for idx, _ in indexes if idx != "PRIMARY"})
    if unique:
        raise UnsupportedTableError(
            f"{table}: unique index(es) {unique} besides the primary key; ON DUPLICATE KEY UPDATE "
            "fires on any unique index, so the sink refuses the table (drop them or make them non-unique)"
        )
    return TableShape(table, schema, name, {str(n): str(t).lower() for n, t in rows}, keys)


def target_table(
    table: TableId,
    columns: tuple[Column, ...],
    key_columns: tuple[str, ...],
    dialect: sa.engine.Dialect,
    versions: str = "columns",
) -> sa.Table:
    """The ``sa.Table`` of a new target table: event columns (key columns NOT NULL, primary
    key) and, with ``versions="columns"``, the two version columns and, for keyless tables,
    ``__cdc_row_id`` (``"table"``: nothing else, a keyless table has no primary key).

    Raises ValueError when a key column is not among ``columns``.
    """
    names = {c.name for c in columns}
    missing = [k for k in key_columns if k not in names]
    if missing:
        raise ValueError(f"{table}: key column(s) {missing} not in the row schema")
    kind = dialect_kind(dialect)
    schema, name = physical(table, kind)
    cols: list[sa.Column[Any]] = [
        sa.Column(
            c.name,
            column_type(classify(c), kind, key=c.name in key_columns),
            primary_key=c.name in key_columns,
            nullable=c.name not in key_columns,
            autoincrement=False,
        )
        for c in columns
    ]
    if versions != "columns":
        return sa.Table(name, sa.MetaData(), *cols, schema=schema, **table_options(dialect))
    cols += [sa.Column(v, sa.BigInteger, nullable=False) for v in VERSION_COLUMNS]
    if not key_columns:
        cols.append(sa.Column(ROW_ID, sa.String(64), primary_key=True))
    return sa.Table(name, sa.MetaData(), *cols, schema=schema, **table_options(dialect))


def create_table(
    conn: Connection,
    table: TableId,
    columns: tuple[Column, ...],
    key_columns: tuple[str, ...],
    versions: str = "columns",
) -> None:
    """Create the target table (and its MariaDB database) if it does not exist."""
    t = target_table(table, columns, key_columns, conn.dialect, versions)
    ensure_schema(conn, t.schema)
    t.create(conn, checkfirst=True)


def add_column_sql(shape: TableShape, column: Column, dialect: sa.engine.Dialect) -> str:
    """``ALTER TABLE ... ADD COLUMN`` text for a new nullable column (identifiers quoted by the
    dialect's preparer; the type compiled from :func:`column_type`). MariaDB gets
    ``IF NOT EXISTS`` (MariaDB "ALTER TABLE"); MySQL and SQLite report a duplicate column
    instead, which :func:`add_columns` ignores."""
    prep = dialect.identifier_preparer
    kind = dialect_kind(dialect)
    qualified = prep.quote(shape.name)
    if shape.schema is not None:
        qualified = f"{prep.quote_schema(shape.schema)}.{qualified}"
    type_sql = column_type(classify(column), kind).compile(dialect=dialect)
    if_not_exists = "IF NOT EXISTS " if getattr(dialect, "is_mariadb", False) else ""
    return f"ALTER TABLE {qualified} ADD COLUMN {if_not_exists}{prep.quote(column.name)} {type_sql}"


def add_columns(conn: Connection, shape: TableShape, columns: list[Column]) -> None:
    """Add ``columns`` (nullable) to the table; a column a concurrent worker added is fine."""
    for column in columns:
        statement = add_column_sql(shape, column, conn.dialect)
        if conn.dialect.paramstyle in ("format", "pyformat"):
            statement = statement.replace("%", "%%")  # the driver %-formats even without parameters
        try:
            conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            if "duplicate column" not in str(exc.orig).lower():
                raise
