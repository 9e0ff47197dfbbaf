"""Transform rules: predicate language, filters, reshaping, masks, routing, added columns, hooks,
config errors and the verifier's column report."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pipeline.core.errors import FatalError, PoisonMessageError
from pipeline.core.events import ChangeEvent, Column, Op, Position, Skip, TableId
from pipeline.core.settings.models import TransformRule
from pipeline.transform.hooks import HookContractError, RejectedEventError
from pipeline.transform.masking import REDACTED, UnmaskableValueError, mask_value
from pipeline.transform.predicate import PredicateError, parse_predicate
from pipeline.transform.rule import TransformConfigError
from pipeline.transform.transformer import build_transformer

SALT = "pepper"
USERS = TableId("public", "users")
COLUMNS = (
    Column("id", "int32", optional=False),
    Column("email", "string", parameters={"__debezium.source.column.type": "VARCHAR"}),
    Column("status", "string"),
    Column("amount", "bytes", logical="org.apache.kafka.connect.data.Decimal", parameters={"scale": "2"}),
    Column("created", "string", logical="io.debezium.time.ZonedTimestamp"),
    Column("secret", "string"),
    Column("bio", "string"),
)


def event(
    op: Op = Op.UPDATE,
    after: dict[str, Any] | None = None,
    *,
    table: TableId = USERS,
    before: dict[str, Any] | None = None,
    unavailable: frozenset[str] = frozenset(),
    columns: tuple[Column, ...] | None = COLUMNS,
) -> ChangeEvent:
    row = {
        "id": 7,
        "email": "a@example.com",
        "status": "live",
        "amount": Decimal("12.50"),
        "created": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "secret": "s3cret",
        "bio": "hello",
    }
    if after is not None:
        row = after
    return ChangeEvent(
        topic=f"p.{table}",
        partition=2,
        offset=11,
        table=table,
        op=op,
        position=Position(100, 120),
        ts_ms=1_700_000_000_000,
        key={"id": row.get("id", 7)},
        before=before,
        after=None if op in (Op.DELETE, Op.TRUNCATE) else row,
        tx_id=42,
        columns=columns,
        key_columns=("id",),
        unavailable=unavailable,
    )


def apply(rules: list[TransformRule], ev: ChangeEvent, salt: str | None = SALT) -> ChangeEvent | Skip:
    return build_transformer(rules, mask_salt=salt).apply(ev)


def applied(rules: list[TransformRule], ev: ChangeEvent) -> ChangeEvent:
    result = apply(rules, ev)
    assert isinstance(result, ChangeEvent)
    return result


# --------------------------------------------------------------------------- predicates

ROW = {
    "id": 7,
    "name": "O'Brien",
    "status": "live",
    "amount": Decimal("12.50"),
    "ratio": 0.5,
    "flag": True,
    "missing": None,
    "day": date(2024, 5, 1),
    "at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    "local": datetime(2024, 5, 1, 12, 0),
    "uid": uuid.UUID(int=1),
    "Weird Col": "x",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id = 7", True),
        ("id != 7", False),
        ("id <> 8", True),
        ("amount > 12.4", True),
        ("amount = 12.5", True),
        ("amount >= '12.50'", True),
        ("ratio < 1", True),
        ("name = 'O''Brien'", True),
        ("status in ('live', 'draft')", True),
        ("status not in ('live', 'draft')", False),
        ("id in (1, 2, 7)", True),
        ("flag = true", True),
        ("flag = 'false'", False),
        ("missing is null", True),
        ("missing is not null", False),
        ("missing = 'x'", False),  # unknown
        ("not missing = 'x'", False),  # not unknown = unknown
        ("missing = 'x' or id = 7", True),
        ("missing = 'x' and id = 7", False),
        ("not (status = 'draft' or id > 10)", True),
        ("day >= '2024-05-01' AND day < '2024-06-01'", True),
        ("at > '2024-05-01T11:00:00'", True),  # literal without zone: UTC
        ("at < '2024-05-01T13:00:00+02:00'", False),
        ("local = '2024-05-01 12:00:00'", True),
        ("uid = '00000000-0000-0000-0000-000000000001'", True),
        ("\"Weird Col\" = 'x'", True),
        ("nosuchcolumn is null", True),
        ("id = 7 OR NOT flag = true AND status = 'x'", True),  # and binds tighter than or
    ],
)
def test_predicate_semantics(text: str, expected: bool) -> None:
    assert parse_predicate(text).test(ROW) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("id =", "expected a literal at the end"),
        ("id = = 1", "position 6"),
        ("id == 1", "position 5"),
        ("= 1", "expected a column name at position 1"),
        ("id = null", "write 'is null'"),
        ("id is 1", "expected 'null'"),
        ("id in 1, 2", "expected '('"),
        ("id in (1 2)", "expected ',' or ')'"),
        ("(id = 1", "expected ')'"),
        ("id = 1 id = 2", "'and', 'or' or the end"),
        ("id = 'open", "unexpected character"),
        ("__import__('os').system('x')", "unexpected character '.'"),
        ("id; drop table x", "unexpected character ';'"),
        ("id not = 1", "expected 'in'"),
    ],
)
def test_bad_predicates_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(PredicateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_predicate(text)


def test_predicate_lists_its_columns() -> None:
    assert parse_predicate('a = 1 and ("B" is null or c in (1))').columns == {"a", "B", "c"}


def test_incomparable_literal_raises_value_error() -> None:
    with pytest.raises((ValueError, ArithmeticError)):
        parse_predicate("amount > 'abc'").test(ROW)
    with pytest.raises(TypeError):
        parse_predicate("flag = 3").test(ROW)


def test_unavailable_column_is_unknown() -> None:
    predicate = parse_predicate("bio = 'x' or id = 8")
    assert predicate.test({"id": 7}, frozenset({"bio"})) is None
    assert parse_predicate("id = 7 or bio = 'x'").test({"id": 7}, frozenset({"bio"})) is True


# A small AST, rendered to text and evaluated directly with SQL's three-valued logic: parsing
# and evaluating the text must agree with the reference for every generated predicate.
COLUMN_VALUES = {
    "a": st.one_of(st.none(), st.integers(-3, 3)),
    "b": st.one_of(st.none(), st.sampled_from(["x", "y", "it's"])),
}
Tree = tuple[Any, ...]


def leaf() -> st.SearchStrategy[Tree]:
    int_cmp = st.tuples(
        st.just("cmp"), st.just("a"), st.sampled_from(["=", "!=", "<", ">", "<=", ">="]), st.integers(-3, 3)
    )
    str_cmp = st.tuples(st.just("cmp"), st.just("b"), st.sampled_from(["=", "!="]), st.sampled_from(["x", "y", "it's"]))
    null = st.tuples(st.just("null"), st.sampled_from(["a", "b"]), st.booleans())
    inn = st.tuples(st.just("in"), st.just("a"), st.lists(st.integers(-3, 3), min_size=1, max_size=3), st.booleans())
    return st.one_of(int_cmp, str_cmp, null, inn)


trees = st.recursive(
    leaf(),
    lambda sub: st.one_of(
        st.tuples(st.just("and"), sub, sub), st.tuples(st.just("or"), sub, sub), st.tuples(st.just("not"), sub)
    ),
    max_leaves=8,
)


def render(tree: Tree) -> str:
    kind = tree[0]
    if kind == "cmp":
        literal = tree[3] if isinstance(tree[3], int) else "'" + tree[3].replace("'", "''") + "'"
        return f"{tree[1]} {tree[2]} {literal}"
    if kind == "null":
        return f"{tree[1]} is {'not ' if tree[2] else ''}null"
    if kind == "in":
        return f"{tree[1]} {'not ' if tree[3] else ''}in ({', '.join(map(str, tree[2]))})"
    if kind == "not":
        return f"not ({render(tree[1])})"
    return f"({render(tree[1])}) {kind} ({render(tree[2])})"


def reference(tree: Tree, row: dict[str, Any]) -> bool | None:
    kind = tree[0]
    if kind == "cmp":
        value = row[tree[1]]
        if value is None:
            return None
        ops = {"=": value == tree[3], "!=": value != tree[3]}
        if tree[2] in ops:
            return bool(ops[tree[2]])
        return bool(
            {"<": value < tree[3], ">": value > tree[3], "<=": value <= tree[3], ">=": value >= tree[3]}[tree[2]]
        )
    if kind == "null":
        return (row[tree[1]] is None) is not tree[2]
    if kind == "in":
        value = row[tree[1]]
        return None if value is None else (value in tree[2]) is not tree[3]
    if kind == "not":
        inner = reference(tree[1], row)
        return None if inner is None else not inner
    left, right = reference(tree[1], row), reference(tree[2], row)
    if kind == "and":
        return False if False in (left, right) else None if None in (left, right) else True
    return True if True in (left, right) else None if None in (left, right) else False


@settings(max_examples=400)
@given(trees, st.fixed_dictionaries(COLUMN_VALUES))
def test_parsed_predicates_agree_with_reference_logic(tree: Tree, row: dict[str, Any]) -> None:
    assert parse_predicate(render(tree)).test(row) is (reference(tree, row) is True)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_predicate_error(text: str) -> None:
    try:
        predicate = parse_predicate(text)
    except PredicateError:
        return
    assert predicate.columns  # anything accepted compares at least one column


# --------------------------------------------------------------------------- filters


def test_ops_filter_skips_other_ops() -> None:
    rules = [TransformRule(match="public.users", ops=["c", "u"])]
    assert apply(rules, event(Op.DELETE, before={"id": 7})) == Skip("p.public.users", 2, 11, "filtered")
    assert isinstance(apply(rules, event(Op.UPDATE)), ChangeEvent)


def test_where_filters_creates_and_turns_updates_into_deletes() -> None:
    rules = [TransformRule(where="status != 'draft'")]
    draft = {**event().after, "status": "draft"}  # type: ignore[dict-item]
    assert apply(rules, event(Op.CREATE, draft)) == Skip("p.public.users", 2, 11, "filtered")
    assert apply(rules, event(Op.READ, draft)) == Skip("p.public.users", 2, 11, "filtered")
    left = applied(rules, event(Op.UPDATE, draft))
    assert left.op is Op.DELETE and left.after is None and left.before == draft and left.key == {"id": 7}
    assert applied(rules, event(Op.DELETE, before={"id": 7})).op is Op.DELETE
    assert applied(rules, event(Op.TRUNCATE)).op is Op.TRUNCATE
    kept = applied(rules, event(Op.UPDATE))
    assert kept.op is Op.UPDATE


def test_where_on_unavailable_column_keeps_the_event() -> None:
    after = {k: v for k, v in event().after.items() if k != "bio"}  # type: ignore[union-attr]
    result = apply([TransformRule(where="bio = 'nope'")], event(Op.UPDATE, after, unavailable=frozenset({"bio"})))
    assert isinstance(result, ChangeEvent) and result.op is Op.UPDATE


def test_where_type_mismatch_is_poison() -> None:
    with pytest.raises(PoisonMessageError, match=r"transforms\[0\]\.where"):
        apply([TransformRule(where="amount > 'lots'")], event())


def test_where_on_unknown_column_is_a_config_error() -> None:
    with pytest.raises(TransformConfigError, match="has no column 'stat'"):
        apply([TransformRule(where="stat = 'live'")], event())


def test_rules_apply_only_to_matching_tables() -> None:
    rules = [TransformRule(match="sales.*", exclude=["email"]), TransformRule(match="public.u*", exclude=["bio"])]
    result = applied(rules, event())
    assert "email" in result.after and "bio" not in result.after  # type: ignore[operator]
    other = applied(rules, event(table=TableId("other", "users")))
    assert other.after == event().after


# --------------------------------------------------------------------------- reshaping


def test_include_exclude_rename_update_rows_key_and_columns() -> None:
    rules = [
        TransformRule(include=["id", "email", "status", "bio"], rename={"id": "user_id", "status": "state"}),
        TransformRule(exclude=["bio"]),
    ]
    after = {k: v for k, v in event().after.items() if k != "bio"}  # type: ignore[union-attr]
    result = applied(rules, event(Op.UPDATE, after, before={"id": 7, "status": "old"}, unavailable=frozenset({"bio"})))
    assert result.after == {"user_id": 7, "email": "a@example.com", "state": "live"}
    assert result.before == {"user_id": 7, "state": "old"}
    assert result.key == {"user_id": 7} and result.key_columns == ("user_id",)
    assert result.unavailable == frozenset()
    assert [c.name for c in result.columns or ()] == ["user_id", "email", "state"]
    assert result.columns is not None and result.columns[0].optional is False


def test_renamed_unavailable_column_keeps_its_new_name() -> None:
    after = {k: v for k, v in event().after.items() if k != "bio"}  # type: ignore[union-attr]
    result = applied([TransformRule(rename={"bio": "about"})], event(Op.UPDATE, after, unavailable=frozenset({"bio"})))
    assert result.unavailable == {"about"}


def test_masks() -> None:
    rules = [TransformRule(mask={"email": "hash", "secret": "redact", "bio": "null"})]
    ev = event(before={"id": 7, "email": "old@example.com", "secret": None})
    result = applied(rules, ev)
    expected = hmac.new(SALT.encode(), b"a@example.com", hashlib.sha256).hexdigest()
    assert result.after is not None and result.before is not None
    assert result.after["email"] == expected and result.after["secret"] == REDACTED and result.after["bio"] is None
    assert result.before["email"] == hmac.new(SALT.encode(), b"old@example.com", hashlib.sha256).hexdigest()
    assert result.before["secret"] is None  # NULL stays NULL
    columns = {c.name: c for c in result.columns or ()}
    assert columns["email"] == Column("email", "string", optional=True)  # source type dropped: now a hash
    assert columns["secret"].type == "string" and columns["bio"].optional is True
    assert columns["amount"].logical == "org.apache.kafka.connect.data.Decimal"


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("é", "é".encode()),
        (b"\x00\x01", b"\x00\x01"),
        (True, b"true"),
        (12, b"12"),
        (Decimal("12.50"), b"12.50"),
        (0.1, b"0.1"),
        (uuid.UUID(int=1), b"00000000-0000-0000-0000-000000000001"),
        (date(2024, 1, 2), b"2024-01-02"),
        (datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), b"2024-01-02T03:04:05.000006+00:00"),
        (["b", 1], b'["b",1]'),
        ({"b": 1, "a": b"\x01"}, b'{"a":"01","b":1}'),
    ],
)
def test_hash_mask_canonical_bytes(value: Any, canonical: bytes) -> None:
    assert mask_value("hash", value, b"k") == hmac.new(b"k", canonical, hashlib.sha256).hexdigest()


def test_mask_value_modes() -> None:
    assert mask_value("redact", "x") == REDACTED and mask_value("null", "x") is None
    assert mask_value("hash", None, b"k") is None
    with pytest.raises(ValueError, match="salt"):
        mask_value("hash", "x")


def test_route_sets_target() -> None:
    result = applied([TransformRule(route="archive_{schema}.{table}_v2")], event())
    assert result.target == TableId("archive_public", "users_v2")
    assert result.table == USERS  # the source table is kept


def test_add_columns() -> None:
    rules = [
        TransformRule(
            add_columns={
                "_lsn": "$lsn",
                "_ts": "$ts_ms",
                "_tx": "$txid",
                "_op": "$op",
                "_table": "$table",
                "_src": "crm",
                "_cost": "$$5",
            }
        )
    ]
    result = applied(rules, event())
    assert result.extra == {
        "_lsn": 120,
        "_ts": 1_700_000_000_000,
        "_tx": 42,
        "_op": "u",
        "_table": "public.users",
        "_src": "crm",
        "_cost": "$5",
    }
    assert result.row == {**result.after, **result.extra}  # type: ignore[dict-item]
    added = {c.name: c for c in result.columns or ()}
    assert added["_lsn"] == Column("_lsn", "int64", optional=False) and added["_tx"].optional is True
    assert added["_src"] == Column("_src", "string", optional=False)


def test_later_rules_see_earlier_output() -> None:
    rules = [
        TransformRule(rename={"email": "mail"}, add_columns={"_src": "crm"}),
        TransformRule(mask={"mail": "redact"}, exclude=["_src"]),
        TransformRule(where="mail = '***'"),
    ]
    result = applied(rules, event())
    assert result.after is not None and result.after["mail"] == REDACTED and result.extra == {}
    assert "_src" not in {c.name for c in result.columns or ()}


def test_events_without_rules_are_returned_as_is() -> None:
    ev = event()
    assert build_transformer([]).apply(ev) is ev
    assert not build_transformer([])


def test_columns_are_cached_per_schema() -> None:
    transformer = build_transformer([TransformRule(exclude=["bio"])])
    first, second = transformer.apply(event()), transformer.apply(event())
    assert isinstance(first, ChangeEvent) and isinstance(second, ChangeEvent)
    assert first.columns is second.columns


def test_schemaless_events_keep_columns_none() -> None:
    result = applied([TransformRule(exclude=["bio"], add_columns={"x": "1"})], event(columns=None))
    assert result.columns is None and "bio" not in result.after  # type: ignore[operator]


# --------------------------------------------------------------------------- hooks


def uppercase_status(ev: ChangeEvent) -> ChangeEvent | None:
    if ev.after is None:
        return ev
    if ev.after.get("status") == "spam":
        return None
    return dataclasses.replace(ev, after={**ev.after, "status": str(ev.after["status"]).upper()})


def broken_hook(ev: ChangeEvent) -> ChangeEvent | None:
    raise RuntimeError("boom")


def wrong_type_hook(ev: ChangeEvent) -> Any:
    return {"not": "an event"}


def test_hook_rewrites_or_drops() -> None:
    rules = [TransformRule(hook="tests.unit.test_transforms:uppercase_status")]
    assert applied(rules, event()).after["status"] == "LIVE"  # type: ignore[index]
    spam = {**event().after, "status": "spam"}  # type: ignore[dict-item]
    assert apply(rules, event(Op.CREATE, spam)) == Skip("p.public.users", 2, 11, "filtered")


def poison_hook(ev: ChangeEvent) -> ChangeEvent | None:
    raise PoisonMessageError("elsewhere", 0, 0, "no country code")


def rejecting_hook(ev: ChangeEvent) -> ChangeEvent | None:
    raise RejectedEventError(ev, "status is spam")


def test_hook_bug_propagates_unchanged() -> None:
    """Bug 7: a hook's own exception used to become poison (dead-lettered); it is fatal now."""
    with pytest.raises(RuntimeError) as caught:
        apply([TransformRule(hook="tests.unit.test_transforms:broken_hook")], event())
    assert type(caught.value) is RuntimeError and str(caught.value) == "boom"
    assert caught.value.__notes__ == [
        "raised by transforms[0].hook tests.unit.test_transforms:broken_hook on p.public.users[2]@11 (fatal: not poison)"
    ]


