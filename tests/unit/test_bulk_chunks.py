"""ctid chunk planning (pipeline.control.bulkload.chunks): contiguous page ranges from page 0, the
last one open-ended, about chunk_rows rows each."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.control.bulkload.chunks import plan_chunks
from pipeline.control.bulkload.model import Chunk


def test_small_table_is_one_open_chunk() -> None:
    assert plan_chunks(0, 0, 1000) == (Chunk(0, 0, None),)
    assert plan_chunks(10, 999, 1000) == (Chunk(0, 0, None),)


def test_pgbench_accounts_scale_10() -> None:
    # 1,000,000 rows on 16,394 pages (61 rows a page), 250,000 rows a chunk
    chunks = plan_chunks(16394, 1_000_000, 250_000)
    assert [(c.first_page, c.end_page) for c in chunks] == [
        (0, 4099),
        (4099, 8198),
        (8198, 12297),
        (12297, None),
    ]


def test_never_more_chunks_than_pages() -> None:
    assert len(plan_chunks(3, 1_000_000, 1000)) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        plan_chunks(1, 1, 0)
    with pytest.raises(ValueError, match="negative"):
        plan_chunks(-1, 1, 1)


@given(st.integers(0, 100_000), st.integers(0, 10_000_000), st.integers(1, 1_000_000))
def test_ranges_cover_every_page_once(pages: int, rows: int, chunk_rows: int) -> None:
    chunks = plan_chunks(pages, rows, chunk_rows)
    assert chunks[0].first_page == 0
    assert chunks[-1].end_page is None
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for before, after in itertools.pairwise(chunks):
        assert before.end_page == after.first_page
        assert before.first_page < after.first_page
    if pages and rows:
        expected = max(1, min(-(-rows // chunk_rows), pages))
        assert len(chunks) <= expected
