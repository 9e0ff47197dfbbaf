"""MariaDB/MySQL and SQLite side of source schema evolution: catalog type text ->
:class:`~sinks.sqltypes.SqlType`, the DDL of each :class:`~sinks.evolution.ColumnChange`, and the
control-table columns that record them.

MariaDB commits implicitly around DDL, so the changes run in the sink's DDL transaction right
before the batch's data transaction (a crash in between leaves the column changed and the batch
replays; every statement is idempotent). ``MODIFY COLUMN`` copies the table unless MariaDB can
do it in place (``ALGORITHM=INPLACE``/``INSTANT``: e.g. ``VARCHAR`` growth within the same length
byte; MariaDB "ALTER TABLE", "InnoDB Online DDL Operations with ALGORITHM=INPLACE"). SQLite's
declared types do not bound values (sqlite.org "Datatypes In SQLite"), so widenings need no DDL.
Identifiers are quoted by the dialect's ``IdentifierPreparer``; type texts come only from
:func:`sinks.sqlalchemy.types.column_type`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.core.events import Column
from pipeline.core.logs import get_logger
from sinks.evolution import ColumnChange
from sinks.sqlalchemy.ddl import TableShape, dialect_kind
from sinks.sqlalchemy.types import MYSQL, classify, column_type, json_text
from sinks.sqltypes import SqlType

log = get_logger(__name__)

_INTS = {"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "integer": 4, "bigint": 8}
_FLOATS = {"float": 4, "real": 8, "double": 8, "double precision": 8}
_TEXTS = {
    "tinytext": 255,
    "text": 65_535,
    "mediumtext": 16_777_215,
    "longtext": math.inf,
    "json": math.inf,
    "clob": math.inf,
}
_BLOBS = {"tinyblob": 255, "blob": 65_535, "mediumblob": 16_777_215, "longblob": math.inf}
_TYPE = re.compile(r"^([a-z ]+?)\s*(?:\((\d+)(?:\s*,\s*(\d+))?\))?\s*(unsigned|signed)?\s*(zerofill)?$")


def type_text(column: Column, dialect: sa.engine.Dialect, key: bool = False) -> str:
    """The target type text of an incoming column (lower case, as the sink would create it)."""
    return str(column_type(classify(column), dialect_kind(dialect), key=key).compile(dialect=dialect)).lower()


def parse_sa_type(text: str) -> SqlType:
    """A MariaDB ``COLUMN_TYPE`` (``int(11)``, ``varchar(50)``, ``decimal(12,2)``, ``datetime(6)``,
    ``longtext``) or a compiled SQLAlchemy type (``integer``, ``decimal(12, 2)``) as a
    :class:`SqlType`; unknown names keep their own name as family."""
    t = text.strip().lower()
    m = _TYPE.match(t)
    if not m:
        return SqlType(t)
    base, size, scale = m.group(1).strip(), m.group(2), m.group(3)
    if base in ("bool", "boolean") or (base == "tinyint" and size == "1"):
        return SqlType("bool")
    if base in _INTS:
        return SqlType("int", _INTS[base])
    if base in _FLOATS:
        return SqlType("float", _FLOATS[base])
    return _parse_sized(base, size, scale)


def _parse_sized(base: str, size: str | None, scale: str | None) -> SqlType:
    if base in ("decimal", "numeric"):
        return SqlType("numeric", float(size) if size else 10.0, int(scale or 0))
    if base in ("varchar", "character varying", "nvarchar"):
        return SqlType("string", float(size) if size else math.inf)
    if base in ("char", "character"):
        return SqlType("char", float(size) if size else 1.0)
    if base in _TEXTS:
        return SqlType("string", _TEXTS[base])
    if base in ("varbinary", "binary"):
        return SqlType("binary", float(size) if size else math.inf)
    if base in _BLOBS:
        return SqlType("binary", _BLOBS[base])
    if base in ("datetime", "timestamp"):
        return SqlType("timestamp", float(size) if size else 0.0)
    if base == "time":
        return SqlType("time", float(size) if size else 0.0)
    return SqlType(base)


def _qualified(shape: TableShape, dialect: sa.engine.Dialect) -> str:
    prep = dialect.identifier_preparer
    name = prep.quote(shape.name)
    return f"{prep.quote_schema(shape.schema)}.{name}" if shape.schema is not None else name


def _default_sql(value: Any, dialect: sa.engine.Dialect) -> str | None:
    """The literal SQL of a column default, or None when the dialect cannot render it."""
    if isinstance(value, dict | list):
        value = json_text(value)
    try:
        return str(sa.literal(value).compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except (sa.exc.CompileError, NotImplementedError, TypeError):
        return None


def change_statements(shape: TableShape, change: ColumnChange, dialect: sa.engine.Dialect) -> list[str]:
    """The statements applying ``change`` (empty for record-only kinds and for SQLite widenings)."""
    prep = dialect.identifier_preparer
    table, name = _qualified(shape, dialect), prep.quote(change.name)
    mysql = dialect_kind(dialect) == MYSQL
    column = change.column
    default = _default_sql(column.default, dialect) if column is not None and column.default is not None else None
    if change.kind in ("added", "renamed") and column is not None:
        if column.default is not None and default is None:
            log.warning("column default not rendered", table=str(shape.table), column=change.name)
        if_not_exists = "IF NOT EXISTS " if getattr(dialect, "is_mariadb", False) else ""
        stmt = f"ALTER TABLE {table} ADD COLUMN {if_not_exists}{name} {type_text(column, dialect)}"
        out = [stmt + (f" DEFAULT {default}" if default is not None else "")]
        if change.kind == "renamed" and change.renamed_from is not None:
            out.append(f"UPDATE {table} SET {name} = {prep.quote(change.renamed_from)}")
        return out
    if change.kind == "widened" and column is not None and mysql:
        suffix = f" DEFAULT {default}" if default is not None else ""
        return [f"ALTER TABLE {table} MODIFY COLUMN {name} {type_text(column, dialect)} NULL{suffix}"]
    if change.kind == "dropped":
        return [f"ALTER TABLE {table} DROP COLUMN {name}"]
    return []


def run_change(conn: Connection, shape: TableShape, change: ColumnChange) -> None:
    """Execute :func:`change_statements`; a column a concurrent worker already added or dropped
    is fine (MySQL and SQLite have no ``IF [NOT] EXISTS`` for columns)."""
    for text in change_statements(shape, change, conn.dialect):
        statement = text
        if conn.dialect.paramstyle in ("format", "pyformat"):
            statement = text.replace("%", "%%")  # the driver %-formats even without parameters
        try:
            conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).lower()
            if "duplicate column" in reason or ("drop" in statement.lower() and "no such column" in reason):
                continue
            raise
