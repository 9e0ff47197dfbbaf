"""The transforms compiled to SQL for the fast path (pipeline.control.bulkload.sqlplan): which rules
compile, the SQL of where/masks/renames/routes, the COPY statement, the binary decision, and the
HMAC pads that let the source compute pipeline.transform.masking's hash (the SQL itself is run
against real values in tests/integration/test_bulk_load.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.control.bulkload.catalog import describe_column
from pipeline.control.bulkload.model import Chunk, ExportedSnapshot, SourceTable
from pipeline.control.bulkload.sqlplan import (
    FastPlan,
    copy_in_columns,
    copy_out_sql,
    hmac_pads,
    hmac_settings,
    plan_fast,
    use_binary,
)
from pipeline.core.events import TableId
from pipeline.core.settings.models import TransformRule
from pipeline.transform.masking import mask_value
from pipeline.transform.transformer import build_transformer
from sinks.base import PreparedTable

T = TableId("public", "users")
COLS = [("id", "int4", "integer"), ("email", "text", "text"), ("code", "bpchar", "character(4)"),
        ("amount", "numeric", "numeric(10,2)"), ("doc", "jsonb", "jsonb"), ("state", "text", "text")]  # fmt: skip
TABLE = SourceTable(
    T, tuple(describe_column(n, n == "id", t, "b", -1, None, None) for n, t, _ in COLS), ("id",), 100, 2
)
FORMATTED = {n: f for n, _, f in COLS}
TYPNAMES = {n: t for n, t, _ in COLS}
SNAP = ExportedSnapshot("cdc_s", 1234, "00000003-00000002-1")


def plan(*rules: TransformRule, typnames: dict[str, str] | None = None) -> FastPlan | str | None:
    return plan_fast(build_transformer(list(rules), "salt"), TABLE, FORMATTED, typnames or TYPNAMES, "tgt")


def text(p: FastPlan, prepared: PreparedTable, binary: bool = False) -> str:
    return copy_out_sql(p, prepared, Chunk(1, 10, 20), SNAP, binary).as_string(None)


PREPARED = PreparedTable(TableId("tgt", "users"), {}, False, ("__cdc_commit_lsn", "__cdc_lsn"))


def test_no_rules_copies_every_column_to_the_default_schema() -> None:
    p = plan()
    assert isinstance(p, FastPlan)
    assert p.target == TableId("tgt", "users")
    assert [c.name for c in p.columns] == [n for n, _, _ in COLS]
    assert p.key_columns == ("id",)
    sql_text = text(p, PREPARED)
    assert sql_text.startswith('COPY (SELECT "id" AS "id", "email" AS "email"')
    assert '0::bigint, 1234::bigint FROM ONLY "public"."users"' in sql_text
    assert "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid" in sql_text
    assert sql_text.endswith("TO STDOUT (FORMAT text)")
    assert copy_in_columns(p, PREPARED)[-2:] == ["__cdc_commit_lsn", "__cdc_lsn"]


def test_keyless_row_id_and_open_last_chunk() -> None:
    p = plan()
    assert isinstance(p, FastPlan)
    keyless = PreparedTable(TableId("tgt", "users"), {}, True, ("__cdc_commit_lsn", "__cdc_lsn", "__cdc_row_id"))
    sql_text = copy_out_sql(p, keyless, Chunk(0, 0, None), SNAP, False).as_string(None)
    assert "('r:bulk:cdc_s:public.users:' || ctid::text)" in sql_text
    assert "ctid <" not in sql_text


def test_reshaping_rules_in_order() -> None:
    p = plan(
        TransformRule(match="public.*", exclude=["doc"], rename={"email": "mail"}, route="crm.{table}_copy"),
        TransformRule(match="public.users", mask={"mail": "redact", "state": "null"}),
    )
    assert isinstance(p, FastPlan)
    assert p.target == TableId("crm", "users_copy")
    assert [c.name for c in p.columns] == ["id", "mail", "code", "amount", "state"]
    by = {c.name: c for c in p.columns}
    assert by["mail"].column.type == "string"
    assert by["state"].column.optional
    sql_text = text(p, PREPARED)
    assert """CASE WHEN "email" IS NULL THEN NULL ELSE '***'::text END AS "mail\"""" in sql_text
    assert 'NULL AS "state"' in sql_text
    assert '"doc"' not in sql_text


def test_where_compiles_with_three_valued_logic_and_code_point_order() -> None:
    p = plan(TransformRule(where="state != 'draft' and (amount > 10.5 or email is null) and id not in (1, 2)"))
    assert isinstance(p, FastPlan)
    assert p.where is not None
    assert p.where.as_string(None) == (
        """((("state")::text COLLATE "C" <> 'draft') AND ((("amount") > '10.5') OR (("email") IS NULL))"""
        """ AND (("id") NOT IN ('1', '2')))"""
    )


