"""The transform rules of one (pipeline, table) compiled to SQL for the fast path, and the
``COPY`` statements of one chunk.

The rules apply in list order, each to the previous one's output, as in
:meth:`pipeline.transform.transformer.Transformer.apply`; here each output column is a SQL
expression over the source columns: ``include``/``exclude`` drop columns, ``rename`` renames
them, ``route`` picks the target table, ``where`` becomes a SQL condition (three-valued NULL
logic as in :mod:`pipeline.transform.predicate`; literals are untyped, so PostgreSQL reads them
as the column's type the way the predicate coerces them; text compares under ``COLLATE "C"``,
i.e. by code point like Python), ``mask`` ``null`` is a typed NULL, ``redact`` ``'***'`` and
``hash`` the HMAC-SHA256 of :func:`pipeline.transform.masking.mask_value` computed by the
source server from its builtin ``sha256()`` (RFC 2104: ``H((K^opad) || H((K^ipad) || m))``).
The HMAC's pads are session settings set with a bind parameter (:func:`hmac_settings`), never
SQL text: the key stays out of ``pg_stat_activity`` and of statement text in the server log (a
server that logs bind parameters, ``log_statement`` with ``log_parameter_max_length`` not 0,
would log them: the pads are the salt XOR a constant).

Rules the SQL cannot express (hooks, ``add_columns``, a ``hash`` on a type whose text is not
the decoder's value, types outside :data:`FAST_TYPES`) send the table to the rows path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from psycopg import sql

from pipeline.control.bulkload.model import Chunk, ExportedSnapshot, SourceTable
from pipeline.core.events import Column, Op, TableId
from pipeline.transform import predicate as pred
from pipeline.transform.rule import CompiledRule
from pipeline.transform.transformer import Transformer
from sinks.base import PreparedTable

FAST_TYPES = frozenset(
    {
        "int2", "int4", "int8", "oid", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "bytea",
        "uuid", "json", "jsonb", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "numeric",
        "money", "xml", "inet", "cidr", "macaddr", "macaddr8",
    }
)  # fmt: skip
"""Source types (``pg_type.typname``, arrays of them and enums too) whose COPY text the target reads as
the streaming path would write it."""

HASHABLE = frozenset({"text", "varchar", "bpchar", "name", "uuid", "int2", "int4", "int8"})
"""Types whose text output equals the canonical bytes :mod:`pipeline.transform.masking` hashes."""

IPAD_SETTING = "cdc_bulk.hmac_ipad"
OPAD_SETTING = "cdc_bulk.hmac_opad"


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One target column: its schema (for the DDL), the SQL producing it, the type of that SQL
    (``format_type`` text, for the binary decision) and whether its value is an HMAC."""

    name: str
    column: Column
    expr: sql.Composable
    expr_type: str
    hashed: bool = False


@dataclass(frozen=True, slots=True)
class FastPlan:
    """The fast-path plan of one source table for one pipeline."""

    source: TableId
    target: TableId
    columns: tuple[OutputColumn, ...]
    key_columns: tuple[str, ...]
    where: sql.Composable | None

    @property
    def hashes(self) -> bool:
        """True when a column is an HMAC (the job sets :func:`hmac_settings` first)."""
        return any(c.hashed for c in self.columns)


def hmac_pads(salt: bytes) -> tuple[bytes, bytes]:
    """``(K ^ ipad, K ^ opad)`` of HMAC-SHA256 for key ``salt`` (RFC 2104: a key longer than the
    64-byte block is hashed first, then zero-padded to 64 bytes)."""
    key = hashlib.sha256(salt).digest() if len(salt) > 64 else salt
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac_settings(salt: bytes) -> tuple[sql.SQL, tuple[str, str]]:
    """The statement (and its parameters) that sets the pads of ``salt`` for the current
    transaction only (``set_config(..., true)``); run it with parameters, never inlined."""
    ipad, opad = hmac_pads(salt)
    return (
        sql.SQL(f"SELECT set_config('{IPAD_SETTING}', %s, true), set_config('{OPAD_SETTING}', %s, true)"),
        (ipad.hex(), opad.hex()),
    )


def _hash_expr(text: sql.Composable) -> sql.Composed:
    pad = "(SELECT decode(current_setting('{}'), 'hex'))"
    return sql.SQL("encode(sha256({} || sha256({} || convert_to({}, 'UTF8'))), 'hex')").format(
        sql.SQL(pad.format(OPAD_SETTING)), sql.SQL(pad.format(IPAD_SETTING)), text
    )


@dataclass(slots=True)
class _Current:
    """A column between two rules: its SQL, schema, SQL type, source type name, hashed flag."""

    expr: sql.Composable
    column: Column
    expr_type: str
    typname: str
    hashed: bool = False


def _source_columns(table: SourceTable, formatted: dict[str, str], typnames: dict[str, str]) -> dict[str, _Current]:
    out: dict[str, _Current] = {}
    for col in table.columns:
        ident: sql.Composable = sql.Identifier(col.name)
        kind, typ = typnames[col.name], formatted[col.name]
        if kind == "money":
            ident, typ = sql.SQL("{}::numeric").format(ident), "numeric"
        elif kind == "timetz":  # Debezium's ZonedTime is in UTC
            ident = sql.SQL("({} AT TIME ZONE 'UTC')").format(ident)
        out[col.name] = _Current(ident, col, typ, kind)
    return out


