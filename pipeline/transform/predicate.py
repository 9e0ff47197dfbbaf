"""The ``where:`` predicate language of transform rules: a tokenizer, a recursive-descent parser and
an evaluator with SQL's three-valued NULL logic. It parses a tiny grammar and never evaluates code
(see :func:`parse_predicate`); literals are coerced once per column value type and cached."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, TypeAlias
from uuid import UUID

from pipeline.core.events import Row


class PredicateError(ValueError):
    """A ``where`` text that does not parse; the message names the position."""


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


class UnknownColumnError(Exception):
    """Raised by a node's ``test`` when the predicate reads an unavailable (unchanged TOAST) column:
    the value, and so the verdict, is unknown. :meth:`Predicate.test` turns it into None; the
    transform rule keeps such an event."""


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


class Node:
    """A parsed predicate node. ``test(row, unavailable)`` returns True, False or None (SQL
    unknown); it raises :class:`UnknownColumnError` when it reads a column in ``unavailable``, and
    ValueError/TypeError/ArithmeticError when a literal cannot be compared with the row's value."""

    __slots__ = ()

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        raise NotImplementedError


class _And(Node):
    __slots__ = ("parts",)

    def __init__(self, parts: list[Node]) -> None:
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


class _Or(Node):
    __slots__ = ("parts",)

    def __init__(self, parts: list[Node]) -> None:
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


class _Not(Node):
    __slots__ = ("part",)

    def __init__(self, part: Node) -> None:
        self.part = part

    def test(self, row: Row, unavailable: frozenset[str]) -> bool | None:
        value = self.part.test(row, unavailable)
        return None if value is None else not value


def _read(row: Row, column: str, unavailable: frozenset[str]) -> Any:
    if column in row:
        return row[column]
    if column in unavailable:
        raise UnknownColumnError(column)
    return None


class _IsNull(Node):
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
        return _as_bool(literal)
    if isinstance(sample, int | float | Decimal):
        return _as_number(literal)
    if isinstance(sample, str):
        if isinstance(literal, bool):
            return "true" if literal else "false"
        return literal if isinstance(literal, str) else str(literal)
    if not isinstance(literal, str):
        raise TypeError(f"cannot compare a {type(sample).__name__} with {literal!r}")
    return _parse_as(literal, sample)


def _as_bool(literal: Literal_) -> bool:
    if isinstance(literal, bool):
        return literal
    if isinstance(literal, str) and literal.lower() in ("true", "false"):
        return literal.lower() == "true"
    raise TypeError(f"cannot compare a boolean with {literal!r}")


def _as_number(literal: Literal_) -> int | Decimal:
    if isinstance(literal, bool):
        raise TypeError(f"cannot compare a number with {literal!r}")
    if isinstance(literal, int | Decimal):
        return literal
    return Decimal(literal)


def _parse_as(literal: str, sample: Any) -> Any:
    """A string literal parsed as the temporal or UUID type of ``sample``."""
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


class _Compare(Node):
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


class _In(Node):
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

    def parse(self) -> Node:
        if not self.tokens:
            raise PredicateError("empty predicate")
        node = self._or()
        if self._peek() is not None:
            raise self._fail("'and', 'or' or the end")
        return node

    def _or(self) -> Node:
        parts = [self._and()]
        while self._take("kw", "or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _Or(parts)

    def _and(self) -> Node:
        parts = [self._not()]
        while self._take("kw", "and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else _And(parts)

    def _not(self) -> Node:
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

    def _comparison(self) -> Node:
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
    root: Node = field(repr=False, compare=False)

    def test(self, row: Row, unavailable: frozenset[str] = frozenset()) -> bool | None:
        """True, False, or None when a column it reads is in ``unavailable`` (unknown).

        NULL follows SQL: comparisons with NULL are unknown, and unknown is not True.
        Raises ValueError/TypeError when a literal cannot be compared with the row's value
        (e.g. ``amount > 'abc'`` on a numeric column).
        """
        try:
            result = self.root.test(row, unavailable)
        except UnknownColumnError:
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