def test_hook_raising_poison_is_poison_of_this_event() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        apply([TransformRule(exclude=["bio"]), TransformRule(hook="tests.unit.test_transforms:poison_hook")], event())
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("p.public.users", 2, 11)
    assert caught.value.reason == "transforms[1].hook tests.unit.test_transforms:poison_hook: no country code"
    assert isinstance(caught.value.__cause__, PoisonMessageError)


def test_hook_rejected_event_error_is_poison() -> None:
    with pytest.raises(PoisonMessageError, match=r"rejecting_hook: status is spam$") as caught:
        apply([TransformRule(hook="tests.unit.test_transforms:rejecting_hook")], event(Op.CREATE))
    assert isinstance(caught.value.__cause__, RejectedEventError)
    assert caught.value.offset == 11


def test_hook_returning_another_type_is_fatal() -> None:
    with pytest.raises(HookContractError, match="wrong_type_hook returned dict, not ChangeEvent or None") as caught:
        apply([TransformRule(hook="tests.unit.test_transforms:wrong_type_hook")], event())
    assert isinstance(caught.value, FatalError) and not isinstance(caught.value, PoisonMessageError)


@pytest.mark.parametrize("value", [[2**70], {"a": [1, 2**65]}, "\ud800"])
def test_mask_of_an_unhashable_value_is_poison(value: Any) -> None:
    row = {**event().after, "bio": value}  # type: ignore[dict-item]
    with pytest.raises(PoisonMessageError, match=r"transforms\[0\]\.mask on public\.users: column 'bio': ") as caught:
        apply([TransformRule(mask={"bio": "hash"})], event(Op.CREATE, row))
    assert "2**70" not in caught.value.reason and str(2**70) not in caught.value.reason
    assert caught.value.offset == 11


