"""The runner's loop driven by the in-memory broker: commit order, backoff and readiness, shutdown
during an outage, poison versus bugs, bisection, and rebalances during retries."""

from __future__ import annotations

import time

import pytest

from pipeline.core import metrics
from pipeline.core.errors import PoisonMessageError
from pipeline.dataplane.consumer import Message
from pipeline.dataplane.dlq import DlqDeliveryError
from sinks.base import TransientSinkError
from tests.unit.runner.harness import TOPIC, build, decode, drained, run_until, settings, value


def _fill(h, per_partition: int = 5, partitions: int = 2) -> None:  # type: ignore[no-untyped-def]
    for p in range(partitions):
        for i in range(per_partition):
            h.broker.produce(TOPIC, p, value(p * 1000 + i, f"v{p}-{i}", lsn=i + 1))


def _ready_gauge() -> float:
    return metrics.REGISTRY.get_sample_value("cdc_ready", {"pipeline": "p"}) or 0.0


def test_applies_everything_and_stores_offsets_in_the_sink() -> None:
    h = build()
    _fill(h)
    thread = run_until(h, drained)
    assert thread.error is None  # type: ignore[attr-defined]
    assert h.sink.offsets == {(TOPIC, 0): 5, (TOPIC, 1): 5}
    assert len(h.sink.rows) == 10
    assert h.sink.violations == []
    # Kafka commits (informational) never run ahead of the target's offsets.
    assert h.consumer.commits and all(o <= h.sink.offsets[tp] for c in h.consumer.commits for tp, o in c.items())


def test_ready_again_after_a_retry_run_of_three_attempts() -> None:
    """Bug 1: after a retry run of 3+ attempts, cdc_ready stayed 0 until the next assignment."""
    h = build()
    _fill(h, 3)
    h.sink.faults = {n: TransientSinkError("target down") for n in (1, 2, 3, 4)}
    gauge_when_drained: list[float] = []

    def done(x) -> bool:  # type: ignore[no-untyped-def]
        if drained(x):
            gauge_when_drained.append(_ready_gauge())
            return True
        return False

    thread = run_until(h, done)
    assert thread.error is None  # type: ignore[attr-defined]
    assert h.sink.calls > 4  # four failed attempts, then the batches
    assert gauge_when_drained == [1.0]


def test_readyz_is_false_while_backing_off() -> None:
    """Bug 2: /readyz ignored the backoff state."""
    h = build(pipeline=settings(initial_backoff_s=0.2, max_backoff_s=0.2))
    _fill(h, 2)
    h.sink.faults = {n: TransientSinkError("target down") for n in range(1, 200)}
    answers: list[tuple[bool, dict[str, object]]] = []

    def sample(x) -> bool:  # type: ignore[no-untyped-def]
        if x.sink.calls >= 2:
            answers.append(x.runner.readiness())
            return True
        return False

    run_until(h, sample)
    ok, detail = answers[0]
    assert detail["assigned_partitions"] == 2
    assert detail["in_backoff"] is True
    assert ok is False


def test_stop_during_a_target_outage_is_prompt() -> None:
    """Bug 3: SIGTERM during a target outage waited up to retry.max_elapsed_s (600 s)."""
    h = build(pipeline=settings(initial_backoff_s=1.0, max_backoff_s=5.0, max_elapsed_s=600.0))
    _fill(h, 2)
    h.sink.faults = {n: TransientSinkError("target down") for n in range(1, 10_000)}
    t0 = time.monotonic()
    thread = run_until(h, lambda x: x.sink.calls >= 2, timeout_s=20)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 15  # two backoffs of at most ~1-2 s each, then the stop ends the third
    assert thread.error is None  # type: ignore[attr-defined]  # an abandoned batch at shutdown is a clean stop
    assert h.sink.offsets == {}  # nothing committed for the abandoned batch
    assert h.consumer.closed


def test_an_unexpected_decoder_exception_stops_the_worker_without_committing() -> None:
    """Bug 7: any exception from decode became a dead letter, so a converter bug dead-lettered
    good messages until the DLQ limit."""

    def buggy(msg: Message):  # type: ignore[no-untyped-def]
        if msg.offset() == 1:
            raise AttributeError("'NoneType' object has no attribute 'scale'")  # a bug, not bad input
        return decode(msg)

    h = build(1, decode_fn=buggy)
    _fill(h, 3, partitions=1)
    thread = run_until(h, lambda x: False, timeout_s=5)
    assert isinstance(thread.error, AttributeError)  # type: ignore[attr-defined]
    assert h.dlq.sent == []
    assert h.sink.offsets == {}
    assert h.consumer.closed


