"""CLI conventions of ``connectors``: delete needs --source or --all (then a confirmation, --yes
off a terminal); recover checks its arguments before touching anything. No Connect is needed:
each case exits before the first request."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

CONFIG = """
connect:
  url: http://127.0.0.1:9
sources:
  - name: app
    host: 127.0.0.1
    port: 9
    database: shop
    user: debezium
    tables: [public.orders]
  - name: other
    host: 127.0.0.1
    port: 9
    database: other
    user: debezium
    tables: [public.items]
    snapshot_mode: no_data
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(CONFIG)
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_delete_without_source_needs_all(config: Path) -> None:
    code, out = run("connectors", "delete", "-c", str(config))
    assert code == 2
    assert "pass --all to delete every configured connector" in out


def test_delete_all_off_a_terminal_needs_yes(config: Path) -> None:
    code, out = run("connectors", "delete", "-c", str(config), "--all")
    assert code == 2
    assert "delete connectors cdc-app, cdc-other?" in out
    assert "pass --yes to confirm" in out


def test_recover_rejects_an_unknown_snapshot_kind(config: Path) -> None:
    code, out = run("connectors", "recover", "-c", str(config), "-s", "app", "--snapshot", "blocking")
    assert code == 2
    assert "--snapshot: use initial or incremental" in out


def test_recover_initial_needs_a_snapshotting_mode(config: Path) -> None:
    code, out = run("connectors", "recover", "-c", str(config), "-s", "other")
    assert code == 2
    assert "snapshot_mode is no_data" in out and "--snapshot incremental" in out


def test_recover_needs_one_source(config: Path) -> None:
    code, out = run("connectors", "recover", "-c", str(config))
    assert code == 2
    assert "several sources are defined" in out
