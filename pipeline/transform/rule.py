"""One compiled transform rule at run time: the per-table checks of a rule against a table's key and
columns, and the rewriting of one event (filter, reshape, mask, rename, route, added columns, hook)
in the order :mod:`pipeline.transform.transformer` documents. Compiled by
:func:`pipeline.transform.compiler.compile_rule`; nothing here does I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import FatalError, PoisonMessageError
from pipeline.core.events import ChangeEvent, Column, Op, Row, Skip, TableId
from pipeline.core.settings.models import MaskMode
from pipeline.decode.event_factory import make_event
from pipeline.transform.hooks import Hook, call_hook
from pipeline.transform.masking import Masker, UnmaskableValueError
from pipeline.transform.predicate import Predicate, UnknownColumnError

_ROW_OPS = (Op.CREATE, Op.UPDATE, Op.READ)


class TransformConfigError(FatalError, ValueError):
    """Transform rules that cannot work; ``problems`` lists ``transforms[i].key: problem`` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class AddedColumn:
    """One ``add_columns`` entry: output ``name``, its source ``expression`` (``$lsn``, a constant...),
    the function computing its value from the event, and its column schema."""

    name: str
    expression: str
    compute: Callable[[ChangeEvent], Any]
    column: Column


def _fill(pattern: str, table: TableId) -> str:
    return pattern.replace("{schema}", table.schema).replace("{table}", table.table)