def test_mask_value_of_an_unhashable_value_raises_type_error() -> None:
    with pytest.raises(UnmaskableValueError, match="a list value cannot be hashed") as caught:
        mask_value("hash", [2**70], b"k")
    assert isinstance(caught.value, TypeError)


# --------------------------------------------------------------------------- configuration errors


def test_build_reports_every_problem_with_its_rule() -> None:
    with pytest.raises(TransformConfigError) as caught:
        build_transformer(
            [
                TransformRule(where="status = "),
                TransformRule(mask={"email": "hash"}, add_columns={"x": "$nope"}),
                TransformRule(route="no_dot"),
                TransformRule(route="s.{tabel}"),
                TransformRule(include=["a"], exclude=["a"], mask={"b": "null"}),
                TransformRule(rename={"a": "z", "b": "z"}, add_columns={"z": "1"}),
                TransformRule(hook="no_such_module_xyz:f"),
                TransformRule(hook="tests.unit.test_transforms:nope"),
            ]
        )
    problems = caught.value.problems
    expected = [
        "transforms[0].where:",
        "transforms[1].mask: 'hash' needs the pipeline's mask_salt",
        "transforms[1].add_columns.x: unknown variable '$nope'",
        "transforms[2].route: 'no_dot' must be 'schema.table'",
        "transforms[3].route: 's.{tabel}' has an unknown placeholder",
        "transforms[4]: ['a'] are both included and excluded",
        "transforms[4].mask: 'b' is excluded",
        "transforms[5].rename: several columns renamed to ['z']",
        "transforms[5].add_columns: 'z' is also a rename target",
        "transforms[6].hook: cannot import module 'no_such_module_xyz'",
        "transforms[7].hook: module 'tests.unit.test_transforms' has no function 'nope'",
    ]
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected, strict=True):
        assert line.startswith(start), (line, start)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            TransformRule(mask={"id": "hash"}),
            "'id' is a key column of public.users; masking it would break the dedup key",
        ),
        (TransformRule(exclude=["id"]), "key column 'id' of public.users is excluded"),
        (TransformRule(include=["email"]), "key column 'id' of public.users is not in include"),
        (TransformRule(add_columns={"email": "x"}), "'email' is already a column of public.users"),
        (TransformRule(rename={"email": "bio"}), "duplicate columns ['bio']"),
    ],
)
def test_rules_contradicting_the_table_are_config_errors(rule: TransformRule, message: str) -> None:
    with pytest.raises(TransformConfigError) as caught:
        apply([rule], event())
    assert message in str(caught.value)


