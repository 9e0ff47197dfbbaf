"""Key-level rechecks (pipeline.control.verify.converge, multiset, rounds) on in-memory sides whose
rows change between reads like a source under load and a target that lags behind it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.control.verify import converge as converge_module
from pipeline.control.verify.compare import Pending, recount_settled
from pipeline.control.verify.converge import KeyState
from pipeline.control.verify.model import (
    CatchUp,
    ChunkDiff,
    RowDiff,
    Status,
    TableResult,
    VerifyResult,
    VerifySettings,
    format_result,
    to_records,
)
from pipeline.control.verify.multiset import TextState, bucket_of
from pipeline.control.verify.plan import TablePlan
from pipeline.control.verify.rounds import converge
from pipeline.core.events import TableId
from sinks.base import ChecksumPlan, CompareColumn, KeyBound, KeyRange, RowImage, key_text

TABLE_KEY = CompareColumn("id", "id", "int4")
PLAN = ChecksumPlan(
    TableId("public", "t"), TableId("public", "t"), (TABLE_KEY, CompareColumn("v", "v", "int4")), (TABLE_KEY,)
)
KEYLESS = ChecksumPlan(PLAN.table, PLAN.target, PLAN.columns, ())
CAUGHT = CatchUp(True, True, 0.0)


class Side:
    """Rows ``id -> (v, xmin)``; ``on_read`` runs before every read (the writes meanwhile)."""

    def __init__(self, rows: dict[int, tuple[str, str | None]], on_read: Callable[[], None] | None = None) -> None:
        self.data = rows
        self.on_read = on_read or (lambda: None)
        self.copies: list[tuple[str, str | None]] = []  # keyless rows (text, xmin)

    def _image(self, k: int) -> RowImage:
        v, version = self.data[k]
        return RowImage((k,), key_text([str(k)]), (str(k), v), version)

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        self.on_read()
        wanted = None if keys is None else {k[0] for k in keys}
        return [self._image(k) for k in sorted(self.data) if wanted is None or k in wanted]

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        return [RowImage(i.key, i.key_text, ("|".join(map(str, i.texts)),), i.version) for i in self.rows(key_range)]

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        self.on_read()
        return [RowImage((), t, (t,), v) for t, v in self.copies if bucket_of(t, buckets) in selected]

    def chunk(self, key_range: KeyRange) -> tuple[int, str | None]:
        raise NotImplementedError

    def buckets(self, buckets: int) -> dict[int, tuple[int, str | None]]:
        raise NotImplementedError

    def count(self) -> int:
        return len(self.data)


def _pending(src: Side, tgt: Side, keyless: bool = False) -> tuple[TableResult, list[Pending]]:
    plan = TablePlan(KEYLESS if keyless else PLAN)
    result = TableResult(plan.table, plan.target, Status.MATCH, keyless=keyless)
    if keyless:
        diffs = [ChunkDiff(b + 1, (None, None), (1, "s"), (0, None), bucket=b, buckets=4) for b in range(4)]
    else:
        diffs = [ChunkDiff(1, (None, None), (1, "s"), (1, "t"))]
    return result, [Pending(result, plan, d, src, tgt) for d in diffs]


def _run(result: TableResult, pending: list[Pending], catch: Callable[[float], CatchUp], **cfg: Any) -> TableResult:
    converge(pending, catch, VerifySettings(**{"hot_key_lock_s": 0.0, **cfg}), CAUGHT, None)  # type: ignore[arg-type]
    return result


def test_a_lagging_row_settles_once_the_target_caught_up() -> None:
    src = Side({1: ("10", "x1"), 2: ("20", "x2")})
    tgt = Side({1: ("10", None), 2: ("19", None)})

    def catch(_: float) -> CatchUp:
        tgt.data[2] = ("20", None)  # the pipeline applies the update
        return CAUGHT

    result = _run(*_pending(src, tgt), catch)
    assert result.mismatched == [] and result.in_flight == []


def test_a_corrupted_row_is_a_mismatch_naming_key_and_column() -> None:
    src = Side({1: ("10", "x1"), 2: ("20", "x2"), 3: ("30", "x3")})
    tgt = Side({1: ("10", None), 2: ("999", None), 3: ("30", None)})
    writes = iter(range(100))

    def busy() -> None:  # other rows keep changing on the source: key 3 is in flight once
        n = next(writes)
        src.data[3] = (str(30 + n), f"y{n}")

    src.on_read = busy

    def catch(_: float) -> CatchUp:
        tgt.data[3] = src.data[3][0], None
        return CAUGHT

    result = _run(*_pending(src, tgt), catch)
    assert len(result.mismatched) == 1
    (row,) = result.mismatched[0].rows
    assert row.key == {"id": "2"} and row.columns == {"v": ("20", "999")} and row.state == "mismatch"
    assert "key id='2': v: source '20', target '999'" in row.describe()


def test_no_conclusion_while_the_pipeline_is_not_caught_up() -> None:
    src = Side({1: ("10", "x1")})
    tgt = Side({1: ("9", None)})
    result = _run(*_pending(src, tgt), lambda _: CatchUp(False, False, 1.0, detail="behind"), recheck_attempts=4)
    assert result.mismatched == []
    assert len(result.in_flight) == 1 and result.in_flight[0].rows[0].state == "in_flight"


def test_a_hot_key_without_locking_stays_in_flight_with_its_rows() -> None:
    src = Side({1: ("10", "x1")})
    tgt = Side({1: ("9", None)})
    counter = iter(range(1000))

    def write() -> None:
        n = next(counter)
        src.data[1] = (str(n), f"x{n}")

    src.on_read = write
    result = _run(*_pending(src, tgt), lambda _: CAUGHT, recheck_attempts=5)
    assert result.mismatched == [] and result.in_flight[0].differing_rows == 1


def test_missing_and_extra_rows() -> None:
    src = Side({1: ("10", "x1"), 2: ("20", "x2")})
    tgt = Side({1: ("10", None), 3: ("30", None)})
    result = _run(*_pending(src, tgt), lambda _: CAUGHT)
    rows = {r.describe() for r in result.mismatched[0].rows}
    assert rows == {"key id='2': missing on the target", "key id='3': not on the source (extra row on the target)"}


def test_key_state_same_value_new_version_is_not_conclusive() -> None:
    state = KeyState((1,), RowImage((1,), "1", ("1", "a"), "x1"), None)
    state.judge(RowImage((1,), "1", ("1", "b"), None), RowImage((1,), "1", ("1", "a"), "x2"), caught_up=True)
    assert state.conclusive == 0 and state.verdict is None
    state.judge(RowImage((1,), "1", ("1", "b"), None), RowImage((1,), "1", ("1", "a"), "x2"), caught_up=True)
    assert state.conclusive == 1 and state.verdict is None


def test_keyless_growing_table_settles_and_a_lost_row_is_a_mismatch() -> None:
    src, tgt = Side({}), Side({})
    src.copies = [(f"row{i}", f"x{i}") for i in range(50)]
    tgt.copies = [(f"row{i}", None) for i in range(40) if i != 7]  # row7 was lost, 40..49 not applied yet
    grow = iter(range(50, 10_000))

    def insert() -> None:  # insert-only: every read sees two more rows
        for _ in range(2):
            n = next(grow)
            src.copies.append((f"row{n}", f"x{n}"))

    src.on_read = insert

    def catch(_: float) -> CatchUp:  # the target applies all but the lost row
        tgt.copies = [(t, None) for t, _ in src.copies if t != "row7"]
        return CAUGHT

    result, pending = _pending(src, tgt, keyless=True)
    result = _run(result, pending, catch)
    rows = [r for c in result.mismatched for r in c.rows]
    assert [(r.row, r.source_rows, r.target_rows) for r in rows] == [("row7", 1, 0)]
    assert result.in_flight == []


def test_text_state_between_two_reads_settles() -> None:
    state = TextState(("x1",), 0)
    state.judge(1, ("x1", "x2"), caught_up=True)  # 1 copy at the first read, 2 at the second, target 1
    assert state.verdict == "match"


def test_a_chunk_with_more_differing_keys_than_followed_cannot_be_cleared(monkeypatch: Any) -> None:
    monkeypatch.setattr(converge_module, "MAX_KEYS_PER_CHUNK", 2)
    src = Side({k: (str(k), f"x{k}") for k in range(1, 6)})
    tgt = Side({})

    def catch(_: float) -> CatchUp:
        tgt.data.update({k: (v, None) for k, (v, _) in src.data.items()})  # the target catches up
        return CAUGHT

    result = _run(*_pending(src, tgt), catch)
    assert result.mismatched == []
    assert len(result.in_flight) == 1 and result.in_flight[0].differing_rows == 3


def test_the_report_lists_the_differing_rows_under_their_chunk() -> None:
    row = RowDiff({"id": "2"}, {"v": ("20", None)})
    chunk = ChunkDiff(1, (None, (10,)), (10, "a"), (10, "b"), rows=(row,), differing_rows=1)
    table = TableResult(PLAN.table, PLAN.target, Status.MISMATCH, mismatched=[chunk], chunks=1)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = VerifyResult("p", "s", now, now, CAUGHT, [table], 10)
    text = format_result(result)
    assert "mismatch chunk 1 (-inf, 10]: source 10 rows, target 10 rows, 1 differing row(s)" in text
    assert "    key id='2': v: source '20', target NULL" in text
    (record,) = to_records(result)
    assert record.mismatched_chunks == 1 and not record.ok
    stored = record.detail["mismatched_chunks"][0]["rows"]
    assert stored == [row.to_dict()] and stored[0]["columns"] == {"v": {"source": "20", "target": None}}


class CountedSide(Side):
    """A Side whose chunk count is its number of rows (the checksum text is not compared here)."""

    def chunk(self, key_range: KeyRange) -> tuple[int, str | None]:
        return (len(self.data), "c")


def test_a_settled_chunk_is_recounted_so_a_match_reports_equal_row_counts() -> None:
    """The fault suite saw MATCH with 580 source rows against 577 target rows: the first pass
    counted while three inserts were still being applied, and the rounds settled them."""
    src = CountedSide({1: ("10", "x1"), 2: ("20", "x2"), 3: ("30", "x3")})
    tgt = CountedSide({1: ("10", None)})
    result, pending = _pending(src, tgt)
    pending[0].diff = ChunkDiff(1, (None, None), (3, "s"), (1, "t"))
    result.rows_source, result.rows_target = 3, 1

    def catch(_: float) -> CatchUp:
        tgt.data.update({2: ("20", None), 3: ("30", None)})  # the pipeline applies the inserts
        return CAUGHT

    _run(result, pending, catch)
    assert result.mismatched == [] and result.in_flight == []
    recount_settled(pending)
    assert (result.rows_source, result.rows_target) == (3, 3)
