"""Target-name collisions (issue 22, defect 1): two tables applied to one target table are refused
by `config validate`, `run`, `control` and the worker's composition, naming both sides and the fix."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import pipeline.app
from pipeline.checks.naming import TargetNameError, check_target_names, database_identity
from pipeline.cli import app
from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.root import Settings


def config(tmp_path: Path, sources: list[dict[str, Any]], pipelines: list[dict[str, Any]]) -> Path:
    for src in sources:
        src.setdefault("database", "app")
        src.setdefault("user", "u")
        src.setdefault("password", "p")
    for pipe in pipelines:
        pipe.setdefault("target", {"url": "postgresql://w@db:5432/app"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, "pipelines": pipelines}), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    settings: Settings = load_settings(path, {})
    return check_target_names(settings.sources, settings.pipelines)


def validate(path: Path) -> tuple[int, list[str]]:
    res = CliRunner().invoke(app, ["config", "validate", "-c", str(path)])
    assert "Traceback" not in res.output
    return res.exit_code, [line.strip() for line in res.output.splitlines()[1:] if line.strip()]


TWO_SCHEMAS = {"name": "app", "tables": ["s1.t", "s2.t"]}


def test_same_table_name_in_two_schemas_is_refused_by_validate(tmp_path: Path) -> None:
    path = config(tmp_path, [dict(TWO_SCHEMAS)], [{"name": "p", "source": "app"}])
    code, lines = validate(path)
    assert code == 2
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("sources[app].tables: ")
    assert "'s1.t'" in line and "'s2.t'" in line and "'public.t'" in line
    assert "route transform" in line and "route: 'public.s2_t'" in line


def test_a_route_transform_fixes_it(tmp_path: Path) -> None:
    pipes = [{"name": "p", "source": "app", "transforms": [{"match": "s2.t", "route": "public.s2_t"}]}]
    path = config(tmp_path, [dict(TWO_SCHEMAS)], pipes)
    assert validate(path) == (0, [])
    # A route keeping the schema, for every table, fixes it as well.
    pipes = [{"name": "p", "source": "app", "transforms": [{"route": "{schema}.{table}"}]}]
    assert problems_of(config(tmp_path, [dict(TWO_SCHEMAS)], pipes)) == []


def test_a_route_can_create_a_collision(tmp_path: Path) -> None:
    src = {"name": "app", "tables": ["public.a", "public.b"]}
    pipes = [{"name": "p", "source": "app", "tables": ["public.a", "public.b"],
              "transforms": [{"match": "public.b", "route": "public.a"}]}]  # fmt: skip
    (line,) = problems_of(config(tmp_path, [src], pipes))
    assert line.startswith("pipelines[p].tables: ")
    assert "'public.a'" in line and "'public.b'" in line


def test_a_user_heartbeat_table_collides_with_the_pipelines_own(tmp_path: Path) -> None:
    src = {"name": "app", "tables": ["public.heartbeat", "public.orders"]}
    path = config(tmp_path, [src], [{"name": "p", "source": "app"}])
    code, lines = validate(path)
    assert code == 2
    (line,) = lines
    assert "'public.heartbeat' of source 'app'" in line
    assert "the pipeline's heartbeat table 'cdc.heartbeat'" in line
    assert "{match: 'public.heartbeat', route: 'public.public_heartbeat'}" in line


def test_a_routed_heartbeat_table_is_followed(tmp_path: Path) -> None:
    """The heartbeat goes through the transforms too: routed onto a user table, it collides."""
    src = {"name": "app", "tables": ["public.beats"]}
    pipes = [{"name": "p", "source": "app", "transforms": [{"match": "cdc.heartbeat", "route": "public.beats"}]}]
    (line,) = problems_of(config(tmp_path, [src], pipes))
    assert "'public.beats'" in line and "heartbeat table 'cdc.heartbeat'" in line


def test_tables_of_two_pipelines_in_one_database_collide(tmp_path: Path) -> None:
    sources = [{"name": "one", "tables": ["public.t"]}, {"name": "two", "tables": ["public.t"]}]
    pipes = [
        {"name": "p1", "source": "one", "target": {"url": "postgresql://a:x@DB:5432/app"}},
        {"name": "p2", "source": "two", "target": {"url": "postgres://b@db:5432/app"}},
    ]
    (line,) = problems_of(config(tmp_path, sources, pipes))
    assert "source 'one' (pipeline 'p1')" in line and "source 'two' (pipeline 'p2')" in line
    assert "one target database" in line
    # Another database, or another target schema: no collision. The heartbeats of both sources
    # share public.heartbeat (one row per source), which is fine.
    pipes[1]["target"] = {"url": "postgresql://b@db:5432/other"}
    assert problems_of(config(tmp_path, sources, pipes)) == []
    pipes[1]["target"] = {"url": "postgresql://b@db:5432/app", "schema": "two"}
    assert problems_of(config(tmp_path, sources, pipes)) == []


def test_the_control_schema_is_reserved(tmp_path: Path) -> None:
    src = {"name": "app", "tables": ["public.t"]}
    pipes = [{"name": "p", "source": "app", "transforms": [{"match": "public.t", "route": "cdc_control.offsets"}]}]
    (line,) = problems_of(config(tmp_path, [src], pipes))
    assert line.startswith("pipelines[p].transforms[0].route: ")
    assert "control schema 'cdc_control'" in line
    pipes = [{"name": "p", "source": "app", "target": {"url": "sqlite:///x.db", "schema": "cdc_control"}}]
    (line,) = problems_of(config(tmp_path, [src], pipes))
    assert line.startswith("pipelines[p].target.schema: 'cdc_control' is also target.control_schema")


def test_renames_onto_the_sinks_own_columns_are_refused(tmp_path: Path) -> None:
    src = {"name": "app", "tables": ["public.t"]}
    pipes = [{"name": "p", "source": "app", "transforms": [
        {"rename": {"lsn": "__cdc_lsn"}}, {"add_columns": {"__cdc_row_id": "$lsn"}}]}]  # fmt: skip
    lines = problems_of(config(tmp_path, [src], pipes))
    assert [line.split(":")[0] for line in lines] == [
        "pipelines[p].transforms[0].rename",
        "pipelines[p].transforms[1].add_columns",
    ]


def test_database_identity_ignores_credentials_and_drivers() -> None:
    assert database_identity("postgresql://a:x@DB:5432/app") == database_identity("postgres://b@db:5432/app")
    assert database_identity("mariadb+pymysql://u@h/app") == database_identity("mysql://v@h/app")
    assert database_identity("sqlite:///a.db") != database_identity("sqlite:///b.db")


def test_run_refuses_before_anything_connects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, [dict(TWO_SCHEMAS)], [{"name": "p", "source": "app"}])

    def no_client(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a Kafka client was created for a configuration with colliding names")

    monkeypatch.setattr(pipeline.app, "Consumer", no_client)
    monkeypatch.setattr(pipeline.app, "Producer", no_client)
    res = CliRunner().invoke(app, ["run", "-c", str(path)])
    assert res.exit_code == 2, res.output
    assert "sources[app].tables: 's1.t' of source 'app' and 's2.t'" in res.output
    settings = load_settings(path, {})
    with pytest.raises(TargetNameError) as err:
        pipeline.app.build_worker(settings, settings.pipeline("p"), serve_http=False)
    assert len(err.value.problems) == 1
    with pytest.raises(TargetNameError):
        pipeline.app.run_control(settings, stop=threading.Event())
    res = CliRunner().invoke(app, ["control", "-c", str(path)])
    assert res.exit_code == 2 and "would both be applied to target table 'public.t'" in res.output
