"""The local stack's MariaDB target: settings, service list, masked endpoint (no processes)."""

from __future__ import annotations

from pathlib import Path

from pipeline.localstack import LocalStack, LocalStackSettings


def test_mariadb_is_a_service_unless_disabled(tmp_path: Path) -> None:
    on = LocalStack(LocalStackSettings(state_dir=tmp_path / "a", mariadb_port=15999))
    assert [s.name for s in on.services] == ["postgres-source", "postgres-target", "mariadb", "kafka", "connect"]
    assert on.mariadb.endpoint == "mariadb+pymysql://cdc:***@127.0.0.1:15999/"  # password masked
    assert on.mariadb.health().running is False  # nothing started: stopped, not an error
    off = LocalStack(LocalStackSettings(state_dir=tmp_path / "b", mariadb_enabled=False))
    assert "mariadb" not in [s.name for s in off.services]


def test_mariadb_url_carries_the_development_credentials() -> None:
    s = LocalStackSettings(mariadb_port=3399)
    assert s.mariadb_url("demo") == "mariadb+pymysql://cdc:cdc@127.0.0.1:3399/demo"
    assert LocalStackSettings().mariadb_port == 3307  # beside a system MariaDB on 3306