@dataclass(slots=True)
class CompiledRule:
    """One compiled :class:`~pipeline.core.settings.models.TransformRule` (``transforms[index]``).

    Column names in ``where``/``include``/``exclude``/``masks``/``rename`` are the rule's input
    names; ``added`` names are output names. Caches are per table shape; not thread-safe.
    """

    index: int
    match: str
    ops: frozenset[Op] | None
    where: Predicate | None
    include: frozenset[str] | None
    exclude: frozenset[str]
    rename: dict[str, str]
    masks: dict[str, Masker]
    mask_modes: dict[str, MaskMode]
    route: tuple[str, str] | None
    added: tuple[AddedColumn, ...]
    hook: Hook | None
    hook_name: str | None
    reshapes: bool = False
    rewrites: bool = field(init=False, default=False)
    hook_where: str = field(init=False, default="")
    columns_cache: dict[int, tuple[tuple[Column, ...], tuple[Column, ...]]] = field(default_factory=dict)
    checked: set[tuple[TableId, tuple[str, ...], int]] = field(default_factory=set)
    targets: dict[TableId, TableId] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rewrites = bool(self.reshapes or self.added or self.route is not None)
        self.hook_where = f"{self.label}.hook {self.hook_name}"

    @property
    def label(self) -> str:
        """``transforms[i]``, the prefix of every problem and poison reason of this rule."""
        return f"transforms[{self.index}]"

    def dropped(self, name: str) -> bool:
        """Whether input column ``name`` is removed by ``include``/``exclude``."""
        return (self.include is not None and name not in self.include) or name in self.exclude

    # ----------------------------------------------------------------- per-table checks

    def check(self, event: ChangeEvent, remember: bool = True) -> None:
        """Validate this rule against the event's key and columns (cached per table shape).

        Raises :class:`TransformConfigError` when a key column is dropped or masked, ``where``
        names a missing column, or added/renamed columns clash.
        """
        columns = event.columns
        marker = (event.table, event.key_columns, id(columns) if columns is not None else 0)
        if marker in self.checked:
            return
        problems = self._key_problems(event.table, event.key_columns)
        if columns is not None:
            problems.extend(self._column_problems(event.table, columns))
        if problems:
            raise TransformConfigError(problems)
        if remember:
            self.checked.add(marker)

    def _key_problems(self, table: TableId, key_columns: tuple[str, ...]) -> list[str]:
        problems: list[str] = []
        for key in key_columns:
            if self.dropped(key):
                how = "excluded" if key in self.exclude else "not in include"
                problems.append(
                    f"{self.label}: key column {key!r} of {table} is {how}; "
                    "the key is what deduplicates rows in the target"
                )
            if key in self.masks:
                problems.append(
                    f"{self.label}.mask: {key!r} is a key column of {table}; masking it would break "
                    "the dedup key (mask a copy of it, or route to a table with another key)"
                )
        return problems

    def _column_problems(self, table: TableId, columns: tuple[Column, ...]) -> list[str]:
        problems: list[str] = []
        names = {c.name for c in columns}
        if self.where is not None:
            missing = sorted(self.where.columns - names)
            if missing:
                problems.append(
                    f"{self.label}.where: {table} has no column {', '.join(map(repr, missing))} "
                    f"(columns: {', '.join(sorted(names))})"
                )
        out_names = [self.rename.get(n, n) for n in names if not self.dropped(n)]
        for added in self.added:
            if added.name in out_names:
                problems.append(f"{self.label}.add_columns: {added.name!r} is already a column of {table}")
        clashes = sorted({n for n in out_names if out_names.count(n) > 1})
        if clashes:
            problems.append(f"{self.label}.rename: {table} would get duplicate columns {clashes}")
        return problems

    # ----------------------------------------------------------------- reshaping

    def _row(self, row: Row) -> Row:
        """A reshaped copy of ``row`` (key order kept); the input is not modified."""
        include, exclude = self.include, self.exclude
        if include is not None:
            out = {k: v for k, v in row.items() if k in include and k not in exclude}
        else:
            out = dict(row)
            for name in exclude:
                out.pop(name, None)
        name = ""
        try:
            for name, masker in self.masks.items():
                if name in out:
                    out[name] = masker(out[name])
        except UnmaskableValueError as exc:
            raise UnmaskableValueError(f"column {name!r}: {exc}") from None
        rename = self.rename
        if rename and not rename.keys().isdisjoint(out):
            out = {rename.get(k, k): v for k, v in out.items()}
        return out

    def columns_for(self, columns: tuple[Column, ...]) -> tuple[Column, ...]:
        """The row schema after this rule (cached per input tuple)."""
        cached = self.columns_cache.get(id(columns))
        if cached is not None and cached[0] is columns:
            return cached[1]
        out: list[Column] = []
        for column in columns:
            if self.dropped(column.name):
                continue
            new = column
            mode = self.mask_modes.get(column.name)
            if mode in ("hash", "redact"):
                new = Column(name=column.name, type="string", optional=column.optional)
            elif mode == "null":
                new = dataclasses.replace(column, optional=True)
            target = self.rename.get(column.name)
            if target is not None:
                new = dataclasses.replace(new, name=target)
            out.append(new)
        out.extend(added.column for added in self.added)
        result = tuple(out)
        if len(self.columns_cache) > 1024:
            self.columns_cache.clear()
        self.columns_cache[id(columns)] = (columns, result)  # keeps `columns` alive: its id stays unique
        return result

    def target(self, table: TableId) -> TableId:
        """The ``route`` target of ``table`` (cached); only for a rule with a route."""
        found = self.targets.get(table)
        if found is None:
            assert self.route is not None
            schema_pattern, table_pattern = self.route
            found = TableId(_fill(schema_pattern, table), _fill(table_pattern, table))
            self.targets[table] = found
        return found

    # ----------------------------------------------------------------- one event

    def apply(self, event: ChangeEvent) -> ChangeEvent | Skip:
        """This rule applied to one event: the rewritten event, or ``Skip(reason="filtered")``.

        Raises :class:`~pipeline.core.errors.PoisonMessageError` when bad input makes the event
        impossible to transform (``where`` literal not comparable with the value, a value that
        cannot be hashed, a hook raising poison); a hook's other exceptions propagate (fatal).
        """
        op = event.op
        if self.ops is not None and op not in self.ops:
            return Skip(event.topic, event.partition, event.offset, "filtered")
        where = self.where
        if where is not None and op in _ROW_OPS and event.after is not None:
            kept = self._filter(where, event, event.after)
            if kept is None:
                return Skip(event.topic, event.partition, event.offset, "filtered")
            event = kept
        if self.rewrites:
            event = self._rewrite(event)
        if self.hook is not None:
            return call_hook(self.hook, self.hook_where, event)
        return event

    def _filter(self, where: Predicate, event: ChangeEvent, after: Row) -> ChangeEvent | None:
        """``event`` when ``where`` holds (or is unknown), None to skip it, or for an update that
        left the replicated subset a delete of its key (the target must drop the row)."""
        try:
            verdict = where.root.test(after, event.unavailable)
        except UnknownColumnError:
            return event
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise PoisonMessageError(
                event.topic,
                event.partition,
                event.offset,
                f"{self.label}.where {where.text!r} cannot be evaluated on {event.table}: {exc}",
            ) from None
        if verdict is True:
            return event
        if event.op is not Op.UPDATE:
            return None
        return dataclasses.replace(event, op=Op.DELETE, before=event.after, after=None, unavailable=frozenset())

    def _rewrite(self, event: ChangeEvent) -> ChangeEvent:
        """Reshape, route and add columns (steps 3-7), building the new event once."""
        if self.reshapes:
            key, before, after, extra, key_columns, unavailable = self._reshape(event)
        else:
            key, before, after, extra = event.key, event.before, event.after, event.extra
            key_columns, unavailable = event.key_columns, event.unavailable
        columns, target = event.columns, event.target
        if columns is not None:
            columns = self.columns_for(columns)
        if self.route is not None:
            target = self.target(event.table)
        if self.added:
            extra = dict(extra)
            for added in self.added:
                extra[added.name] = added.compute(event)
        return make_event(
            event.topic,
            event.partition,
            event.offset,
            event.table,
            event.op,
            event.position,
            event.ts_ms,
            key,
            before,
            after,
            event.tx_id,
            event.snapshot,
            columns,
            key_columns,
            unavailable,
            target,
            extra,
            event.size,
        )

    def _reshape(
        self, event: ChangeEvent
    ) -> tuple[Row | None, Row | None, Row | None, Row, tuple[str, ...], frozenset[str]]:
        """``(key, before, after, extra, key_columns, unavailable)`` after include/exclude, masks
        and rename. Raises PoisonMessageError for a value a mask cannot hash."""
        after, before, extra = event.after, event.before, event.extra
        try:
            if after is not None:
                after = self._row(after)
            if before is not None:
                before = self._row(before)
            if extra:
                extra = self._row(extra)
        except UnmaskableValueError as exc:
            raise PoisonMessageError(
                event.topic, event.partition, event.offset, f"{self.label}.mask on {event.table}: {exc}"
            ) from None
        key, key_columns, unavailable = event.key, event.key_columns, event.unavailable
        rename = self.rename
        if rename:
            if key is not None:
                key = {rename.get(k, k): v for k, v in key.items()}
            key_columns = tuple(rename.get(k, k) for k in key_columns)
        if unavailable:
            unavailable = frozenset(rename.get(n, n) for n in unavailable if not self.dropped(n))
        return key, before, after, extra, key_columns, unavailable
