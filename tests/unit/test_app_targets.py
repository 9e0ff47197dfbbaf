"""Choosing the sink by ``target.url`` scheme; passwords merged into the URL object, never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.models import PipelineSettings
from sinks.factory import UnsupportedTargetError, make_sink, make_target, target_kind, target_sqlalchemy_url
from sinks.postgres.sink import PostgresSink
from sinks.sqlalchemy.sink import SqlAlchemySink


def pipeline_with(tmp_path: Path, target: str) -> PipelineSettings:
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n  - {name: app, database: app, user: u, password: p, tables: [public.t]}\n"
        f"pipelines:\n  - name: orders\n    source: app\n    target:\n{target}",
        encoding="utf-8",
    )
    return load_settings(path, {}).pipelines[0]


@pytest.mark.parametrize(
    ("url", "kind", "driver"),
    [
        ("postgresql://w@db/app", "postgresql", None),
        ("postgresql+psycopg://w@db/app", "postgresql", None),
        ("mysql://w@db/app", "sqlalchemy", "mysql+pymysql"),
        ("mysql+pymysql://w@db/app", "sqlalchemy", "mysql+pymysql"),
        ("mariadb://w@db/app", "sqlalchemy", "mariadb+pymysql"),
        ("mariadb+pymysql://w@db/app", "sqlalchemy", "mariadb+pymysql"),
        ("sqlite:////var/lib/t.db", "sqlalchemy", "sqlite"),
    ],
)
def test_scheme_selects_the_sink_family(tmp_path: Path, url: str, kind: str, driver: str | None) -> None:
    pipe = pipeline_with(tmp_path, f"      url: {url}\n")
    assert target_kind(pipe.target) == kind
    if driver is not None:
        assert target_sqlalchemy_url(pipe.target).drivername == driver


def test_password_is_set_on_the_url_object_and_masked_in_text(tmp_path: Path) -> None:
    pipe = pipeline_with(tmp_path, "      url: mariadb://writer@db:3306/app\n      password: s3cr#t/@\n")
    url = target_sqlalchemy_url(pipe.target)
    assert url.password == "s3cr#t/@"
    assert "s3cr" not in str(url)  # SQLAlchemy renders URL objects with the password hidden
    assert url.username == "writer" and url.host == "db" and url.port == 3306
    own = pipeline_with(tmp_path, "      url: mysql://writer:inurl@db/app\n      password: other\n")
    assert target_sqlalchemy_url(own.target).password == "inurl"  # the URL's own password wins


def test_unknown_scheme_names_the_key_and_the_supported_schemes(tmp_path: Path) -> None:
    pipe = pipeline_with(tmp_path, "      url: oracle://w@db/app\n")
    with pytest.raises(UnsupportedTargetError) as err:
        make_sink(pipe)
    text = str(err.value)
    assert "pipelines[orders].target.url" in text
    for scheme in ("postgresql://", "mysql+pymysql://", "mariadb+pymysql://", "sqlite:///"):
        assert scheme in text


def test_make_sink_builds_each_family(tmp_path: Path) -> None:
    sink = make_sink(pipeline_with(tmp_path, f"      url: sqlite:///{tmp_path / 't.db'}\n"))
    assert isinstance(sink, SqlAlchemySink) and sink.dialect == "sqlite"
    sink.close()
    pg = make_sink(pipeline_with(tmp_path, "      url: postgresql://w@db/app\n"))
    assert isinstance(pg, PostgresSink)  # the fast path stays the PostgreSQL default
    pg.close()
    maria = make_sink(pipeline_with(tmp_path, "      url: mariadb://w@127.0.0.1:1/app\n      password: x\n"))
    assert isinstance(maria, SqlAlchemySink) and maria.dialect == "mysql"  # no connection yet
    maria.close()


def test_sqlite_sink_round_trip_offsets(tmp_path: Path) -> None:
    """The embedded target needs no server: offsets stored and reset in a file."""
    structlog.reset_defaults()
    sink = make_sink(pipeline_with(tmp_path, f"      url: sqlite:///{tmp_path / 'o.db'}\n"))
    from pipeline.core.batch import ReducedBatch  # noqa: PLC0415

    sink.apply(ReducedBatch(), "g", {("topic", 0): 5})
    assert sink.stored_offsets("g", [("topic", 0), ("topic", 1)]) == {("topic", 0): 5}
    assert sink.reset_offsets("g") == 1
    sink.close()


def test_stall_timeout_reaches_the_sqlalchemy_targets(tmp_path: Path) -> None:
    """``target.stall_timeout_s`` bounds SQLAlchemy targets too: SQLite's busy timeout (ms)."""
    doc = f"      url: sqlite:///{tmp_path / 's.db'}\n      stall_timeout_s: 2.5\n"
    for made in (make_sink(pipeline_with(tmp_path, doc)), make_target(pipeline_with(tmp_path, doc))):
        assert isinstance(made, SqlAlchemySink)
        with made.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
        made.close()