def _text_of(cur: _Current) -> sql.Composable:
    """The column's text as the decoder's value has it (``bpchar`` keeps its padding)."""
    if cur.typname == "bpchar":
        return sql.SQL("textin(bpcharout({}))").format(cur.expr)
    return sql.SQL("({})::text").format(cur.expr)


ANY_TYPE = ""
"""``expr_type`` of a NULL: binary COPY sends NULL as length -1, whatever the column type."""


def _mask(cur: _Current, mode: str, column: Column) -> _Current | str:
    """The column after ``mask: {name: mode}`` (``column``: its schema after the rule), or why
    SQL cannot compute it."""
    if mode == "null":
        return _Current(sql.SQL("NULL"), column, ANY_TYPE, cur.typname)
    if mode == "redact":
        redacted = sql.SQL("CASE WHEN {} IS NULL THEN NULL ELSE '***'::text END").format(cur.expr)
        return _Current(redacted, column, "text", "text")
    if cur.hashed or cur.column.type == "array" or cur.typname not in HASHABLE:
        # an array's element type may be hashable, but the streaming path hashes the decoded list as JSON
        kind = f"{cur.typname}[]" if cur.column.type == "array" else cur.typname
        return f"mask 'hash' on column {cur.column.name!r} of type {kind}"
    return _Current(_hash_expr(_text_of(cur)), column, "text", "text", hashed=True)