def test_where_on_bpchar_keeps_the_padding() -> None:
    p = plan(TransformRule(where="code = 'ab  '"))
    assert isinstance(p, FastPlan)
    assert p.where is not None
    assert 'textin(bpcharout("code")) COLLATE "C" = \'ab  \'' in p.where.as_string(None)


def test_where_after_a_rename_reads_the_new_name() -> None:
    p = plan(TransformRule(rename={"state": "status"}), TransformRule(where="status = 'x'"))
    assert isinstance(p, FastPlan)
    assert p.where is not None
    assert '"state"' in p.where.as_string(None)


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        (TransformRule(hook="tests.unit.test_bulk_sqlplan:plan"), "hook"),
        (TransformRule(add_columns={"x": "$lsn"}), "add_columns"),
        (TransformRule(mask={"doc": "hash"}), "mask 'hash' on column 'doc' of type jsonb"),
        (TransformRule(mask={"amount": "hash"}), "type numeric"),
        (TransformRule(where="doc = '{}'"), "where compares column 'doc' of type jsonb"),
    ],
)
def test_rules_sql_cannot_express_go_to_the_rows_path(rule: TransformRule, why: str) -> None:
    p = plan(rule)
    assert isinstance(p, str)
    assert why in p


def test_unsupported_types_go_to_the_rows_path() -> None:
    p = plan(typnames={**TYPNAMES, "doc": "hstore"})
    assert isinstance(p, str)
    assert "doc" in p


def test_rules_without_reads_skip_the_table() -> None:
    assert plan(TransformRule(ops=["c", "u", "d"])) is None


def test_hash_columns_read_the_pads_not_the_salt() -> None:
    p = plan(TransformRule(mask={"email": "hash", "code": "hash"}))
    assert isinstance(p, FastPlan)
    assert p.hashes
    sql_text = text(p, PREPARED)
    assert "salt" not in sql_text
    assert "current_setting('cdc_bulk.hmac_ipad')" in sql_text
    assert "convert_to(textin(bpcharout(\"code\")), 'UTF8')" in sql_text
    statement, params = hmac_settings(b"salt")
    assert "%s" in statement.as_string(None)
    assert "salt" not in statement.as_string(None)
    assert len(params) == 2


def test_binary_only_when_every_type_matches() -> None:
    p = plan(TransformRule(mask={"state": "null"}))
    assert isinstance(p, FastPlan)
    same = dict(FORMATTED)
    assert use_binary(p, PreparedTable(PREPARED.table, same, False, PREPARED.extra_columns), True)
    assert not use_binary(p, PreparedTable(PREPARED.table, same, False, PREPARED.extra_columns), False)
    other = {**same, "code": "text"}
    assert not use_binary(p, PreparedTable(PREPARED.table, other, False, PREPARED.extra_columns), True)


@given(st.binary(min_size=1, max_size=200), st.text(st.characters(codec="utf-8"), max_size=50))
def test_pads_reproduce_mask_value(salt: bytes, value: str) -> None:
    """What the SQL computes, sha256(opad || sha256(ipad || m)), is mask_value's HMAC."""
    ipad, opad = hmac_pads(salt)
    inner = hashlib.sha256(ipad + value.encode("utf-8")).digest()
    outer = hashlib.sha256(opad + inner).hexdigest()
    assert outer == mask_value("hash", value, salt)
    assert outer == hmac.new(salt, value.encode(), "sha256").hexdigest()


# ------------------------------------------------------------------ review fixes: SQL that would differ from Python

MORE = SourceTable(
    T,
    (
        describe_column("id", True, "int4", "b", -1, None, None),
        describe_column("tags", False, "_text", "b", -1, "text", None),
        describe_column("ratio", False, "float8", "b", -1, None, None),
    ),
    ("id",),
    10,
    1,
)


def more(*rules: TransformRule) -> FastPlan | str | None:
    formatted = {"id": "integer", "tags": "text[]", "ratio": "double precision"}
    return plan_fast(
        build_transformer(list(rules), "salt"),
        MORE,
        formatted,
        {"id": "int4", "tags": "text", "ratio": "float8"},
        "tgt",
    )


def test_hash_on_an_array_goes_to_the_rows_path() -> None:
    # the streaming path hashes the decoded list as JSON, SQL would hash the array's text '{a,b}'
    p = more(TransformRule(mask={"tags": "hash"}))
    assert isinstance(p, str) and "'tags' of type text[]" in p


def test_where_on_a_float_or_an_integer_against_a_fraction_goes_to_the_rows_path() -> None:
    # Python: 1.1 == Decimal('1.1') is False; SQL casts '1.1' to float8 and finds it equal
    p = more(TransformRule(where="ratio = 1.1"))
    assert isinstance(p, str) and "'ratio' of type float8" in p
    # SQL would fail to read '2.5' as an integer in the middle of the COPY
    p = more(TransformRule(where="id IN (1, 2.5)"))
    assert isinstance(p, str) and "integer column 'id' with a fraction" in p
    assert isinstance(more(TransformRule(where="id > 2.0")), FastPlan)
