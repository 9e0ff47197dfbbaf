"""Newer changes for the replay scenario: more Debezium events for keys a workload already wrote.

After :class:`_debezium_gen.Workload` has been consumed (its ``expected`` holds the source's
final state), :func:`newer_changes` makes ``count`` further changes over the same key space,
as a source would after the first workload: updates of existing rows, deletes (each followed by
its tombstone) and re-inserts of deleted keys. Their LSNs and commit times start far above any
the first workload can reach (it starts at LSN 0x2_1A00_0000 and adds < 1,000 per event, and
< 3 ms of commit time per transaction), so they are newer in commit order, as the version guard
must see them. ``expected`` is updated in place to the state after them.

Pure code: no Kafka, no database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from _debezium_gen import (
    DebeziumJson,
    Message,
    Row,
    SourceInfo,
    _next_row,  # the generator's row mutator: the same value distribution as the first workload
    key_image,
    payload_text,
    row_image,
    zoned_timestamp,
)

NEWER_LSN_BASE = 0x100_0000_0000
"""First LSN of the newer changes (1 TiB of WAL; the first workload ends below 0x3_0000_0000
for 10 million events)."""
NEWER_COMMIT_US_BASE = 1_796_000_000_000_000
"""First commit time of the newer changes, µs since the epoch (~11.5 days after the first
workload's start; it advances < 3 ms per transaction, i.e. < 5 h for 10 million events)."""


@dataclass
class Newer:
    """The newer changes: messages in commit order, and counts per op."""

    messages: list[Message]
    changes: int
    deletes: int


def newer_changes(prefix: str, database: str, keys: int, expected: dict[int, Row], count: int, seed: int = 11) -> Newer:
    """``count`` changes (one per transaction) on random keys of 1..``keys``: a present row is
    deleted with probability 0.1 (plus its tombstone), else updated; an absent one inserted.
    Mutates ``expected`` to the state after them."""
    rng = random.Random(seed)
    ser = DebeziumJson(prefix, database)
    lsn, commit_us, tx_id = NEWER_LSN_BASE, NEWER_COMMIT_US_BASE, 9_000_000
    last_commit = None
    out: list[Message] = []
    deletes = 0
    for _ in range(count):
        tx_id += 1
        lsn += rng.randint(56, 400)
        commit_us += rng.randint(200, 3000)
        row_id = rng.randint(1, keys)
        src = SourceInfo(tx_id, lsn, last_commit, commit_us, 1, commit_us * 1000 + rng.randint(80_000_000, 250_000_000))
        key = ser.key(row_id)
        current = expected.get(row_id)
        if current is not None and rng.random() < 0.1:
            del expected[row_id]
            deletes += 1
            out.append((key, ser.value("d", key_image(row_id), None, src)))
            out.append((key, None))
        else:
            row = _next_row(rng, row_id, current, commit_us)
            expected[row_id] = row
            text = None if row.payload is None else payload_text(row.payload)
            image = row_image(row, text, zoned_timestamp(commit_us))
            out.append((key, ser.value("c" if current is None else "u", None, image, src)))
        last_commit = lsn + rng.randint(48, 200)
        lsn = last_commit
    return Newer(out, count, deletes)
