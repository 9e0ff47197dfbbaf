"""Compiling one :class:`~pipeline.core.settings.models.TransformRule` into a
:class:`~pipeline.transform.rule.CompiledRule`: the predicate parsed, hooks imported, masks keyed,
``add_columns`` expressions resolved, and every problem checkable without a table reported as a
``transforms[i].key: problem`` line."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pipeline.core.events import ChangeEvent, Column, Op
from pipeline.core.settings.models import TransformRule
from pipeline.transform.hooks import Hook, import_hook
from pipeline.transform.masking import make_masker
from pipeline.transform.predicate import Predicate, PredicateError, parse_predicate
from pipeline.transform.rule import AddedColumn, CompiledRule

VARIABLES: dict[str, tuple[Callable[[ChangeEvent], Any], str, bool]] = {
    "$ts_ms": (lambda e: e.ts_ms, "int64", False),
    "$lsn": (lambda e: e.position.lsn, "int64", False),
    "$txid": (lambda e: e.tx_id, "int64", True),
    "$op": (lambda e: e.op.value, "string", False),
    "$table": (lambda e: str(e.table), "string", False),
}
"""``add_columns`` variables: name -> (value of an event, column type, optional)."""


def compile_rule(index: int, rule: TransformRule, salt: bytes | None) -> tuple[CompiledRule | None, list[str]]:
    """``(compiled rule, [])``, or ``(None, problems)`` listing every problem of ``transforms[index]``.

    ``salt`` is the ``hash`` mask key (bytes, or None when the pipeline has no ``mask_salt``).
    """
    label = f"transforms[{index}]"
    problems: list[str] = []
    where = _where(label, rule, problems)
    include = frozenset(rule.include) if rule.include is not None else None
    exclude = frozenset(rule.exclude)
    _check_columns(label, rule, include, exclude, salt, problems)
    route = _route(label, rule.route, problems)
    added = _added_columns(label, rule, problems)
    hook = _hook(label, rule.hook, problems)
    if problems:
        return None, problems
    masks = {name: make_masker(mode, salt) for name, mode in rule.mask.items()}
    compiled = CompiledRule(
        index=index,
        match=rule.match,
        ops=frozenset(Op(o) for o in rule.ops) if rule.ops is not None else None,
        where=where,
        include=include,
        exclude=exclude,
        rename=dict(rule.rename),
        masks=masks,
        mask_modes=dict(rule.mask),
        route=route,
        added=tuple(added),
        hook=hook,
        hook_name=rule.hook,
        reshapes=bool(include is not None or exclude or rule.rename or masks),
    )
    return compiled, []


def _where(label: str, rule: TransformRule, problems: list[str]) -> Predicate | None:
    if rule.where is None:
        return None
    try:
        return parse_predicate(rule.where)
    except PredicateError as exc:
        problems.append(f"{label}.where: {exc} in {rule.where!r}")
        return None


def _check_columns(
    label: str,
    rule: TransformRule,
    include: frozenset[str] | None,
    exclude: frozenset[str],
    salt: bytes | None,
    problems: list[str],
) -> None:
    """include/exclude/mask/rename consistency (no table needed)."""
    if include is not None and include & exclude:
        problems.append(f"{label}: {sorted(include & exclude)} are both included and excluded")
    for name in rule.mask:
        if name in exclude or (include is not None and name not in include):
            problems.append(f"{label}.mask: {name!r} is excluded, so it cannot be masked")
    if "hash" in rule.mask.values() and not salt:
        problems.append(f"{label}.mask: 'hash' needs the pipeline's mask_salt (an unsalted hash of PII is reversible)")
    targets = list(rule.rename.values())
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        problems.append(f"{label}.rename: several columns renamed to {duplicates}")


def _route(label: str, route: str | None, problems: list[str]) -> tuple[str, str] | None:
    """``(schema pattern, table pattern)`` of ``route``, or None (no route, or a problem)."""
    if route is None:
        return None
    schema_part, dot, table_part = route.partition(".")
    leftover = re.sub(r"\{schema\}|\{table\}", "", route)
    if not dot or not schema_part or not table_part:
        problems.append(f"{label}.route: {route!r} must be 'schema.table' (placeholders {{schema}}, {{table}})")
        return None
    if "{" in leftover or "}" in leftover:
        problems.append(f"{label}.route: {route!r} has an unknown placeholder (use {{schema}} and {{table}})")
        return None
    return schema_part, table_part


def _constant(value: str) -> Callable[[ChangeEvent], Any]:
    def compute(event: ChangeEvent) -> Any:
        return value

    return compute


def _added_columns(label: str, rule: TransformRule, problems: list[str]) -> list[AddedColumn]:
    """``add_columns``: a constant string, a ``$variable`` of :data:`VARIABLES`, or ``$$...`` for a
    literal starting with ``$``."""
    added: list[AddedColumn] = []
    for name, expression in rule.add_columns.items():
        if name in rule.rename.values():
            problems.append(f"{label}.add_columns: {name!r} is also a rename target")
        if expression.startswith("$$"):
            constant = expression[1:]
            added.append(AddedColumn(name, expression, _constant(constant), Column(name, "string", optional=False)))
        elif expression.startswith("$"):
            variable = VARIABLES.get(expression)
            if variable is None:
                problems.append(
                    f"{label}.add_columns.{name}: unknown variable {expression!r} "
                    f"(use {', '.join(VARIABLES)}, or '$$' for a literal '$')"
                )
                continue
            compute, kind, optional = variable
            added.append(AddedColumn(name, expression, compute, Column(name, kind, optional=optional)))
        else:
            added.append(AddedColumn(name, expression, _constant(expression), Column(name, "string", optional=False)))
    return added


def _hook(label: str, spec: str | None, problems: list[str]) -> Hook | None:
    if spec is None:
        return None
    found = import_hook(spec)
    if isinstance(found, str):
        problems.append(f"{label}.hook: {found}")
        return None
    return found
