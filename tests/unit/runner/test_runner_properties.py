"""Property: whatever the batches, sink and DLQ faults and rebalances, the offsets stored in the
target only ever move past messages that were applied or dead-lettered, and a drained runner
has applied every change and dead-lettered every poison message."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.dataplane.dlq import DlqDeliveryError
from sinks.base import TransientSinkError
from tests.unit.runner.harness import TOPIC, build, drained, run_until, value

KINDS = st.sampled_from(["row", "row", "row", "poison", "tombstone"])


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    partitions=st.lists(st.lists(KINDS, max_size=25), min_size=1, max_size=3),
    sink_faults=st.sets(st.integers(1, 12), max_size=8),
    dlq_faults=st.sets(st.integers(1, 4), max_size=2),
    rebalances=st.lists(st.tuples(st.integers(1, 10), st.integers(0, 2), st.booleans(), st.integers(1, 4)), max_size=3),
    batch_size=st.integers(1, 20),
)
def test_offsets_only_move_past_applied_or_dead_lettered_messages(
    partitions: list[list[str]],
    sink_faults: set[int],
    dlq_faults: set[int],
    rebalances: list[tuple[int, int, bool, int]],
    batch_size: int,
) -> None:
    h = build(len(partitions))
    h.runner._settings.batch.__dict__["max_messages"] = batch_size  # frozen settings: test-only override
    rows, poison = set(), set()
    key = 0
    for p, kinds in enumerate(partitions):
        for kind in kinds:
            if kind == "row":
                msg = h.broker.produce(TOPIC, p, value(key, f"v{key}"))
                rows.add((TOPIC, p, msg.offset()))
                key += 1  # one key per message, so every change is its own row
            elif kind == "poison":
                poison.add((TOPIC, p, h.broker.produce(TOPIC, p, b"poison").offset()))
            else:
                h.broker.produce(TOPIC, p, None)
    h.sink.faults = {n: TransientSinkError("target down") for n in sink_faults}
    h.dlq.faults = {n: DlqDeliveryError("DLQ broker down") for n in dlq_faults}
    for after_applies, partition, lost, later in rebalances:
        tp = (TOPIC, partition % len(partitions))

        # Revoke (or lose) a partition once the sink has seen this many calls; hand it back a few
        # consumer calls later (often in the middle of a backoff's paused polls).
        def revoke(c, tp=tp, lost=lost, later=later) -> None:  # type: ignore[no-untyped-def]
            c.rebalance(revoke=[tp], lost=lost)
            c.at(c.calls + later, lambda c2: c2.rebalance(assign=[tp]))

        h.consumer.when(lambda n=after_applies: h.sink.calls >= n, revoke)

    def done(x) -> bool:  # type: ignore[no-untyped-def]
        return drained(x) and x.runner.assignment == {(TOPIC, p) for p in range(len(partitions))}

    thread = run_until(h, done, timeout_s=20)
    assert thread.error is None, thread.error  # type: ignore[attr-defined]
    assert h.sink.violations == []
    assert drained(h)
    assert rows <= h.sink.applied
    assert poison <= h.dlq.coords()
    assert h.dlq.coords() <= poison  # nothing but poison is ever dead-lettered
