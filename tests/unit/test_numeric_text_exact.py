"""``verify.numeric_text_exact``: numeric columns compared by text, display scale included (issue 22, defect 7)."""

from __future__ import annotations

from decimal import Decimal

from psycopg import sql

from pipeline.control.verify.model import VerifySettings
from pipeline.core.settings.models import VerifyConfig
from sinks.pg_canonical import Kind, canonical_expr
from sinks.sqlalchemy.canonical import compared_types, row_text


def _render(expr: sql.Composable) -> str:
    return expr.as_string(None)


def test_postgresql_canonical_numeric_keeps_the_scale_only_when_exact() -> None:
    column = sql.Identifier("v")
    assert _render(canonical_expr(column, Kind.NUMERIC)) == 'trim_scale("v")::text'
    assert _render(canonical_expr(column, Kind.NUMERIC, exact=True)) == '("v")::text'
    assert _render(canonical_expr(column, Kind.NUMERIC, native=False, exact=True)) == '(("v")::text::numeric)::text'


def test_python_canonical_numeric_keeps_the_scale_only_when_exact() -> None:
    by_value = compared_types(["int4", "numeric"], numeric_text_exact=False)
    by_text = compared_types(["int4", "numeric"], numeric_text_exact=True)
    assert row_text([1, Decimal("1.50")], by_value) == row_text([1, "1.5"], by_value)
    assert row_text([1, Decimal("1.50")], by_text) != row_text([1, "1.5"], by_text)
    assert row_text([1, Decimal("1.50")], by_text) == row_text([1, "1.50"], by_text) == '["1","1.50"]'
    assert row_text([1, Decimal("NaN")], by_text) == '["1","NaN"]'


def test_the_setting_reaches_the_verifier_settings() -> None:
    assert VerifySettings.from_config(VerifyConfig()).numeric_text_exact is False
    assert VerifySettings.from_config(VerifyConfig(numeric_text_exact=True)).numeric_text_exact is True
