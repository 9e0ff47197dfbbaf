"""Sequence sync: every sequence of the captured tables, found in the source catalog (owned by a
serial column: ``pg_depend.deptype = 'a'``; an identity column's: ``'i'``; PostgreSQL docs
"pg_depend"), plus the configured free-standing ones, read on the source (``last_value``,
``is_called``) and set on the target through the Target seam to ``last_value + margin``, so an
insert on the new primary never reuses an id the old one handed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.transform.transformer import build_transformer
from sinks.base import SequenceSpec, TargetCutover

OWNED_QUERY = """
SELECT sn.nspname AS seq_schema, s.relname AS seq_name, tn.nspname AS table_schema, t.relname AS table_name,
       a.attname AS column_name, CASE d.deptype WHEN 'i' THEN 'identity' ELSE 'owned' END AS kind
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  AND (tn.nspname || '.' || t.relname) = ANY(%s)
ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class SourceSequence:
    """A source sequence: where it is, what it feeds on the source, its ``last_value`` and
    ``is_called`` (False: never used; ``nextval`` returns ``last_value`` itself)."""

    name: TableId
    kind: str
    table: TableId | None
    column: str | None
    last_value: int
    is_called: bool


@dataclass(frozen=True, slots=True)
class SequenceSync:
    """One sequence's sync: source value, the value set on the target (``last_value + margin``),
    the target's value before, and what the target set (``target``)."""

    name: str
    kind: str
    table: str | None
    source_value: int
    target_before: int | None
    value: int | None
    target: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def target_value(seq: SourceSequence, margin: int) -> int:
    """The value set on the target: the source's ``last_value`` plus ``margin`` (pure; an unused
    source sequence counts as ``last_value - 1``, so its first value stays free)."""
    used = seq.last_value if seq.is_called else seq.last_value - 1
    return used + margin


def discover(conn: psycopg.Connection[Any], tables: Sequence[TableId], free: Sequence[str]) -> list[SourceSequence]:
    """The owned and identity sequences of ``tables`` and the free-standing ``free``
    (``schema.name``), with their current values. Raises psycopg.Error (a missing free-standing
    sequence: UndefinedTable)."""
    found: list[tuple[TableId, str, TableId | None, str | None]] = []
    cur = conn.execute(OWNED_QUERY, ([str(t) for t in tables],))
    names = [d.name for d in cur.description or []]
    for raw in cur.fetchall():
        row = dict(zip(names, raw.values() if isinstance(raw, dict) else raw, strict=True))
        found.append(
            (
                TableId(row["seq_schema"], row["seq_name"]),
                row["kind"],
                TableId(row["table_schema"], row["table_name"]),
                row["column_name"],
            )
        )
    known = {f[0] for f in found}
    for name in free:
        seq = TableId(*name.split(".", 1))
        if seq not in known:
            found.append((seq, "free", None, None))
    out = []
    for seq, kind, table, column in found:
        current = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq.schema, seq.table))
        ).fetchone()
        values = list(current.values()) if isinstance(current, dict) else list(current or (0, False))
        out.append(SourceSequence(seq, kind, table, column, int(values[0]), bool(values[1])))
    return out


def target_spec(pipeline: PipelineSettings, seq: SourceSequence) -> SequenceSpec:
    """The :class:`sinks.base.SequenceSpec` on the target: the table routed like the sink routes
    it (the last matching transform ``route``, else ``<target.schema>.<table>``; column renames
    of transforms are applied)."""
    if seq.table is None:
        return SequenceSpec(seq.name, seq.kind)
    transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
    table = transformer.target_for(seq.table) or TableId(pipeline.target.schema_name, seq.table.table)
    column = seq.column
    if column is not None:
        report = transformer.column_report(seq.table, [column])
        column = next((t for t, s in report.comparable.items() if s == seq.column), column)
    return SequenceSpec(seq.name, seq.kind, table, column)


def read_target(store: TargetCutover, pipeline: PipelineSettings, seqs: Sequence[SourceSequence]) -> list[SequenceSync]:
    """Each sequence's source and current target values (``cutover plan``: nothing is set)."""
    out = []
    for seq in seqs:
        spec = target_spec(pipeline, seq)
        out.append(
            SequenceSync(
                str(seq.name),
                seq.kind,
                str(spec.table) if spec.table else None,
                seq.last_value,
                store.read_sequence(spec),
                None,
                "",
            )
        )
    return out


def sync(
    store: TargetCutover, pipeline: PipelineSettings, seqs: Sequence[SourceSequence], margin: int
) -> list[SequenceSync]:
    """Set every sequence on the target to ``last_value + margin``. Raises what the target raises
    (ValueError: the backend has no such sequence), TransientSinkError."""
    out = []
    for seq in seqs:
        spec = target_spec(pipeline, seq)
        before = store.read_sequence(spec)
        value = target_value(seq, margin)
        where = store.set_sequence(spec, value)
        out.append(
            SequenceSync(
                str(seq.name), seq.kind, str(spec.table) if spec.table else None, seq.last_value, before, value, where
            )
        )
    return out
