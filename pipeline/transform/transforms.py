"""Per-table transforms declared in the pipeline YAML (:class:`~pipeline.core.settings.TransformRule`).

:func:`build_transformer` compiles a list of rules once (predicates parsed, hooks imported,
masks keyed); :meth:`Transformer.apply` then rewrites one :class:`~pipeline.core.events.ChangeEvent`
at a time and returns the new event or ``Skip(reason="filtered")``. Nothing here does I/O.

Semantics, in the order a rule applies them to an event of a table whose ``schema.table``
matches the rule's ``match`` glob (:func:`fnmatch.fnmatchcase`; rules apply in list order, each
to the output of the previous one):

1. ``ops``: events whose op is not listed are skipped (``filtered``).
2. ``where``: a predicate over the new row image (``after``) of ``c``/``u``/``r`` events, see
   :func:`parse_predicate`. A create or read that does not match is skipped; an *update* that
   does not match becomes a *delete* of its key (the row left the replicated subset, so the
   target must drop it). Deletes and truncates always pass. When the predicate reads a column
   whose value is the unchanged-TOAST placeholder (``event.unavailable``), the value is unknown
   and the event is kept.
3. ``include``/``exclude``: columns dropped from ``before``/``after``/``extra``/``columns``.
4. ``mask``: ``hash`` = hex HMAC-SHA256 keyed by the pipeline's ``mask_salt`` over the value's
   canonical bytes (:func:`mask_value`), ``redact`` = ``"***"``, ``null`` = None; NULL stays
   NULL. Applied to ``after``, ``before`` and ``extra``; ``hash``/``redact`` columns become
   ``string`` columns in ``columns``.
5. ``rename``: source name -> target name, in rows, ``key``, ``key_columns``, ``unavailable``
   and ``columns``.
6. ``route``: ``event.target`` from a ``schema.table`` pattern with ``{schema}``/``{table}``.
7. ``add_columns``: into ``event.extra`` (and ``columns``): a constant string, or ``$ts_ms``,
   ``$lsn`` (``position.lsn``), ``$txid``, ``$op``, ``$table`` (``schema.table``); ``$$`` at
   the start escapes a literal ``$``.
8. ``hook``: ``module:function`` imported at build time; called with the event, returns a
   ChangeEvent or None (= skip as ``filtered``).

Within one rule every column name (``where``, ``include``, ``exclude``, ``mask``, ``rename``
keys) is a name of the rule's *input* (before its own rename); ``add_columns`` names are output
names.

Errors: :class:`TransformConfigError` (a ValueError) for rules that cannot work - raised by
:func:`build_transformer` for everything checkable without a table (bad predicate, unknown
``$variable``, bad route, hook not importable, ``hash`` without salt...) and by
:meth:`Transformer.apply` the first time a table's key or columns contradict a rule (a key
column masked or excluded, ``where`` naming a column the table does not have, an added column
clashing with a row column). Such errors are configuration errors: the worker must stop, not
dead-letter. :class:`~pipeline.core.errors.PoisonMessageError` for one event that cannot be
transformed (a hook raising, a predicate literal not comparable with the value).
"""

from __future__ import annotations

import dataclasses
import hmac
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any, TypeAlias
from uuid import UUID

import orjson
from pydantic import SecretStr

from pipeline.core.errors import FatalError, PoisonMessageError
from pipeline.core.events import ChangeEvent, Column, Op, Position, Row, Skip, TableId
from pipeline.core.settings.models import MaskMode, TransformRule
from pipeline.decode.decoder import make_event

__all__ = [
    "REDACTED",
    "ColumnReport",
    "Predicate",
    "PredicateError",
    "TransformConfigError",
    "Transformer",
    "build_transformer",
    "mask_value",
    "parse_predicate",
]

REDACTED = "***"
"""The value of ``redact``-masked columns."""

Hook: TypeAlias = Callable[[ChangeEvent], ChangeEvent | None]
Masker: TypeAlias = Callable[[Any], Any]

_ROW_OPS = (Op.CREATE, Op.UPDATE, Op.READ)