def test_poison_goes_to_the_dlq_and_the_offset_moves_on() -> None:
    h = build(1)
    h.broker.produce(TOPIC, 0, value(1))
    h.broker.produce(TOPIC, 0, b"poison")
    h.broker.produce(TOPIC, 0, None)  # a tombstone: consumed, not applied, not dead-lettered
    h.broker.produce(TOPIC, 0, value(2))
    run_until(h, drained)
    assert [(d.offset, d.error_class) for d in h.dlq.sent] == [(1, "PoisonMessageError")]
    assert h.sink.offsets == {(TOPIC, 0): 4}
    assert sorted(h.sink.rows) == [1, 2]
    assert h.sink.violations == []


def test_bisection_dead_letters_only_the_rejected_event() -> None:
    h = build(1)
    for i in range(16):
        h.broker.produce(TOPIC, 0, value(i, "bad" if i == 11 else f"v{i}"))
    h.sink.reject = frozenset({"bad"})
    run_until(h, drained)
    assert [(d.offset, d.error_class) for d in h.dlq.sent] == [(11, "BatchRejectedError")]
    assert "refused" in h.dlq.sent[0].reason
    assert sorted(h.sink.rows) == [i for i in range(16) if i != 11]
    assert h.sink.offsets == {(TOPIC, 0): 16}
    assert h.sink.violations == []


def test_transient_dlq_failure_retries_without_moving_the_offset() -> None:
    h = build(1)
    h.broker.produce(TOPIC, 0, b"poison")
    h.broker.produce(TOPIC, 0, value(1))

    h.dlq.faults = {1: DlqDeliveryError("broker down"), 2: DlqDeliveryError("broker down")}
    run_until(h, drained)
    assert h.dlq.calls == 3
    assert [d.offset for d in h.dlq.sent] == [0]
    assert h.sink.offsets == {(TOPIC, 0): 2}


def test_revoke_during_a_retry_abandons_the_batch_and_the_new_assignment_rereads_it() -> None:
    h = build()
    _fill(h, 4)
    h.sink.faults = {1: TransientSinkError("down"), 2: TransientSinkError("down")}
    # While the first batch is retried (poll calls during the backoff), partition 1 is revoked
    # and handed back: the batch is abandoned and re-read from the sink's stored offsets.
    h.consumer.when(lambda: h.sink.calls >= 1, lambda c: c.rebalance(revoke=[(TOPIC, 1)]))
    h.consumer.when(lambda: h.sink.calls >= 2, lambda c: c.rebalance(assign=[(TOPIC, 1)]))
    run_until(h, drained)
    assert h.sink.offsets == {(TOPIC, 0): 4, (TOPIC, 1): 4}
    assert len(h.sink.rows) == 8
    assert h.sink.violations == []


def test_partition_assigned_during_a_backoff_skips_nothing() -> None:
    h = build(2)
    for i in range(3):
        h.broker.produce(TOPIC, 0, value(i))
    h.sink.faults = {1: TransientSinkError("down"), 2: TransientSinkError("down"), 3: TransientSinkError("down")}
    h.broker.create_topic("p.public.u", 1)
    h.broker.produce("p.public.u", 0, value(100))
    h.broker.produce("p.public.u", 0, value(101))
    # A topic created later is assigned while the runner backs off: its records must not be
    # consumed by the paused poll and dropped.
    h.consumer.when(lambda: h.sink.calls >= 1, lambda c: c.rebalance(assign=[("p.public.u", 0)]))
    run_until(h, drained)
    assert h.sink.offsets[("p.public.u", 0)] == 2
    assert {100, 101} <= set(h.sink.rows)
    assert h.sink.violations == []


def test_poison_error_from_the_transform_is_a_dead_letter_but_a_bug_is_fatal() -> None:
    h = build(1)
    h.broker.produce(TOPIC, 0, value(1))

    def transform(e):  # type: ignore[no-untyped-def]
        raise PoisonMessageError(e.topic, e.partition, e.offset, "masked column missing")

    h.runner._transform = transform
    run_until(h, drained)
    assert [d.reason for d in h.dlq.sent] == ["masked column missing"]

    h2 = build(1)
    h2.broker.produce(TOPIC, 0, value(1))

    def broken(e):  # type: ignore[no-untyped-def]
        raise KeyError("v")

    h2.runner._transform = broken
    thread = run_until(h2, lambda x: False, timeout_s=5)
    assert isinstance(thread.error, KeyError)  # type: ignore[attr-defined]
    assert h2.dlq.sent == [] and h2.sink.offsets == {}


@pytest.mark.parametrize("lost", [False, True])
def test_revoked_partitions_are_dropped_from_the_batch_being_collected(lost: bool) -> None:
    h = build()
    _fill(h, 3)
    h.consumer.at(2, lambda c: c.rebalance(revoke=[(TOPIC, 0)], lost=lost))
    run_until(h, lambda x: x.sink.offsets.get((TOPIC, 1)) == 3)
    assert (TOPIC, 0) not in h.runner.assignment
    assert h.sink.violations == []
