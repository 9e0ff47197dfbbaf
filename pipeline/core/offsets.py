"""Offset arithmetic on Kafka partitions, shared by the worker's lag gauges and the control plane's readers."""

from __future__ import annotations


def partition_lag(low: int, high: int, committed: int | None) -> int:
    """Messages still to be consumed in one partition.

    ``low``/``high`` are the watermarks (first retained offset, next offset to be written);
    ``committed`` the next offset the consumer will read (None when it has none: the runner
    then starts from the beginning). A committed offset below ``low`` (deleted by retention)
    counts from ``low``. Never negative.
    """
    start = low if committed is None else max(committed, low)
    return max(0, high - start)
