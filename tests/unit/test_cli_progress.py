"""Progress displays: plain lines off a terminal, a rich bar on one, NO_COLOR honoured; the
verify and snapshot progress callbacks feed them."""

from __future__ import annotations

import io
import re
import uuid

import pytest

from pipeline.cli.progress import ProgressView, make_console
from pipeline.cli.snapshot_cmd import snapshot_progress
from pipeline.cli.verify_cmd import verify_progress
from pipeline.control.snapshot.model import RequestState, SnapshotKind, SnapshotRequest, TableProgress, TableState
from pipeline.control.snapshot.progress import request_progress
from pipeline.control.verify.model import Status, TableResult
from pipeline.control.verify.run import VerifyProgress, _Tally
from pipeline.core.events import TableId

SGR_COLOUR = re.compile(r"\x1b\[(?:3[0-9]|9[0-7]|38;)")


def _plain_view(buf: io.StringIO, interval: float = 0.0) -> ProgressView:
    return ProgressView("verify p", "chunks", make_console(buf), plain_interval_s=interval)


def test_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    with _plain_view(buf) as view:
        assert not view.is_bar
        view.update(3, 10, "public.t")
        view.update(10, 10, "done")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("verify p: 3/10 chunks (30%) public.t, ETA ")
    assert lines[1] == "verify p: 10/10 chunks (100%) done"
    assert "\x1b" not in buf.getvalue()


def test_plain_lines_are_rate_limited_but_the_last_is_printed() -> None:
    buf = io.StringIO()
    with _plain_view(buf, interval=3600) as view:
        for i in range(1, 101):
            view.update(i, 100)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "verify p: 1/100 chunks (1%), ETA " + lines[0].rsplit("ETA ", 1)[1],
        "verify p: 100/100 chunks (100%)",
    ]


def test_unknown_total_prints_the_count() -> None:
    buf = io.StringIO()
    with _plain_view(buf) as view:
        view.update(5, None)
    assert buf.getvalue() == "verify p: 5 chunks\n"


def _rendered(force_terminal: bool) -> str:
    buf = io.StringIO()
    with ProgressView("verify p", "chunks", make_console(buf, force_terminal=force_terminal)) as view:
        assert view.is_bar is force_terminal
        view.update(4, 8, "public.t")
        view.update(8, 8, "done")
    return buf.getvalue()


def test_a_terminal_gets_a_bar_in_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _rendered(force_terminal=True)
    assert "━" in out
    assert "8/8 chunks" in out and "100%" in out
    assert SGR_COLOUR.search(out)


def test_no_color_disables_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = _rendered(force_terminal=True)
    assert "━" in out  # still a bar
    assert not SGR_COLOUR.search(out)


def test_verify_progress_callback_feeds_the_view() -> None:
    buf = io.StringIO()
    with _plain_view(buf) as view:
        show = verify_progress(view, started=0.0)
        show(VerifyProgress(TableId("public", "t"), 0, 2, 3, 7, 3000))
    line = buf.getvalue().strip()
    assert line.startswith("verify p: 3/7 chunks (43%) public.t (table 1/2), ")
    assert re.search(r", \d[\d,]* rows/s", line)


def test_tally_replaces_estimates_with_real_chunk_counts() -> None:
    seen: list[VerifyProgress] = []
    a, b = TableId("s", "a"), TableId("s", "b")
    tally = _Tally(seen.append, {a: 5, b: 1})
    tally.start(a)
    tally.chunks(1, 100)
    tally.chunks(1, 100)
    tally.finish(TableResult(a, a, Status.MATCH, chunks=2), counted=2)
    assert seen[-1] == VerifyProgress(a, 1, 2, 2, 3, 200)  # a's estimate 5 became 2
    tally.start(b)
    tally.chunks(4, 10)  # keyless: buckets reported at once, more than estimated
    tally.finish(TableResult(b, b, Status.MATCH, chunks=4), counted=4)
    assert seen[-1] == VerifyProgress(b, 2, 2, 6, 6, 210)


def _request(state: RequestState, progress: dict[str, TableProgress]) -> SnapshotRequest:
    return SnapshotRequest(
        uuid.uuid4(),
        "src",
        1,
        SnapshotKind.INCREMENTAL,
        "cli",
        ("public.a", "public.b"),
        state=state,
        progress=progress,
    )


def test_request_progress_counts_scanned_and_key_ratio() -> None:
    request = _request(
        RequestState.RUNNING,
        {
            "public.a": TableProgress(TableState.COMPLETED, rows_scanned=1000),
            "public.b": TableProgress(TableState.RUNNING, last_key="250", max_key="1000"),
        },
    )
    p = request_progress(request, {"public.a": 1000.0, "public.b": 2000.0})
    assert p.rows_done == 1000 + 500
    assert p.rows_total == 3000
    assert p.ratio == pytest.approx(0.5)


def test_request_progress_without_estimates_or_numeric_keys() -> None:
    request = _request(RequestState.RUNNING, {"public.b": TableProgress(TableState.RUNNING, "k9", "k99")})
    p = request_progress(request, {"public.a": None, "public.b": None})
    assert (p.rows_done, p.rows_total, p.ratio) == (0.0, None, None)
    done = _request(RequestState.COMPLETED, {})
    assert request_progress(done, {"public.a": 10.0, "public.b": 5.0}).ratio == 1.0


def test_snapshot_progress_callback_feeds_the_view() -> None:
    buf = io.StringIO()
    request = _request(RequestState.RUNNING, {"public.a": TableProgress(TableState.COMPLETED, rows_scanned=40)})
    with ProgressView("snapshot src", "rows", make_console(buf), plain_interval_s=0) as view:
        snapshot_progress(view, {"public.a": 40.0, "public.b": 60.0})([request])
    assert buf.getvalue().startswith("snapshot src: 40/100 rows (40%) running, 1/2 table(s)")
