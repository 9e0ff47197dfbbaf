"""Per-table transforms declared in the pipeline YAML (``transforms:``, a list of
:class:`~pipeline.core.settings.models.TransformRule`): :func:`build_transformer` compiles the list
once (predicates parsed, hooks imported, masks keyed); :meth:`Transformer.apply` then rewrites one
:class:`~pipeline.core.events.ChangeEvent` at a time and returns the new event or
``Skip(reason="filtered")``. Nothing here does I/O. The semantics of each step and the error
contract are in ``docs/design/transform.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import SecretStr

from pipeline.core.events import ChangeEvent, Column, Op, Position, Skip, TableId
from pipeline.core.settings.models import MaskMode, TransformRule
from pipeline.transform.compiler import compile_rule
from pipeline.transform.rule import CompiledRule, TransformConfigError


@dataclass(frozen=True, slots=True)
class ColumnReport:
    """How a source table's columns appear in the target, for the verifier.

    - ``target``: the target table (None = the sink's default: same name in the target schema).
    - ``comparable``: target column -> source column whose values must be equal.
    - ``masked``: target column -> ``(source column, mode)``; ``hash`` values can be recomputed
      with :func:`~pipeline.transform.masking.mask_value`, ``redact``/``null`` cannot be compared.
    - ``excluded``: source column -> why it is not in the target.
    - ``added``: target column -> expression (``$lsn``, a constant...); not in the source.
    - ``row_filters``: ``ops``/``where`` filters (``transforms[i].where: ...``): the target holds
      a subset of the rows, so row counts differ by design.
    - ``hooks``: hooks applied; they may change anything, so comparisons are advisory.
    """

    table: TableId
    target: TableId | None
    comparable: dict[str, str]
    masked: dict[str, tuple[str, MaskMode]]
    excluded: dict[str, str]
    added: dict[str, str]
    row_filters: tuple[str, ...]
    hooks: tuple[str, ...]


class Transformer:
    """Compiled transform rules; :meth:`apply` one event at a time. Build with
    :func:`build_transformer`. Not thread-safe (per-table caches)."""

    def __init__(self, rules: Sequence[CompiledRule], salt: bytes | None) -> None:
        self._rules = tuple(rules)
        self._salt = salt
        self._by_table: dict[TableId, tuple[CompiledRule, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def salt(self) -> bytes | None:
        """The ``hash`` mask key, bytes or None (for a verifier recomputing hashes with
        :func:`~pipeline.transform.masking.mask_value`)."""
        return self._salt

    def rules_for(self, table: TableId) -> tuple[CompiledRule, ...]:
        """The compiled rules whose ``match`` glob matches ``schema.table``, in order."""
        found = self._by_table.get(table)
        if found is None:
            name = str(table)
            found = tuple(rule for rule in self._rules if fnmatchcase(name, rule.match))
            self._by_table[table] = found
        return found

    def __call__(self, event: ChangeEvent) -> ChangeEvent | Skip:
        """Same as :meth:`apply`."""
        return self.apply(event)

    def apply(self, event: ChangeEvent) -> ChangeEvent | Skip:
        """Apply the matching rules to ``event``, in list order, each to the previous one's output.

        Returns the (possibly unchanged) event or ``Skip(reason="filtered")``. Raises
        :class:`~pipeline.transform.rule.TransformConfigError` when a rule contradicts the table
        (checked once per table shape; fatal) and :class:`~pipeline.core.errors.PoisonMessageError`
        when bad input makes this event impossible to transform (a ``where`` literal not comparable
        with the value, a value a ``hash`` mask cannot hash, a hook raising poison). Any other
        exception of a hook propagates unchanged (fatal); see :mod:`pipeline.transform.hooks`.
        """
        result: ChangeEvent | Skip = event
        for rule in self.rules_for(event.table):
            assert isinstance(result, ChangeEvent)
            rule.check(result)
            result = rule.apply(result)
            if isinstance(result, Skip):
                return result
        return result

    def validate_table(
        self, table: TableId, key_columns: Sequence[str], columns: Sequence[Column] | None = None
    ) -> None:
        """Check the rules against a table's primary key and (optionally) columns up front.

        The same checks :meth:`apply` makes at the first event of a table (key columns neither
        masked nor excluded, ``where`` columns present, no clashing added/renamed columns), for
        callers that know the source tables at startup (e.g. from the catalog). Raises
        :class:`TransformConfigError`.
        """
        probe = ChangeEvent(
            topic="",
            partition=0,
            offset=0,
            table=table,
            op=Op.READ,
            position=Position(0, 0),
            ts_ms=0,
            columns=tuple(columns) if columns is not None else None,
            key_columns=tuple(key_columns),
        )
        problems: list[str] = []
        for rule in self.rules_for(table):
            try:
                rule.check(probe, remember=False)
            except TransformConfigError as exc:
                problems.extend(exc.problems)
            if probe.columns is not None:
                probe = dataclasses.replace(probe, columns=rule.columns_for(probe.columns))
            if rule.rename:
                probe = dataclasses.replace(probe, key_columns=tuple(rule.rename.get(k, k) for k in probe.key_columns))
        if problems:
            raise TransformConfigError(problems)

    def target_for(self, table: TableId) -> TableId | None:
        """Where rows of ``table`` go (the last matching ``route``), or None for the default."""
        target = None
        for rule in self.rules_for(table):
            if rule.route is not None:
                target = rule.target(table)
        return target

    def column_report(self, table: TableId, columns: Sequence[str]) -> ColumnReport:
        """Which target columns of ``table`` (source ``columns``, in order) a verifier may
        compare with the source, which are masked, excluded or added, and why. Hooks are
        listed but not simulated."""
        current: dict[str, str] = {c: c for c in columns}  # current name -> source name
        masked: dict[str, tuple[str, MaskMode]] = {}
        excluded: dict[str, str] = {}
        added: dict[str, str] = {}
        filters: list[str] = []
        hooks: list[str] = []
        for rule in self.rules_for(table):
            if rule.ops is not None:
                filters.append(f"{rule.label}.ops: {','.join(sorted(o.value for o in rule.ops))}")
            if rule.where is not None:
                filters.append(f"{rule.label}.where: {rule.where.text}")
            following: dict[str, str] = {}
            for name, source in current.items():
                if rule.dropped(name):
                    how = "exclude" if name in rule.exclude else "include"
                    excluded[source] = f"{rule.label}.{how}"
                    masked.pop(name, None)
                    added.pop(name, None)
                    continue
                new = rule.rename.get(name, name)
                following[new] = source
                if name in masked:
                    masked[new] = masked.pop(name)
                if name in added:
                    added[new] = added.pop(name)
                mode = rule.mask_modes.get(name)
                if mode is not None and new not in masked:
                    masked[new] = (source, mode)
            for extra in rule.added:
                following[extra.name] = extra.name
                added[extra.name] = extra.expression
            current = following
            if rule.hook_name is not None:
                hooks.append(f"{rule.label}.hook: {rule.hook_name}")
        comparable = {name: source for name, source in current.items() if name not in masked and name not in added}
        return ColumnReport(
            table=table,
            target=self.target_for(table),
            comparable=comparable,
            masked=masked,
            excluded=excluded,
            added=added,
            row_filters=tuple(filters),
            hooks=tuple(hooks),
        )


def build_transformer(rules: Sequence[TransformRule], mask_salt: SecretStr | str | bytes | None = None) -> Transformer:
    """Compile ``rules`` (``PipelineSettings.transforms``) once.

    ``mask_salt`` is the pipeline's ``mask_salt`` (``SecretStr`` or its value): the HMAC key of
    ``hash`` masks. Raises :class:`TransformConfigError` listing every problem found without
    table knowledge, each as ``transforms[i].key: problem``.
    """
    if isinstance(mask_salt, SecretStr):
        mask_salt = mask_salt.get_secret_value()
    salt = mask_salt.encode("utf-8") if isinstance(mask_salt, str) else mask_salt
    compiled: list[CompiledRule] = []
    problems: list[str] = []
    for index, rule in enumerate(rules):
        result, found = compile_rule(index, rule, salt)
        problems.extend(found)
        if result is not None:
            compiled.append(result)
    if problems:
        raise TransformConfigError(problems)
    return Transformer(compiled, salt)
