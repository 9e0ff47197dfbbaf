"""The bulk load's progress (pipeline.control.bulkload.progress): the cdc_bulk_load_* metrics, and
the plain lines printed off a terminal (rows, percent, rows/s, ETA; the done line always); the
text and JSON forms of ``load run``'s report."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.cli.load_cmd import report_doc, report_lines
from pipeline.control.bulkload.model import LoadReport, TableReport
from pipeline.control.bulkload.progress import BulkProgress, TableProgress, plain_line
from pipeline.core import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_metrics_follow_the_copy() -> None:
    clock = Clock()
    progress = BulkProgress(clock=clock)
    progress.planned("p_metrics", "public.t", 1000)
    assert sample("cdc_bulk_load_table_rows", pipeline="p_metrics", table="public.t") == 1000
    assert sample("cdc_bulk_load_rows_total", pipeline="p_metrics", table="public.t") == 0
    progress.copied("p_metrics", "public.t", 200)
    clock.now += 2
    progress.copied("p_metrics", "public.t", 300)
    assert sample("cdc_bulk_load_rows_total", pipeline="p_metrics", table="public.t") == 500
    assert sample("cdc_bulk_load_progress_ratio", pipeline="p_metrics", table="public.t") == 0.5
    assert sample("cdc_bulk_load_rows_per_second", pipeline="p_metrics") == 250.0  # 500 rows over 2 s
    progress.copied("p_metrics", "public.t", 900)  # reltuples was low: the ratio stays below 1
    assert sample("cdc_bulk_load_progress_ratio", pipeline="p_metrics", table="public.t") == 0.99
    clock.now += 2
    progress.table_done("p_metrics", "public.t", 1400, 4.0)
    assert sample("cdc_bulk_load_progress_ratio", pipeline="p_metrics", table="public.t") == 1
    assert sample("cdc_bulk_load_rows_per_second", pipeline="p_metrics") == 350.0


def test_plain_lines_are_rate_limited_and_the_done_line_is_always_printed() -> None:
    out = io.StringIO()
    clock = Clock()
    with BulkProgress(
        Console(file=out, highlight=False, soft_wrap=True), plain_interval_s=5.0, clock=clock
    ) as progress:
        progress.planned("p_plain", "public.accounts", 1_000_000)
        progress.copied("p_plain", "public.accounts", 100_000)
        clock.now += 1
        progress.copied("p_plain", "public.accounts", 100_000)  # within 5 s: not printed
        clock.now += 5
        progress.copied("p_plain", "public.accounts", 100_000)
        progress.table_done("p_plain", "public.accounts", 1_000_000, 10.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "load p_plain public.accounts: 100,000/1,000,000 rows (10%)"  # no rate from one report
    assert lines[1] == "load p_plain public.accounts: 300,000/1,000,000 rows (30%), 50,000 rows/s, ETA 0:14"
    assert lines[2] == "load p_plain public.accounts: done, 1,000,000 rows in 10.0s (100,000 rows/s)"
    assert len(lines) == 3


def test_table_progress_eta_and_unknown_estimate() -> None:
    t = TableProgress("p", "public.t", 0, rows=10, started=0.0)
    assert t.ratio() == 0.0 and t.eta_s(5.0) is None
    assert plain_line(t, 5.0) == "load p public.t: 10/0 rows (0%), 2 rows/s"
    assert plain_line(TableProgress("p", "public.t", 5), 5.0) == "load p public.t: 0/5 rows (0%)"


def report(**overrides: object) -> LoadReport:
    values: dict[str, object] = {
        "source": "app",
        "slot_name": "cdc_app",
        "consistent_lsn": (1 << 32) + 0x2A,
        "tables": (
            TableReport("orders_pipe", "public.orders", 1_000_000, 8.0, "copy"),
            TableReport("orders_pipe", "public.notes", 10, 0.5, "rows"),
        ),
        "rows": 1_000_010,
        "copy_seconds": 8.2,
        "rows_per_s": 121_952.4,
        "recovered": False,
        "already_loaded": False,
    }
    values.update(overrides)
    return LoadReport(**values)  # type: ignore[arg-type]


def test_load_report_text_and_json() -> None:
    lines = report_lines(report())
    assert lines[0] == "source app: slot cdc_app, consistent point 1/2A"
    assert lines[1].split() == [
        "orders_pipe",
        "public.orders",
        "1,000,000",
        "rows",
        "8.0",
        "s",
        "125,000",
        "rows/s",
        "(copy)",
    ]
    assert lines[-1] == "bulk load: 1,000,010 rows in 8.2 s (121,952 rows/s)"
    doc = report_doc(report(recovered=True))
    assert doc["consistent_point"] == "1/2A" and doc["recovered"] is True
    assert doc["tables"][0] == {
        "pipeline": "orders_pipe", "table": "public.orders", "rows": 1_000_000, "seconds": 8.0,
        "rows_per_s": 125_000.0, "path": "copy",
    }  # fmt: skip
    assert "cleaned up first" in report_lines(report(recovered=True))[1]
    assert report_lines(report(already_loaded=True, tables=(), rows=0)) == [
        "source app: already loaded (slot cdc_app); connector registered"
    ]


def test_bars_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, no_color=True)
    with BulkProgress(console) as progress:
        progress.planned("p_bars", "public.accounts", 1000)
        progress.copied("p_bars", "public.accounts", 400)
        progress.copied("p_bars", "public.unplanned", 7)  # not announced: shown without a total
        progress.table_done("p_bars", "public.accounts", 1000, 2.0)
    text = out.getvalue()
    assert "p_bars public.accounts" in text and "100%" in text
    assert "1,000/1,000 rows" in text
    assert "p_bars public.unplanned" in text
