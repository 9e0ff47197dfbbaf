"""The metrics reference in the docs lists exactly the metrics of pipeline/core/metrics.py, with
their type and labels (and nothing else)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core import metrics

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "README.md"
SECTION = "## Metrics reference"


def reference_rows(text: str) -> dict[str, tuple[str, tuple[str, ...], str]]:
    """``name -> (type, labels, meaning)`` from the table rows of the reference section
    (from ``## Metrics reference`` to the next level-2 heading)."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    rows: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"{name} is listed twice"
        labels = tuple(re.findall(r"`([^`]+)`", cells[2]))
        rows[name] = (cells[1], labels, cells[3])
    return rows


@pytest.fixture(scope="module")
def rows() -> dict[str, tuple[str, tuple[str, ...], str]]:
    return reference_rows(DOC.read_text(encoding="utf-8"))


def test_every_defined_metric_is_documented(rows: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    missing = [m.name for m in metrics.catalogue() if m.name not in rows]
    assert not missing, f"add to {DOC.name}'s metrics reference: {missing}"


def test_every_documented_metric_is_defined(rows: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    defined = {m.name for m in metrics.catalogue()}
    extra = sorted(set(rows) - defined)
    assert not extra, f"documented but not defined in pipeline/core/metrics.py: {extra}"


def test_types_and_labels_match(rows: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    for info in metrics.catalogue():
        kind, labels, meaning = rows[info.name]
        assert kind == info.type, f"{info.name}: documented as {kind}, defined as {info.type}"
        assert labels == info.labels, f"{info.name}: documented labels {labels}, defined {info.labels}"
        assert meaning, f"{info.name}: no meaning"


def test_every_metric_has_a_one_line_meaning() -> None:
    for info in metrics.catalogue():
        assert info.help and "\n" not in info.help, info.name
        assert info.name.startswith("cdc_"), info.name


def test_parser_reads_a_table() -> None:
    text = "## Metrics reference\n\n| Name | Type | Labels | Meaning |\n| --- | --- | --- | --- |\n"
    text += "| `cdc_x_total` | counter | `a`, `b` | X. |\n| `cdc_y` | gauge | - | Y. |\n"
    text += "\n## Next\n| `cdc_z` | gauge | - | Z |\n"
    assert reference_rows(text) == {"cdc_x_total": ("counter", ("a", "b"), "X."), "cdc_y": ("gauge", (), "Y.")}