_SQL_OPS = {"=": "=", "!=": "<>", "<>": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_STRINGY = frozenset({"text", "varchar", "bpchar", "name", "enum"})
WHERE_TYPES = frozenset(
    {"int2", "int4", "int8", "oid", "numeric", "bool", "uuid", "date", "time", "timestamp", "timestamptz", *_STRINGY}
)  # fmt: skip
"""Types a ``where`` comparison reads the same in SQL as in Python (decoded value vs coerced literal;
enums compare as their label text, as the decoder's ``str``). Others (json, interval, arrays...) go
to the rows path; so do floats (Python compares a float with a decimal literal exactly, SQL casts
the literal to float: ``x = 1.1`` differs)."""

_INTEGERS = frozenset({"int2", "int4", "int8", "oid"})


class UnsupportedWhereError(ValueError):
    """A ``where`` comparison SQL would not evaluate like :mod:`pipeline.transform.predicate`."""


def _literal(value: object) -> sql.Composable:
    """An untyped literal: PostgreSQL reads it as the compared column's type."""
    if isinstance(value, bool):
        return sql.Literal("true" if value else "false")
    return sql.Literal(str(value))


def _operand(cur: _Current, literals: Sequence[object] = ()) -> sql.Composable:
    if cur.column.type == "array" or cur.typname not in WHERE_TYPES:
        raise UnsupportedWhereError(f"compares column {cur.column.name!r} of type {cur.typname}")
    if cur.typname in _INTEGERS and any(isinstance(v, Decimal) and v != v.to_integral_value() for v in literals):
        # SQL would fail to read '2.5' as an integer mid-COPY; Python compares the numbers
        raise UnsupportedWhereError(f"compares integer column {cur.column.name!r} with a fraction")
    if cur.typname in _STRINGY:
        return sql.SQL('{} COLLATE "C"').format(_text_of(cur))
    return sql.SQL("({})").format(cur.expr)


def compile_where(node: pred.Node, columns: dict[str, _Current]) -> sql.Composable:
    """``node`` (a parsed ``where``) as a SQL condition over ``columns`` (current name -> column).
    Raises KeyError for a column the table does not have at this point, UnsupportedWhereError
    for a comparison of a type outside :data:`WHERE_TYPES`."""
    if isinstance(node, pred._And | pred._Or):
        joiner = " AND " if isinstance(node, pred._And) else " OR "
        return sql.SQL("({})").format(sql.SQL(joiner).join(compile_where(p, columns) for p in node.parts))
    if isinstance(node, pred._Not):
        return sql.SQL("(NOT {})").format(compile_where(node.part, columns))
    if isinstance(node, pred._IsNull):
        return sql.SQL("(({}) IS {}NULL)").format(columns[node.column].expr, sql.SQL("NOT " if node.negate else ""))
    if isinstance(node, pred._Compare):
        return sql.SQL("({} {} {})").format(
            _operand(columns[node.column], [node.literal]), sql.SQL(_SQL_OPS[node.op]), _literal(node.literal)
        )
    if isinstance(node, pred._In):
        return sql.SQL("({} {}IN ({}))").format(
            _operand(columns[node.column], node.literals),
            sql.SQL("NOT " if node.negate else ""),
            sql.SQL(", ").join(_literal(v) for v in node.literals),
        )
    raise TypeError(f"unknown predicate node {type(node).__name__}")


def _apply_rule(
    rule: CompiledRule, current: dict[str, _Current], keys: tuple[str, ...], wheres: list[sql.Composable]
) -> tuple[dict[str, _Current], tuple[str, ...]] | str:
    if rule.hook is not None:
        return f"{rule.label}.hook"
    if rule.added:
        return f"{rule.label}.add_columns"
    if rule.where is not None:
        try:
            wheres.append(compile_where(rule.where.root, current))
        except KeyError as exc:
            return f"{rule.label}.where names a missing column {exc}"
        except UnsupportedWhereError as exc:
            return f"{rule.label}.where {exc}"
    schema = {c.name: c for c in rule.columns_for(tuple(c.column for c in current.values()))}
    following: dict[str, _Current] = {}
    for name, cur in current.items():
        if rule.dropped(name):
            continue
        new = rule.rename.get(name, name)
        column = schema[new]
        mode = rule.mask_modes.get(name)
        if mode is None:
            following[new] = _Current(cur.expr, column, cur.expr_type, cur.typname, cur.hashed)
            continue
        masked = _mask(cur, mode, column)
        if isinstance(masked, str):
            return f"{rule.label}: {masked}"
        following[new] = masked
    return following, tuple(rule.rename.get(k, k) for k in keys)


def plan_fast(
    transformer: Transformer,
    table: SourceTable,
    formatted: dict[str, str],
    typnames: dict[str, str],
    default_schema: str,
) -> FastPlan | str | None:
    """The fast-path plan of ``table`` (``formatted``: column -> ``format_type`` text;
    ``typnames``: column -> ``pg_type.typname``, ``enum`` for enums, arrays as their element),
    or a string saying why the rows path is needed, or None when the rules keep no read
    (``ops`` without ``r``: the Debezium snapshot path writes nothing either)."""
    unsupported = sorted(n for n, t in typnames.items() if t not in FAST_TYPES and t != "enum")
    if unsupported:
        return f"column types the fast path does not copy: {', '.join(unsupported)}"
    current = _source_columns(table, formatted, typnames)
    keys = table.key_columns
    wheres: list[sql.Composable] = []
    for rule in transformer.rules_for(table.table):
        if rule.ops is not None and Op.READ not in rule.ops:
            return None
        step = _apply_rule(rule, current, keys, wheres)
        if isinstance(step, str):
            return step
        current, keys = step
    target = transformer.target_for(table.table) or TableId(default_schema, table.table.table)
    outputs = tuple(OutputColumn(n, c.column, c.expr, c.expr_type, c.hashed) for n, c in current.items())
    where = sql.SQL(" AND ").join(wheres) if wheres else None
    return FastPlan(table.table, target, outputs, keys, where)


def use_binary(plan: FastPlan, prepared: PreparedTable, allowed: bool) -> bool:
    """Binary COPY when ``allowed`` and every output's SQL type is the target column's type
    (PostgreSQL's binary formats are per type: "COPY", "Binary Format")."""
    if not allowed:
        return False
    return all(c.expr_type in (ANY_TYPE, prepared.column_types.get(c.name)) for c in plan.columns)


def copy_out_sql(
    plan: FastPlan, prepared: PreparedTable, chunk: Chunk, snapshot: ExportedSnapshot, binary: bool
) -> sql.Composed:
    """``COPY (SELECT <outputs>, 0, <consistent lsn>[, row id] FROM ONLY <t> WHERE <ctid range>
    [AND <where>]) TO STDOUT``: the rows of ``chunk`` as the target's COPY columns
    (:func:`copy_in_columns`) expect them. Rows carry ``Position(0, consistent_lsn)``, older
    than every streamed change; a keyless table's row id is ``r:bulk:<slot>:<schema.table>:<ctid>``,
    unique within the snapshot even when ``route`` merges several source tables into one."""
    exprs: list[sql.Composable] = [sql.SQL("{} AS {}").format(c.expr, sql.Identifier(c.name)) for c in plan.columns]
    extras: dict[str, sql.Composable] = {
        "__cdc_commit_lsn": sql.SQL("0::bigint"),
        "__cdc_lsn": sql.SQL("{}::bigint").format(sql.Literal(snapshot.consistent_lsn)),
        "__cdc_row_id": sql.SQL("({} || ctid::text)").format(
            sql.Literal(f"r:bulk:{snapshot.slot_name}:{plan.source}:")
        ),
    }
    exprs.extend(extras[name] for name in prepared.extra_columns)
    conditions: list[sql.Composable] = [sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.first_page},0)"))]
    if chunk.end_page is not None:
        conditions.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.end_page},0)")))
    if plan.where is not None:
        conditions.append(plan.where)
    return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT (FORMAT {})").format(
        sql.SQL(", ").join(exprs),
        sql.Identifier(plan.source.schema, plan.source.table),
        sql.SQL(" AND ").join(conditions),
        sql.SQL("binary" if binary else "text"),
    )


def copy_in_columns(plan: FastPlan, prepared: PreparedTable) -> list[str]:
    """The target columns of the COPY, in the order :func:`copy_out_sql` writes them."""
    return [*(c.name for c in plan.columns), *prepared.extra_columns]