class TransformConfigError(FatalError, ValueError):
    """Transform rules that cannot work; ``problems`` lists ``transforms[i].key: problem`` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class PredicateError(ValueError):
    """A ``where`` text that does not parse; the message names the position."""


# =========================================================================== predicates

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<op><=|>=|<>|!=|=|<|>)
      | (?P<punct>[(),])
      | (?P<quoted>"(?:[^"]|"")+")
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false"}

Literal_: TypeAlias = str | int | Decimal | bool


class _UnknownError(Exception):
    """Internal: the predicate reads an unavailable (unchanged TOAST) column."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    end = len(text.rstrip())
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise PredicateError(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos + 1}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        start = match.start(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        tokens.append(_Token(kind, value, start))
        pos = match.end()
    return tokens


class _Node:
    """A predicate node; ``test`` returns True, False or None (SQL unknown)."""

    __slots__ = ()

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        raise NotImplementedError


class _And(_Node):
    __slots__ = ("parts",)

    def __init__(self, parts: list[_Node]) -> None:
        self.parts = parts

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        result: bool | None = True
        for part in self.parts:
            value = part.test(row, unavailable)
            if value is False:
                return False
            if value is None:
                result = None
        return result


class _Or(_Node):
    __slots__ = ("parts",)

    def __init__(self, parts: list[_Node]) -> None:
        self.parts = parts

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        result: bool | None = False
        for part in self.parts:
            value = part.test(row, unavailable)
            if value is True:
                return True
            if value is None:
                result = None
        return result


class _Not(_Node):
    __slots__ = ("part",)

    def __init__(self, part: _Node) -> None:
        self.part = part

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        value = self.part.test(row, unavailable)
        return None if value is None else not value


def _read(row: Row, column: str, unavailable: frozenset[str]) -> Any:
    if column in row:
        return row[column]
    if column in unavailable:
        raise _UnknownError(column)
    return None


class _IsNull(_Node):
    __slots__ = ("column", "negate")

    def __init__(self, column: str, negate: bool) -> None:
        self.column = column
        self.negate = negate

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        return (_read(row, self.column, unavailable) is None) is not self.negate


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<>": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    ">": lambda a, b: bool(a > b),
    "<=": lambda a, b: bool(a <= b),
    ">=": lambda a, b: bool(a >= b),
}


def _coerce(literal: Literal_, sample: Any) -> Any:
    """The literal as a value comparable with ``sample`` (a decoded column value).

    Raises ValueError/TypeError when the literal cannot stand for such a value.
    """
    if isinstance(sample, bool):
        if isinstance(literal, bool):
            return literal
        if isinstance(literal, str) and literal.lower() in ("true", "false"):
            return literal.lower() == "true"
        raise TypeError(f"cannot compare a boolean with {literal!r}")
    if isinstance(sample, int | float | Decimal):
        if isinstance(literal, bool):
            raise TypeError(f"cannot compare a number with {literal!r}")
        if isinstance(literal, int | Decimal):
            return literal
        return Decimal(literal)
    if isinstance(sample, str):
        if isinstance(literal, bool):
            return "true" if literal else "false"
        return literal if isinstance(literal, str) else str(literal)
    if not isinstance(literal, str):
        raise TypeError(f"cannot compare a {type(sample).__name__} with {literal!r}")
    if isinstance(sample, datetime):
        parsed = datetime.fromisoformat(literal)
        if sample.tzinfo is not None and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed
    if isinstance(sample, date):
        return date.fromisoformat(literal)
    if isinstance(sample, time):
        return time.fromisoformat(literal)
    if isinstance(sample, UUID):
        return UUID(literal)
    raise TypeError(f"cannot compare a {type(sample).__name__} with {literal!r}")


class _Compare(_Node):
    __slots__ = ("cache", "column", "literal", "op")

    def __init__(self, column: str, op: str, literal: Literal_) -> None:
        self.column = column
        self.op = op
        self.literal = literal
        self.cache: dict[type, Any] = {}

    def _literal_for(self, value: Any) -> Any:
        kind = type(value)
        try:
            return self.cache[kind]
        except KeyError:
            coerced = _coerce(self.literal, value)
            self.cache[kind] = coerced
            return coerced

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        value = _read(row, self.column, unavailable)
        if value is None:
            return None
        return _COMPARE[self.op](value, self._literal_for(value))