# --------------------------------------------------------------------------- verifier report


def test_column_report() -> None:
    transformer = build_transformer(
        [
            TransformRule(
                match="public.*", exclude=["secret"], rename={"email": "mail"}, mask={"email": "hash", "bio": "null"}
            ),
            TransformRule(
                match="public.users",
                ops=["c", "u", "d"],
                where="status != 'draft'",
                route="crm.{table}",
                add_columns={"_lsn": "$lsn"},
            ),
            TransformRule(
                match="public.users", rename={"mail": "contact"}, hook="tests.unit.test_transforms:uppercase_status"
            ),
        ],
        mask_salt=SALT,
    )
    report = transformer.column_report(USERS, [c.name for c in COLUMNS])
    assert report.target == TableId("crm", "users")
    assert report.comparable == {"id": "id", "status": "status", "amount": "amount", "created": "created"}
    assert report.masked == {"contact": ("email", "hash"), "bio": ("bio", "null")}
    assert report.excluded == {"secret": "transforms[0].exclude"}
    assert report.added == {"_lsn": "$lsn"}
    assert report.row_filters == ("transforms[1].ops: c,d,u", "transforms[1].where: status != 'draft'")
    assert report.hooks == ("transforms[2].hook: tests.unit.test_transforms:uppercase_status",)
    assert transformer.salt == SALT.encode()
    # The verifier recomputes a hashed column from the source value:
    hashed = applied([TransformRule(mask={"email": "hash"})], event()).after
    assert hashed is not None and mask_value("hash", "a@example.com", transformer.salt) == hashed["email"]
    plain = transformer.column_report(TableId("other", "t"), ["a", "b"])
    assert plain.target is None and plain.comparable == {"a": "a", "b": "b"} and not plain.row_filters


def test_validate_table_up_front() -> None:
    transformer = build_transformer(
        [
            TransformRule(rename={"id": "user_id"}),
            TransformRule(mask={"user_id": "hash"}, where="status = 'x'"),
        ],
        mask_salt=SALT,
    )
    with pytest.raises(TransformConfigError) as caught:
        transformer.validate_table(USERS, ["id"], [Column("id", "int32"), Column("email", "string")])
    assert caught.value.problems == [
        "transforms[1].mask: 'user_id' is a key column of public.users; masking it would break the dedup key "
        "(mask a copy of it, or route to a table with another key)",
        "transforms[1].where: public.users has no column 'status' (columns: email, user_id)",
    ]
    transformer.validate_table(TableId("other", "t"), ["pk"])  # other key, columns unknown: fine
    build_transformer([TransformRule(mask={"email": "redact"})]).validate_table(USERS, ["id"], COLUMNS)


def test_transformer_is_callable_and_takes_the_settings_secret() -> None:
    transformer = build_transformer([TransformRule(mask={"email": "hash"})], mask_salt=SecretStr(SALT))
    result = transformer(event())
    assert isinstance(result, ChangeEvent) and result.after is not None
    assert result.after["email"] == mask_value("hash", "a@example.com", SALT.encode())
