"""Pure logic of the verifier: canonical expressions, table plans from the transforms' column
report, key-range SQL, result formatting and exit codes, cutover readiness."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from pipeline.control.verify.compare import MAX_BUCKETS, bucket_count
from pipeline.control.verify.model import (
    CatchUp,
    ChunkDiff,
    Status,
    TableResult,
    VerifyResult,
    export_verify_metrics,
    format_range,
    format_result,
    verification_clean,
)
from pipeline.control.verify.plan import TablePlan, build_plan
from pipeline.control.verify.readiness import CutoverReadiness
from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.settings.models import TransformRule
from pipeline.transform.transformer import build_transformer
from sinks.base import CatalogColumn, VerificationRecord
from sinks.pg_canonical import Kind, canonical_expr, canonical_kind
from sinks.pg_canonical import range_where as pg_range_where
from sinks.pg_canonical import row_text as pg_row_text

ITEMS = TableId("public", "items")
SOURCE_COLUMNS = [
    CatalogColumn("id", "integer", "int4"),
    CatalogColumn("name", "text", "text", "C.UTF-8"),
    CatalogColumn("email", "text", "text", "C.UTF-8"),
    CatalogColumn("price", "numeric(10,2)", "numeric"),
    CatalogColumn("doc", "json", "json"),
    CatalogColumn("secret", "text", "text", "C.UTF-8"),
]


def target_columns(
    *extra: CatalogColumn, drop: tuple[str, ...] = (), rename: dict[str, str] | None = None
) -> list[CatalogColumn]:
    cols = [
        CatalogColumn((rename or {}).get(c.name, c.name), c.type, c.typname, c.collation)
        for c in SOURCE_COLUMNS
        if c.name not in drop
    ]
    return [
        *cols,
        CatalogColumn("__cdc_commit_lsn", "bigint", "int8"),
        CatalogColumn("__cdc_lsn", "bigint", "int8"),
        *extra,
    ]


def plan_for(rules: list[TransformRule], tcols: list[CatalogColumn] | None = None, key: tuple[str, ...] = ("id",)):  # type: ignore[no-untyped-def]
    report = build_transformer(rules, "salt").column_report(ITEMS, [c.name for c in SOURCE_COLUMNS])
    target = report.target or TableId("public", "items")
    return build_plan(ITEMS, target, SOURCE_COLUMNS, key, tcols if tcols is not None else target_columns(), report)


def row_text(plan: TablePlan, side: str) -> sql.Composable:
    return pg_row_text(plan.checks, side)


def range_where(plan: TablePlan, side: str, key_range: tuple[object, object]) -> tuple[sql.Composable, list[object]]:
    return pg_range_where(plan.checks, side, key_range)  # type: ignore[arg-type]


def render(composable: sql.Composable) -> str:
    return composable.as_string(None)


# --------------------------------------------------------------------------- canonical text


def test_canonical_kind() -> None:
    assert canonical_kind("numeric") is Kind.NUMERIC
    assert canonical_kind("jsonb") is Kind.JSON
    assert canonical_kind("json") is Kind.JSON
    assert canonical_kind("timetz") is Kind.TIMETZ
    assert canonical_kind("bytea") is Kind.BYTEA
    assert canonical_kind("_numeric") is Kind.TEXT
    assert canonical_kind("timestamptz") is Kind.TEXT


def test_canonical_expressions() -> None:
    c = sql.Identifier("c")
    assert render(canonical_expr(c, Kind.TEXT)) == '("c")::text'
    assert render(canonical_expr(c, Kind.NUMERIC)) == 'trim_scale("c")::text'
    assert render(canonical_expr(c, Kind.NUMERIC, native=False)) == 'trim_scale(("c")::text::numeric)::text'
    assert render(canonical_expr(c, Kind.JSON)) == '("c")::jsonb::text'
    assert render(canonical_expr(c, Kind.TIMETZ)) == "((\"c\") AT TIME ZONE 'UTC')::text"
    assert render(canonical_expr(c, Kind.BYTEA)) == "encode(\"c\", 'hex')"


# --------------------------------------------------------------------------- plans


def test_plain_plan_compares_every_user_column_and_never_own_columns() -> None:
    plan = plan_for([])
    assert [c.source for c in plan.columns] == ["id", "name", "email", "price", "doc", "secret"]
    assert [c.source for c in plan.key] == ["id"]
    assert plan.not_verifiable is None and plan.problem is None and not plan.collate_c
    assert "__cdc" not in render(row_text(plan, "target"))
    assert render(row_text(plan, "source")).startswith('ROW(("id")::text, ("name")::text')


def test_masked_and_excluded_columns_are_reported_not_compared() -> None:
    plan = plan_for(
        [TransformRule(match="public.items", mask={"email": "redact", "secret": "hash"}, exclude=["doc"])],
        target_columns(drop=("doc",)),
    )
    assert [c.source for c in plan.columns] == ["id", "name", "price"]
    assert plan.excluded == {
        "email": "masked (redact)",
        "secret": "masked (hash)",
        "doc": "transforms[0].exclude",
    }
    assert plan.problem is None


def test_renames_and_routes_map_to_target_names() -> None:
    plan = plan_for(
        [TransformRule(match="public.*", rename={"name": "full_name"}, route="archive.{table}")],
        target_columns(rename={"name": "full_name"}),
    )
    assert plan.target == TableId("archive", "items")
    assert plan.renamed == {"name": "full_name"}
    assert '("full_name")::text' in render(row_text(plan, "target"))
    assert '("name")::text' in render(row_text(plan, "source"))


def test_row_filters_and_hooks_make_a_table_not_verifiable() -> None:
    plan = plan_for([TransformRule(match="public.items", where="price > 10")])
    assert plan.not_verifiable == "transforms[0].where: price > 10"
    plan = plan_for([TransformRule(match="public.items", ops=["c", "u", "r"])])
    assert plan.not_verifiable is not None and "ops" in plan.not_verifiable


def test_missing_target_column_is_a_problem_and_absent_target_is_not() -> None:
    assert plan_for([], target_columns(drop=("price",))).problem == "target column 'price' (source 'price') is missing"
    absent = plan_for([], [])
    assert not absent.target_exists and absent.problem is None


def test_type_differences_cast_through_text_on_the_target_side() -> None:
    tcols = [
        CatalogColumn(
            c.name, "text" if c.name == "price" else c.type, "text" if c.name == "price" else c.typname, c.collation
        )
        for c in target_columns()
    ]
    plan = plan_for([], tcols)
    price = next(c for c in plan.columns if c.source == "price")
    assert not price.same_type
    assert 'trim_scale(("price")::text::numeric)::text' in render(row_text(plan, "target"))
    assert 'trim_scale("price")::text' in render(row_text(plan, "source"))


def test_differing_key_collations_compare_keys_under_c() -> None:
    tcols = [CatalogColumn(c.name, c.type, c.typname, "en_US.UTF-8" if c.collation else None) for c in target_columns()]
    plan = plan_for([], tcols, key=("name",))
    assert plan.collate_c
    where, params = range_where(plan, "target", (("a",), ("m",)))
    assert render(where) == ' WHERE ROW("name" COLLATE "C") > ROW(%s) AND ROW("name" COLLATE "C") <= ROW(%s)'
    assert params == ["a", "m"]


def test_range_where_open_ends_and_composite_keys() -> None:
    plan = plan_for([], key=("id", "name"))
    where, params = range_where(plan, "source", (None, (5, "x")))
    assert render(where) == ' WHERE ROW("id", "name") <= ROW(%s, %s)'
    assert params == [5, "x"]
    where, params = range_where(plan, "source", (None, None))
    assert render(where) == "" and params == []


def test_keyless_plan() -> None:
    plan = plan_for([], key=())
    assert plan.keyless


@given(st.integers(0, 10**9), st.integers(1, 10**6))
def test_bucket_count_bounds(rows: int, chunk: int) -> None:
    n = bucket_count(rows, chunk)
    assert 1 <= n <= MAX_BUCKETS
    if rows <= chunk:
        assert n == 1


# --------------------------------------------------------------------------- results


def result(*tables: TableResult) -> VerifyResult:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return VerifyResult("p", "s", now, now, CatchUp(True, True, 0.4), list(tables), 100)


def test_format_range_and_diff() -> None:
    assert format_range((None, (10,))) == "(-inf, 10]"
    assert format_range(((10,), None)) == "(10, +inf]"
    assert format_range((("a", 1), ("b", 2))) == "((a, 1), (b, 2)]"
    diff = ChunkDiff(2, ((10,), (20,)), (10, "x"), (9, "y"))
    assert diff.describe() == "chunk 2 (10, 20]: source 10 rows, target 9 rows"
    assert diff.to_dict()["low"] == [10]


def test_exit_codes() -> None:
    ok = TableResult(ITEMS, ITEMS, Status.MATCH, rows_source=3, rows_target=3, chunks=1)
    nv = TableResult(TableId("public", "f"), None, Status.NOT_VERIFIABLE, "where")
    bad = TableResult(TableId("public", "b"), None, Status.MISMATCH)
    assert result(ok).exit_code() == 0
    assert result(ok, nv).exit_code() == 1
    assert result(ok, nv).exit_code(allow_unverifiable=True) == 0
    assert result(ok, bad).exit_code(allow_unverifiable=True) == 1
    assert format_result(result(ok)).endswith("OK: source and target match")
    assert format_result(result(ok, nv), allow_unverifiable=True).endswith(
        "OK: every verifiable table matches (1 not verifiable)"
    )
    assert format_result(result(ok, nv)).endswith("NOT OK: see above")


def test_format_result_lists_chunks_and_excluded_columns() -> None:
    t = TableResult(
        ITEMS,
        ITEMS,
        Status.MISMATCH,
        rows_source=10,
        rows_target=11,
        chunks=2,
        mismatched=[ChunkDiff(2, ((5,), None), (5, "a"), (6, "b"))],
        excluded={"email": "masked (redact)"},
    )
    text = format_result(result(t))
    assert "public.items  public.items  mismatch  10        11        2       1" in text
    assert "mismatch chunk 2 (5, +inf]: source 5 rows, target 6 rows" in text
    assert "excluded column email: masked (redact)" in text
    assert text.endswith("NOT OK: see above")
    assert result(t).to_dict()["tables"][0]["mismatched_chunks"][0]["range"] == "(5, +inf]"


def test_export_verify_metrics() -> None:
    t = TableResult(ITEMS, ITEMS, Status.MATCH, rows_source=7, rows_target=7, chunks=1)
    export_verify_metrics(result(t), now=123.0)
    labels = {"pipeline": "p", "table": "public.items"}
    assert metrics.REGISTRY.get_sample_value("cdc_verify_rows", {**labels, "side": "source"}) == 7
    assert metrics.REGISTRY.get_sample_value("cdc_verify_ok", labels) == 1
    assert metrics.REGISTRY.get_sample_value("cdc_verify_last_run_timestamp_seconds", labels) == 123.0
    assert metrics.REGISTRY.get_sample_value("cdc_verify_mismatched_chunks", labels) == 0


# --------------------------------------------------------------------------- cutover


def test_cutover_needs_low_lag_for_the_hold_time_and_a_clean_verification() -> None:
    r = CutoverReadiness(max_lag_s=5, hold_s=60)
    assert not r.observe(0, 1.0, True)
    assert not r.observe(59, 2.0, True)
    assert r.observe(60, 2.0, True)
    assert not r.observe(61, 2.0, False)  # a dirty verification
    assert r.observe(62, 5.0, True)  # at the threshold is below enough
    assert not r.observe(63, 5.1, True)  # a spike restarts the hold
    assert not r.observe(100, 1.0, True)
    assert r.observe(163, 1.0, True)
    assert not r.observe(164, None, True)  # unknown lag
    assert r.below_since is None
    with pytest.raises(ValueError, match="negative"):
        CutoverReadiness(-1, 0)


def test_verification_clean() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a, b = TableId("public", "a"), TableId("public", "b")
    stored = {"public.a": VerificationRecord("public.a", True, "match", 1, 1, 1, 0, now)}
    assert verification_clean(stored, [a])
    assert not verification_clean(stored, [a, b])  # b never verified
    stored["public.b"] = VerificationRecord("public.b", False, "mismatch", 1, 2, 1, 1, now)
    assert not verification_clean(stored, [a, b])
    assert not verification_clean({}, [])


def test_schema_differences_are_reported_apart_from_data() -> None:
    """Issue 19: a column dropped at the source stays on the target and is reported, not
    compared; a compared column missing on the target is a schema mismatch."""
    kept = plan_for([], target_columns(CatalogColumn("user_name", "character varying(100)", "varchar")))
    assert kept.target_only == ("user_name",) and kept.problem is None and kept.missing == ()
    assert "user_name" not in [c.target for c in kept.columns]
    lost = plan_for([], target_columns(drop=("price",)))
    assert lost.missing == ("price",)
