"""``sources[].initial_load`` / ``bulk_load`` settings, their validation, and the connector config of a
bulk source (always ``snapshot.mode=no_data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.debezium import build_connector_config
from pipeline.core.settings.loading import ConfigError, load_settings
from pipeline.core.settings.root import Settings

BASE = """
sources:
  - name: app
    database: app
    user: debezium
    password: pw
    tables: [public.orders]
{source_extra}
pipelines:
  - name: orders
    source: app
    target:
      url: postgresql://writer:pw@db:5432/app
{target_extra}
"""


def settings(tmp_path: Path, source_extra: str = "", target_extra: str = "") -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(source_extra=source_extra, target_extra=target_extra), encoding="utf-8")
    return load_settings(path, {})


def problems(tmp_path: Path, source_extra: str = "", target_extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, source_extra, target_extra)
    return list(err.value.problems)


def test_defaults_are_snapshot_and_bulk_tuning(tmp_path: Path) -> None:
    src = settings(tmp_path).source("app")
    assert src.initial_load == "snapshot"
    assert (src.bulk_load.jobs, src.bulk_load.chunk_rows, src.bulk_load.binary) == (4, 250_000, True)
    assert build_connector_config(src)["snapshot.mode"] == "initial"


def test_bulk_source_registers_with_no_data(tmp_path: Path) -> None:
    src = settings(
        tmp_path, "    initial_load: bulk\n    bulk_load: {jobs: 8, chunk_rows: 100000, binary: false}"
    ).source("app")
    assert src.initial_load == "bulk"
    assert (src.bulk_load.jobs, src.bulk_load.chunk_rows, src.bulk_load.binary) == (8, 100_000, False)
    assert build_connector_config(src)["snapshot.mode"] == "no_data"


@pytest.mark.parametrize("mode", ["initial", "no_data"])
def test_bulk_accepts_an_explicit_initial_or_no_data(tmp_path: Path, mode: str) -> None:
    src = settings(tmp_path, f"    initial_load: bulk\n    snapshot_mode: {mode}").source("app")
    assert build_connector_config(src)["snapshot.mode"] == "no_data"


@pytest.mark.parametrize("mode", ["always", "when_needed", "initial_only"])
def test_bulk_refuses_another_explicit_snapshot_mode(tmp_path: Path, mode: str) -> None:
    found = problems(tmp_path, f"    initial_load: bulk\n    snapshot_mode: {mode}")
    assert len(found) == 1
    assert found[0].startswith("sources[0]")
    assert "snapshot_mode" in found[0] and mode in found[0] and "initial_load: bulk" in found[0]
    assert "drop snapshot_mode" in found[0]


def test_snapshot_source_keeps_its_snapshot_mode(tmp_path: Path) -> None:
    src = settings(tmp_path, "    snapshot_mode: always").source("app")
    assert build_connector_config(src)["snapshot.mode"] == "always"


def test_bulk_refuses_versions_table(tmp_path: Path) -> None:
    found = problems(tmp_path, "    initial_load: bulk", "      versions: table")
    assert len(found) == 1
    assert "pipelines[0].target.versions" in found[0]
    assert "initial_load: bulk" in found[0] and "versions: columns" in found[0]


def test_versions_table_is_fine_with_snapshot(tmp_path: Path) -> None:
    assert settings(tmp_path, "", "      versions: table").pipeline("orders").target.versions == "table"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("    initial_load: copy", "initial_load"),
        ("    bulk_load: {jobs: 0}", "jobs"),
        ("    bulk_load: {jobs: 33}", "jobs"),
        ("    bulk_load: {chunk_rows: 10}", "chunk_rows"),
        ("    bulk_load: {parallel: 2}", "parallel"),
    ],
)
def test_bulk_load_values_are_checked(tmp_path: Path, extra: str, key: str) -> None:
    found = problems(tmp_path, extra)
    assert any(p.startswith("sources[0]") and key in p for p in found), found
