"""Events the target already holds (Debezium re-sends after a Connect crash) are counted stale,
not applied (issue 22, defect 6): the runner's counters follow the sink's ``ApplyResult.stale``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch
from pipeline.core.events import ChangeEvent, Op, Position, TableId
from pipeline.core.reduce import reduce_events
from pipeline.dataplane.progress import Applied, row_key
from sinks.base import ApplyResult
from tests.unit.runner.harness import TOPIC, MemoryDlq, MemorySink, build, drained, run_until, value

TABLE = TableId("public", "t")


@dataclass
class VersionedSink(MemorySink):
    """:class:`MemorySink` with a version guard: a row whose stored position is at least the
    incoming one is not written and is reported stale, as the real targets do."""

    versions: dict[str, Position] = field(default_factory=dict)

    def apply(self, batch: ReducedBatch, group: str, offsets: dict[tuple[str, int], int]) -> ApplyResult:
        stale: dict[TableId, frozenset[str]] = {}
        for table, changes in batch.tables.items():
            old = {k for k, up in changes.upserts.items() if k in self.versions and self.versions[k] >= up.position}
            for k in old:
                del changes.upserts[k]
            for k, up in changes.upserts.items():
                self.versions[k] = up.position
            if old:
                stale[table] = frozenset(old)
        result = super().apply(batch, group, offsets)
        return ApplyResult(result.upserted, 0, 0, time.time(), stale)


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"pipeline": "p", "table": "public.t", "op": "c"}) or 0.0


def test_resent_events_count_as_stale_not_applied() -> None:
    h = build(partitions=1)
    h.sink = VersionedSink(dlq=MemoryDlq(), broker=None)
    h.runner._sink = h.sink  # the harness's runner, on the versioned sink
    for i in range(10):
        h.broker.produce(TOPIC, 0, value(i, f"v{i}", lsn=i + 1))
    for i in range(4):  # re-sent after a Connect restart: new offsets, the same positions
        h.broker.produce(TOPIC, 0, value(i, f"v{i}", lsn=i + 1))
    applied0, stale0 = _sample("cdc_events_applied_total"), _sample("cdc_events_stale_total")
    thread = run_until(h, drained)
    assert thread.error is None  # type: ignore[attr-defined]
    assert h.sink.offsets == {(TOPIC, 0): 14}
    assert _sample("cdc_events_applied_total") - applied0 == 10
    assert _sample("cdc_events_stale_total") - stale0 == 4
    assert (h.runner.stats.events, h.runner.stats.stale) == (10, 4)


def _event(op: Op, pos: int, key: int | None, keyless: bool = False, offset: int = 0) -> ChangeEvent:
    row = {"k": key, "v": "x"}
    return ChangeEvent(
        topic="t",
        partition=0,
        offset=offset,
        table=TABLE,
        op=op,
        position=Position(pos, pos),
        ts_ms=0,
        key=None if keyless else {"k": key},
        after=None if op is Op.DELETE else row,
        before=row if op in (Op.DELETE, Op.UPDATE) else None,
        key_columns=() if keyless else ("k",),
    )


def test_row_key_is_the_key_reduce_gives_the_row() -> None:
    for keyless in (False, True):
        for op in (Op.CREATE, Op.UPDATE, Op.READ, Op.DELETE):
            event = _event(op, 7, 3, keyless, offset=11)
            changes = reduce_events([event], "public").tables[TABLE]
            keys = set(changes.deletes if op is Op.DELETE else changes.upserts)
            assert row_key(event) in keys, (keyless, op, keys)
    assert row_key(_event(Op.TRUNCATE, 7, None)) is None


def test_applied_splits_events_by_the_stale_keys_of_the_result() -> None:
    events = [_event(Op.CREATE, 1, 1), _event(Op.UPDATE, 2, 1), _event(Op.CREATE, 3, 2), _event(Op.DELETE, 4, 3)]
    counts = Applied()
    stale = {TABLE: frozenset({row_key(events[2]) or "", row_key(events[3]) or ""})}
    counts.add(events, "public", ApplyResult(1, 0, 0, 0.0, stale))
    assert counts.applied == {("public.t", "c"): 1, ("public.t", "u"): 1}
    assert counts.stale == {("public.t", "c"): 1, ("public.t", "d"): 1}
