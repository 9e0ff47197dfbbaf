"""``target.versions`` (pure parts): what a created table holds in each mode, the row key a
reduced change is versioned under, and the setting reaching both sink families."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import make_url

from pipeline.core.batch import key_text
from pipeline.core.events import Column, TableId
from pipeline.core.settings.models import PipelineSettings
from sinks.factory import make_target
from sinks.postgres import ddl as pg_ddl
from sinks.postgres.sink import PostgresSink
from sinks.postgres.versions import row_key
from sinks.sqlalchemy import ddl as sa_ddl
from sinks.sqlalchemy.sink import SqlAlchemySink

COLUMNS = (Column("id", "int32", optional=False), Column("name", "string"))


def pg_create(key: tuple[str, ...], versions: str) -> str:
    return pg_ddl.create_table_sql(TableId("s", "t"), COLUMNS, key, versions)[1].as_string(None)


def test_postgres_table_mode_creates_the_source_columns_only() -> None:
    assert pg_create(("id",), "table") == (
        'CREATE TABLE IF NOT EXISTS "s"."t" ("id" integer NOT NULL, "name" text, PRIMARY KEY ("id"))'
    )
    assert pg_create((), "table") == 'CREATE TABLE IF NOT EXISTS "s"."t" ("id" integer, "name" text)'
    keyless = pg_ddl.create_table_sql(TableId("s", "t"), COLUMNS, (), "table")
    assert keyless[2].as_string(None) == 'ALTER TABLE "s"."t" REPLICA IDENTITY FULL'  # reverse-ready
    columns_mode = pg_create((), "columns")
    assert '"__cdc_commit_lsn" bigint NOT NULL' in columns_mode
    assert 'PRIMARY KEY ("__cdc_row_id")' in columns_mode


@pytest.mark.parametrize("dialect", [sqlite.dialect(), mysql.dialect()])
def test_sqlalchemy_table_mode_creates_the_source_columns_only(dialect: object) -> None:
    keyed = sa_ddl.target_table(TableId("s", "t"), COLUMNS, ("id",), dialect, "table")  # type: ignore[arg-type]
    assert list(keyed.c.keys()) == ["id", "name"]
    assert [c.name for c in keyed.primary_key.columns] == ["id"]
    keyless = sa_ddl.target_table(TableId("s", "t"), COLUMNS, (), dialect, "table")  # type: ignore[arg-type]
    assert list(keyless.c.keys()) == ["id", "name"]
    assert not keyless.primary_key.columns


def test_a_table_without_primary_key_is_keyless_in_both_shapes() -> None:
    assert pg_ddl.TableShape(TableId("s", "t"), {"a": "integer"}, ()).keyless
    assert pg_ddl.TableShape(TableId("s", "t"), {"a": "integer"}, ("__cdc_row_id",)).keyless
    assert not pg_ddl.TableShape(TableId("s", "t"), {"a": "integer"}, ("a",)).keyless
    assert sa_ddl.TableShape(TableId("s", "t"), None, "t", {"a": "int"}, ()).keyless


def test_row_key_is_the_key_text_and_is_rebuilt_for_changes_reduced_without_key_values() -> None:
    text = key_text([7, "x"])
    assert row_key(False, ("id", "k"), text, {"id": 7, "k": "x"}) == text
    # A batch that began with a truncate reduces keyed changes by row id / delete marker.
    assert row_key(False, ("id", "k"), "5:5", {"id": 7, "k": "x", "v": 1}) == text
    assert row_key(False, ("id", "k"), "d:5:5", {"id": 7, "k": "x"}) == text
    assert row_key(True, (), "5:5", {"a": 1}) == "5:5"  # keyless: the row id itself
    assert row_key(False, ("id",), "5:5", {"v": 1}) == "5:5"  # no key values to rebuild from


def test_an_unknown_versions_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="versions"):
        PostgresSink("postgresql://u@h/db", versions="rows")
    with pytest.raises(ValueError, match="versions"):
        SqlAlchemySink(make_url(f"sqlite:///{tmp_path / 't.db'}"), versions="rows")


@pytest.mark.parametrize("url", ["postgresql://w@db/app", "sqlite:///{tmp}/t.db"])
def test_the_setting_reaches_the_sink(url: str, tmp_path: Path) -> None:
    pipe = PipelineSettings.model_validate(
        {"name": "p", "source": "s", "target": {"url": url.format(tmp=tmp_path), "versions": "table"}}
    )
    target = make_target(pipe)
    try:
        assert target._versions == "table"  # type: ignore[attr-defined]
    finally:
        target.close()
