"""Row-level rechecks of the differing hash buckets of a keyless table, so an insert-mostly table
(pgbench_history) concludes while it grows (docs/design-notes.md, "Verification that concludes
under load").

A keyless row has no key, so it is identified by its canonical text; its copies on the source by
their ``xmin`` values. Each round reads the target's rows of the differing buckets after a
catch-up that began after the previous source read, then the source's again. Per row text with
``a`` copies at the earlier source read, ``b`` at the later and ``t`` on the target: ``t == b``
settles it; when the source kept the same copies (same ``xmin`` multiset) and ``t`` differs, the
round is conclusive (twice in a row: a mismatch); when the source changed in between and ``t``
lies between ``a`` and ``b``, the target is at a point between the two reads: settled.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from pipeline.control.verify.converge import CONFIRMATIONS
from pipeline.control.verify.model import ChunkDiff, RowDiff
from sinks.base import ChecksumPlan, ChecksumSide, RowImage

Copies = tuple[str, ...]
"""The sorted ``xmin`` values of a row text's copies on the source."""


def bucket_of(text: str, buckets: int) -> int:
    """The bucket of a row text (first two bytes of its md5, modulo ``buckets``), as both sides
    compute it (pure)."""
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return ((digest[0] << 8) | digest[1]) % buckets


def copies(images: list[RowImage]) -> dict[str, Copies]:
    """Row text -> sorted versions of its copies (pure)."""
    out: dict[str, list[str]] = {}
    for image in images:
        out.setdefault(image.key_text, []).append(image.version or "")
    return {text: tuple(sorted(vs)) for text, vs in out.items()}


@dataclass
class TextState:
    """A differing row text: its source copies at the last read, the target's count, how many
    consecutive rounds were conclusive, and the verdict (None: open; ``match``/``mismatch``)."""

    source: Copies
    target: int
    conclusive: int = 0
    verdict: str | None = None

    def judge(self, target: int, after: Copies, caught_up: bool) -> None:
        """One round (see the module docstring)."""
        before = self.source
        self.source, self.target = after, target
        a, b = len(before), len(after)
        if target == b:
            self.verdict = "match"
        elif caught_up and before == after:
            self.conclusive += 1
            if self.conclusive >= CONFIRMATIONS:
                self.verdict = "mismatch"
        elif min(a, b) <= target <= max(a, b):
            self.verdict = "match"  # the target is at a point between the two source reads
        else:
            self.conclusive = 0


@dataclass
class BucketCheck:
    """The differing buckets of one keyless table (their :class:`ChunkDiff` by bucket)."""

    plan: ChecksumPlan
    buckets: int
    diffs: dict[int, ChunkDiff]
    src: ChecksumSide
    tgt: ChecksumSide
    texts: dict[str, TextState] = field(default_factory=dict)

    def _read(self, side: ChecksumSide) -> list[RowImage]:
        return side.bucket_rows(self.buckets, sorted(self.diffs))

    def narrow(self) -> None:
        """Read the buckets' rows on both sides; keep the row texts whose copies differ."""
        s = copies(self._read(self.src))
        t = Counter(i.key_text for i in self._read(self.tgt))
        for text in s.keys() | t.keys():
            if len(s.get(text, ())) != t.get(text, 0):
                self.texts[text] = TextState(s.get(text, ()), t.get(text, 0))

    def open_texts(self) -> dict[str, TextState]:
        """Row texts without a verdict."""
        return {k: st for k, st in self.texts.items() if st.verdict is None}

    def read_target(self) -> Counter[str]:
        """Copies per row text on the target (the differing buckets)."""
        return Counter(i.key_text for i in self._read(self.tgt)) if self.open_texts() else Counter()

    def judge(self, target: Counter[str], caught_up: bool, locked: bool = False) -> None:
        """Read the source again and judge every open row text (``locked`` is not used: keyless
        rows are never locked)."""
        del locked
        states = self.open_texts()
        if not states:
            return
        after = copies(self._read(self.src))
        for text, state in states.items():
            state.judge(target.get(text, 0), after.get(text, ()), caught_up)

    def outcomes(self, limit: int) -> tuple[list[ChunkDiff], list[ChunkDiff]]:
        """``(mismatched buckets, in-flight buckets)`` with their rows (at most ``limit`` listed
        over the table): a bucket with a conclusively differing row is mismatched; else one with
        open rows is in flight."""
        mismatched: list[ChunkDiff] = []
        in_flight: list[ChunkDiff] = []
        listed = 0
        for bucket, diff in sorted(self.diffs.items()):
            mine = {t: st for t, st in self.texts.items() if bucket_of(t, self.buckets) == bucket}
            bad = {t: st for t, st in mine.items() if st.verdict == "mismatch"}
            still = {t: st for t, st in mine.items() if st.verdict is None}
            chosen = bad or still
            if not chosen:
                continue
            state = "mismatch" if bad else "in_flight"
            rows = []
            for text, st in list(chosen.items())[: max(0, limit - listed)]:
                rows.append(RowDiff({}, {}, len(st.source), st.target, row=text, state=state))
            listed += len(rows)
            done = ChunkDiff(
                diff.index,
                diff.key_range,
                diff.source,
                diff.target,
                bucket=diff.bucket,
                buckets=diff.buckets,
                rows=tuple(rows),
                differing_rows=len(chosen),
            )
            (mismatched if bad else in_flight).append(done)
        return mismatched, in_flight
