"""The local stack's MariaDB target and Schema Registry: settings, service list, masked endpoint
(no processes)."""

from __future__ import annotations

from pathlib import Path

from pipeline.localstack import LocalStack, LocalStackSettings


def test_mariadb_is_a_service_unless_disabled(tmp_path: Path) -> None:
    on = LocalStack(LocalStackSettings(state_dir=tmp_path / "a", mariadb_port=15999))
    names = ["postgres-source", "postgres-target", "mariadb", "kafka", "registry", "connect"]
    assert [s.name for s in on.services] == names
    assert on.mariadb.endpoint == "mariadb+pymysql://cdc:***@127.0.0.1:15999/"  # password masked
    assert on.mariadb.health().running is False  # nothing started: stopped, not an error
    off = LocalStack(LocalStackSettings(state_dir=tmp_path / "b", mariadb_enabled=False))
    assert "mariadb" not in [s.name for s in off.services]


def test_mariadb_url_carries_the_development_credentials() -> None:
    s = LocalStackSettings(mariadb_port=3399)
    assert s.mariadb_url("demo") == "mariadb+pymysql://cdc:cdc@127.0.0.1:3399/demo"
    assert LocalStackSettings().mariadb_port == 3307  # beside a system MariaDB on 3306


def test_registry_is_a_service_unless_disabled(tmp_path: Path) -> None:
    on = LocalStack(LocalStackSettings(state_dir=tmp_path / "a", registry_port=18999))
    assert on.registry.endpoint == "http://127.0.0.1:18999/apis/ccompat/v7"
    assert on.settings.registry_url == on.registry.endpoint
    assert on.registry.health().running is False
    off = LocalStack(LocalStackSettings(state_dir=tmp_path / "b", registry_enabled=False))
    assert "registry" not in [s.name for s in off.services]
