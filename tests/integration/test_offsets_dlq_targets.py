"""``Target.set_offsets`` (what ``cdc-pipeline offsets reset`` writes) on every backend: PostgreSQL,
MariaDB and SQLite, each a fresh database built by ``sinks.factory.make_target``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.batch import ReducedBatch
from sinks.base import TransientSinkError
from tests.integration.targets import GROUP, KINDS, Backend, closed_port, open_backend


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    with open_backend(request.param, request, tmp_path, unique) as b:
        yield b


def test_set_offsets_upserts_and_deletes_in_one_call(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, offsets={("t", 0): 9, ("t", 1): 2, ("u", 0): 4})
    target.apply(ReducedBatch(), "other", {("t", 0): 100})
    assert target.set_offsets(GROUP, {("t", 0): None, ("t", 1): 7, ("v", 3): 1}) == 3
    assert target.group_offsets(GROUP) == {("t", 1): 7, ("u", 0): 4, ("v", 3): 1}
    assert target.group_offsets("other") == {("t", 0): 100}
    assert target.set_offsets(GROUP, {}) == 0
    fresh = backend.target()  # committed: another session reads the same
    assert fresh.group_offsets(GROUP) == {("t", 1): 7, ("u", 0): 4, ("v", 3): 1}
    assert fresh.stored_offsets(GROUP, [("t", 0), ("t", 1)]) == {("t", 1): 7}  # what a worker seeks to


def test_set_offsets_on_a_fresh_target_creates_the_control_tables(backend: Backend) -> None:
    assert backend.target().set_offsets(GROUP, {("t", 0): 5}) == 1
    assert backend.target().group_offsets(GROUP) == {("t", 0): 5}


def test_set_offsets_on_an_unreachable_target_is_transient(backend: Backend) -> None:
    if backend.kind == "sqlite":
        pytest.skip("an embedded file has no server to lose")
    port = backend.engine.url.port
    url = backend.settings["url"].replace(f":{port}/", f":{closed_port()}/", 1)  # a port nothing listens on
    with pytest.raises(TransientSinkError):
        backend.target(url=url).set_offsets(GROUP, {("t", 0): 1})