class _In(_Node):
    __slots__ = ("cache", "column", "literals", "negate")

    def __init__(self, column: str, literals: list[Literal_], negate: bool) -> None:
        self.column = column
        self.literals = literals
        self.negate = negate
        self.cache: dict[type, list[Any]] = {}

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        value = _read(row, self.column, unavailable)
        if value is None:
            return None
        kind = type(value)
        options = self.cache.get(kind)
        if options is None:
            options = [_coerce(lit, value) for lit in self.literals]
            self.cache[kind] = options
        return any(value == option for option in options) is not self.negate


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.columns: list[str] = []

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _fail(self, expected: str) -> PredicateError:
        token = self._peek()
        if token is None:
            return PredicateError(f"expected {expected} at the end")
        return PredicateError(f"expected {expected} at position {token.pos + 1}, found {token.text!r}")

    def _take(self, kind: str, text: str | None = None) -> _Token | None:
        token = self._peek()
        if token is not None and token.kind == kind and (text is None or token.text == text):
            self.i += 1
            return token
        return None

    def parse(self) -> _Node:
        if not self.tokens:
            raise PredicateError("empty predicate")
        node = self._or()
        if self._peek() is not None:
            raise self._fail("'and', 'or' or the end")
        return node

    def _or(self) -> _Node:
        parts = [self._and()]
        while self._take("kw", "or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _Or(parts)

    def _and(self) -> _Node:
        parts = [self._not()]
        while self._take("kw", "and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else _And(parts)

    def _not(self) -> _Node:
        if self._take("kw", "not"):
            return _Not(self._not())
        if self._take("punct", "("):
            node = self._or()
            if not self._take("punct", ")"):
                raise self._fail("')'")
            return node
        return self._comparison()

    def _column(self) -> str:
        token = self._take("word") or self._take("quoted")
        if token is None:
            raise self._fail("a column name")
        name = token.text[1:-1].replace('""', '"') if token.kind == "quoted" else token.text
        self.columns.append(name)
        return name

    def _literal(self) -> Literal_:
        token = self._peek()
        if token is None:
            raise self._fail("a literal")
        self.i += 1
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "number":
            text = token.text
            if re.fullmatch(r"[-+]?\d+", text):
                return int(text)
            return Decimal(text)
        if token.kind == "kw" and token.text in ("true", "false"):
            return token.text == "true"
        if token.kind == "kw" and token.text == "null":
            self.i -= 1
            raise PredicateError(f"comparison with null at position {token.pos + 1}: write 'is null' / 'is not null'")
        self.i -= 1
        raise self._fail("a literal ('text', a number, true or false)")

    def _comparison(self) -> _Node:
        column = self._column()
        if self._take("kw", "is"):
            negate = bool(self._take("kw", "not"))
            if not self._take("kw", "null"):
                raise self._fail("'null'")
            return _IsNull(column, negate)
        negate = bool(self._take("kw", "not"))
        if self._take("kw", "in"):
            if not self._take("punct", "("):
                raise self._fail("'('")
            literals = [self._literal()]
            while self._take("punct", ","):
                literals.append(self._literal())
            if not self._take("punct", ")"):
                raise self._fail("',' or ')'")
            return _In(column, literals, negate)
        if negate:
            raise self._fail("'in'")
        op = self._take("op")
        if op is None:
            raise self._fail("an operator (=, !=, <>, <, >, <=, >=, is, in)")
        return _Compare(column, op.text, self._literal())


@dataclass(frozen=True, slots=True)
class Predicate:
    """A parsed ``where`` predicate (see :func:`parse_predicate`)."""

    text: str
    columns: frozenset[str]
    root: _Node = field(repr=False, compare=False)

    def test(self, row: Row, unavailable: frozenset[str] = frozenset()) -> bool | None:
        """True, False, or None when a column it reads is in ``unavailable`` (unknown).

        NULL follows SQL: comparisons with NULL are unknown, and unknown is not True.
        Raises ValueError/TypeError when a literal cannot be compared with the row's value
        (e.g. ``amount > 'abc'`` on a numeric column).
        """
        try:
            result = self.root.test(row, unavailable)
        except _UnknownError:
            return None
        return result is True


def parse_predicate(text: str) -> Predicate:
    """Parse a ``where`` predicate; never evaluates code.

    Grammar (keywords case-insensitive)::

        expr       := term ("or" term)*
        term       := factor ("and" factor)*
        factor     := "not" factor | "(" expr ")" | comparison
        comparison := column ("=" | "!=" | "<>" | "<" | ">" | "<=" | ">=") literal
                    | column "is" ["not"] "null"
                    | column ["not"] "in" "(" literal ("," literal)* ")"
        column     := name | "double-quoted name"
        literal    := 'text' ('' escapes a quote) | number | true | false

    String literals compare with timestamps, dates, times and UUIDs by parsing them as such
    (a timestamp literal without offset is UTC when the column has a zone); numbers compare
    exactly (Decimal). Raises :class:`PredicateError` naming the position of the problem.
    """
    parser = _Parser(text)
    root = parser.parse()
    return Predicate(text=text, columns=frozenset(parser.columns), root=root)


# =========================================================================== masks


def _canonical(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int | Decimal | UUID):
        return str(value).encode("ascii")
    if isinstance(value, float):
        return repr(value).encode("ascii")
    if isinstance(value, datetime | date | time):
        return value.isoformat().encode("ascii")
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SORT_KEYS)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def mask_value(mode: MaskMode, value: Any, salt: bytes | None = None) -> Any:
    """The masked form of one column value; None stays None.

    ``hash``: lowercase hex HMAC-SHA256 with key ``salt`` over the value's canonical bytes
    (str: UTF-8; bytes: as is; bool: ``true``/``false``; int/Decimal/UUID: ``str()``; float:
    ``repr()``; date/time/datetime: ``isoformat()``; lists/dicts: sorted-key JSON). A verifier
    can recompute it from the source value. ``redact``: ``"***"``. ``null``: None.
    Raises ValueError for ``hash`` without a salt.
    """
    if value is None:
        return None
    if mode == "hash":
        if not salt:
            raise ValueError("mask 'hash' needs a salt")
        return hmac.digest(salt, _canonical(value), "sha256").hex()
    if mode == "redact":
        return REDACTED
    return None


def _masker(mode: MaskMode, salt: bytes | None) -> Masker:
    if mode == "hash":
        assert salt
        key = salt

        def hash_mask(value: Any) -> Any:
            return None if value is None else hmac.digest(key, _canonical(value), "sha256").hex()

        return hash_mask
    if mode == "redact":
        return lambda value: None if value is None else REDACTED
    return lambda value: None


# =========================================================================== rules

_VARIABLES: dict[str, tuple[Callable[[ChangeEvent], Any], str, bool]] = {
    "$ts_ms": (lambda e: e.ts_ms, "int64", False),
    "$lsn": (lambda e: e.position.lsn, "int64", False),
    "$txid": (lambda e: e.tx_id, "int64", True),
    "$op": (lambda e: e.op.value, "string", False),
    "$table": (lambda e: str(e.table), "string", False),
}


@dataclass(frozen=True, slots=True)
class _Added:
    name: str
    expression: str
    compute: Callable[[ChangeEvent], Any]
    column: Column


@dataclass(slots=True)
class _Rule:
    """One compiled :class:`TransformRule`."""

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
    added: tuple[_Added, ...]
    hook: Hook | None
    hook_name: str | None
    reshapes: bool = False
    columns_cache: dict[int, tuple[tuple[Column, ...], tuple[Column, ...]]] = field(default_factory=dict)
    checked: set[tuple[TableId, tuple[str, ...], int]] = field(default_factory=set)
    targets: dict[TableId, TableId] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"transforms[{self.index}]"

    def dropped(self, name: str) -> bool:
        return (self.include is not None and name not in self.include) or name in self.exclude

    # ----------------------------------------------------------------- per-table checks

    def check(self, event: ChangeEvent, remember: bool = True) -> None:
        """Validate this rule against the event's key and columns (cached per table shape)."""
        columns = event.columns
        marker = (event.table, event.key_columns, id(columns) if columns is not None else 0)
        if marker in self.checked:
            return
        problems: list[str] = []
        for key in event.key_columns:
            if self.dropped(key):
                how = "excluded" if key in self.exclude else "not in include"
                problems.append(
                    f"{self.label}: key column {key!r} of {event.table} is {how}; "
                    "the key is what deduplicates rows in the target"
                )
            if key in self.masks:
                problems.append(
                    f"{self.label}.mask: {key!r} is a key column of {event.table}; masking it would break "
                    "the dedup key (mask a copy of it, or route to a table with another key)"
                )
        if columns is not None:
            names = {c.name for c in columns}
            if self.where is not None:
                missing = sorted(self.where.columns - names)
                if missing:
                    problems.append(
                        f"{self.label}.where: {event.table} has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(sorted(names))})"
                    )
            out_names = [self.rename.get(n, n) for n in names if not self.dropped(n)]
            for added in self.added:
                if added.name in out_names:
                    problems.append(f"{self.label}.add_columns: {added.name!r} is already a column of {event.table}")
            clashes = sorted({n for n in out_names if out_names.count(n) > 1})
            if clashes:
                problems.append(f"{self.label}.rename: {event.table} would get duplicate columns {clashes}")
        if problems:
            raise TransformConfigError(problems)
        if remember:
            self.checked.add(marker)

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
        for name, masker in self.masks.items():
            if name in out:
                out[name] = masker(out[name])
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
        found = self.targets.get(table)
        if found is None:
            assert self.route is not None
            schema_pattern, table_pattern = self.route
            found = TableId(_fill(schema_pattern, table), _fill(table_pattern, table))
            self.targets[table] = found
        return found

    # ----------------------------------------------------------------- one event

    def apply(self, event: ChangeEvent) -> ChangeEvent | Skip:
        op = event.op
        if self.ops is not None and op not in self.ops:
            return Skip(event.topic, event.partition, event.offset, "filtered")
        if self.where is not None and op in _ROW_OPS and event.after is not None:
            try:
                verdict = self.where.root.test(event.after, event.unavailable)
            except _UnknownError:
                verdict = True
            except (ValueError, TypeError, ArithmeticError, InvalidOperation) as exc:
                raise PoisonMessageError(
                    event.topic,
                    event.partition,
                    event.offset,
                    f"{self.label}.where {self.where.text!r} cannot be evaluated on {event.table}: {exc}",
                ) from None
            if verdict is not True:
                if op is not Op.UPDATE:
                    return Skip(event.topic, event.partition, event.offset, "filtered")
                # The row no longer belongs to the replicated subset: delete it in the target.
                event = dataclasses.replace(
                    event, op=Op.DELETE, before=event.after, after=None, unavailable=frozenset()
                )
        if not (self.reshapes or self.added or self.route is not None):
            return event if self.hook is None else self._call_hook(event)
        key, before, after, extra = event.key, event.before, event.after, event.extra
        key_columns, unavailable, columns, target = event.key_columns, event.unavailable, event.columns, event.target
        if self.reshapes:
            if after is not None:
                after = self._row(after)
            if before is not None:
                before = self._row(before)
            if extra:
                extra = self._row(extra)
            rename = self.rename
            if rename:
                if key is not None:
                    key = {rename.get(k, k): v for k, v in key.items()}
                key_columns = tuple(rename.get(k, k) for k in key_columns)
            if unavailable:
                unavailable = frozenset(rename.get(n, n) for n in unavailable if not self.dropped(n))
        if columns is not None:
            columns = self.columns_for(columns)
        if self.route is not None:
            target = self.target(event.table)
        if self.added:
            extra = dict(extra)
            for added in self.added:
                extra[added.name] = added.compute(event)
        event = make_event(
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
        if self.hook is not None:
            return self._call_hook(event)
        return event

    def _call_hook(self, event: ChangeEvent) -> ChangeEvent | Skip:
        assert self.hook is not None
        try:
            result = self.hook(event)
        except Exception as exc:  # any failure of custom code is this event's failure
            raise PoisonMessageError(
                event.topic,
                event.partition,
                event.offset,
                f"{self.label}.hook {self.hook_name} raised {type(exc).__name__}: {exc}",
            ) from exc
        if result is None:
            return Skip(event.topic, event.partition, event.offset, "filtered")
        if not isinstance(result, ChangeEvent):
            raise PoisonMessageError(
                event.topic,
                event.partition,
                event.offset,
                f"{self.label}.hook {self.hook_name} returned {type(result).__name__}, not ChangeEvent or None",
            )
        return result


def _constant(value: str) -> Callable[[ChangeEvent], Any]:
    def compute(event: ChangeEvent) -> Any:
        return value

    return compute


def _fill(pattern: str, table: TableId) -> str:
    return pattern.replace("{schema}", table.schema).replace("{table}", table.table)


def _compile_rule(index: int, rule: TransformRule, salt: bytes | None) -> tuple[_Rule | None, list[str]]:
    label = f"transforms[{index}]"
    problems: list[str] = []
    where = None
    if rule.where is not None:
        try:
            where = parse_predicate(rule.where)
        except PredicateError as exc:
            problems.append(f"{label}.where: {exc} in {rule.where!r}")
    include = frozenset(rule.include) if rule.include is not None else None
    exclude = frozenset(rule.exclude)
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
    route = None
    if rule.route is not None:
        schema_part, dot, table_part = rule.route.partition(".")
        leftover = re.sub(r"\{schema\}|\{table\}", "", rule.route)
        if not dot or not schema_part or not table_part:
            problems.append(
                f"{label}.route: {rule.route!r} must be 'schema.table' (placeholders {{schema}}, {{table}})"
            )
        elif "{" in leftover or "}" in leftover:
            problems.append(f"{label}.route: {rule.route!r} has an unknown placeholder (use {{schema}} and {{table}})")
        else:
            route = (schema_part, table_part)
    added: list[_Added] = []
    for name, expression in rule.add_columns.items():
        if name in rule.rename.values():
            problems.append(f"{label}.add_columns: {name!r} is also a rename target")
        if expression.startswith("$$"):
            constant = expression[1:]
            added.append(_Added(name, expression, _constant(constant), Column(name, "string", optional=False)))
        elif expression.startswith("$"):
            variable = _VARIABLES.get(expression)
            if variable is None:
                problems.append(
                    f"{label}.add_columns.{name}: unknown variable {expression!r} "
                    f"(use {', '.join(_VARIABLES)}, or '$$' for a literal '$')"
                )
                continue
            compute, kind, optional = variable
            added.append(_Added(name, expression, compute, Column(name, kind, optional=optional)))
        else:
            added.append(_Added(name, expression, _constant(expression), Column(name, "string", optional=False)))
    hook = None
    if rule.hook is not None:
        module_name, _, function_name = rule.hook.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import failure is a configuration problem
            problems.append(f"{label}.hook: cannot import module {module_name!r}: {type(exc).__name__}: {exc}")
        else:
            found = getattr(module, function_name, None)
            if not callable(found):
                problems.append(f"{label}.hook: module {module_name!r} has no function {function_name!r}")
            else:
                hook = found
    if problems:
        return None, problems
    masks = {name: _masker(mode, salt) for name, mode in rule.mask.items()}
    compiled = _Rule(
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


# =========================================================================== transformer


@dataclass(frozen=True, slots=True)
class ColumnReport:
    """How a source table's columns appear in the target, for the verifier.

    - ``target``: the target table (None = the sink's default: same name in the target schema).
    - ``comparable``: target column -> source column whose values must be equal.
    - ``masked``: target column -> ``(source column, mode)``; ``hash`` values can be recomputed
      with :func:`mask_value`, ``redact``/``null`` cannot be compared.
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

    def __init__(self, rules: Sequence[_Rule], salt: bytes | None) -> None:
        self._rules = tuple(rules)
        self._salt = salt
        self._by_table: dict[TableId, tuple[_Rule, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def salt(self) -> bytes | None:
        """The ``hash`` mask key (for a verifier recomputing hashes with :func:`mask_value`)."""
        return self._salt

    def rules_for(self, table: TableId) -> tuple[_Rule, ...]:
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
        """Apply the matching rules to ``event``.

        Returns the (possibly unchanged) event or ``Skip(reason="filtered")``. Raises
        :class:`TransformConfigError` when a rule contradicts the table (checked once per table
        shape; fatal) and :class:`~pipeline.core.errors.PoisonMessageError` when this event cannot
        be transformed.
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
    compiled: list[_Rule] = []
    problems: list[str] = []
    for index, rule in enumerate(rules):
        result, found = _compile_rule(index, rule, salt)
        problems.extend(found)
        if result is not None:
            compiled.append(result)
    if problems:
        raise TransformConfigError(problems)
    return Transformer(compiled, salt)
