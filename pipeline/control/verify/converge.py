"""Key-level rechecks of keyed chunks that differed, so a verification concludes while the source
keeps writing (docs/design-notes.md, "Verification that concludes under load").

A differing chunk is narrowed to its differing keys (row images of just that chunk on both
sides). Each round then reads the target after a catch-up that began after the previous source
read, and reads the source again: a key whose target row equals the source's latest is settled;
a key whose source row kept its ``xmin`` and value across both source reads while the target,
caught up past the first, still differs is a *conclusive* difference (twice in a row makes it a
mismatch). Keys that keep changing are locked briefly on the source in the last round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.control.verify.model import ChunkDiff, RowDiff
from sinks.base import ChecksumPlan, ChecksumSide, KeyBound, KeyRange, RowImage

CONFIRMATIONS = 2
"""Consecutive conclusive rounds that make a key a mismatch (one when its source row was locked)."""

MAX_KEYS_PER_CHUNK = 5000
"""Differing keys of one chunk followed through the rounds; beyond them (a target table far
behind or emptied) the chunk cannot be cleared: a mismatch when one followed key is, else in flight."""


def same_data(a: RowImage | None, b: RowImage | None) -> bool:
    """True when both are absent, or both present with equal column texts (versions ignored)."""
    if a is None or b is None:
        return a is b
    return a.texts == b.texts


def unchanged(before: RowImage | None, after: RowImage | None) -> bool:
    """True when two source reads show the same row version: both absent, or the same ``xmin``
    and texts (an update, even to the same value, gives the row a new ``xmin``)."""
    if before is None or after is None:
        return before is after
    return before.version == after.version and before.texts == after.texts


@dataclass
class KeyState:
    """A differing key: the values to query with, the last source and target images, how many
    consecutive rounds were conclusive, and the verdict (None: open; ``match``/``mismatch``)."""

    key: KeyBound
    source: RowImage | None
    target: RowImage | None
    conclusive: int = 0
    changed: int = 0
    verdict: str | None = None

    def judge(self, target: RowImage | None, after: RowImage | None, caught_up: bool, locked: bool = False) -> None:
        """One round: ``target`` read after a catch-up that began after the last source read,
        ``after`` the source read that followed. ``locked``: the source row was share-locked from
        before the catch-up until ``after`` (a present row cannot have changed)."""
        before = self.source
        self.source, self.target = after, target
        if same_data(target, after):
            self.verdict = "match"
            return
        if caught_up and unchanged(before, after):
            self.conclusive += 1
            if self.conclusive >= CONFIRMATIONS or (locked and after is not None):
                self.verdict = "mismatch"
            return
        self.conclusive = 0
        self.changed += 1


@dataclass
class KeyedCheck:
    """The differing keys of one keyed chunk (:class:`ChunkDiff`) and the sides to read them."""

    plan: ChecksumPlan
    diff: ChunkDiff
    src: ChecksumSide
    tgt: ChecksumSide
    keys: dict[str, KeyState] = field(default_factory=dict)
    overflow: int = 0

    @property
    def key_range(self) -> KeyRange:
        """The chunk's key range."""
        return self.diff.key_range

    def narrow(self) -> None:
        """Compare the chunk's row digests on both sides; read the source's full images of the
        keys that differ (each key's first source image)."""
        s = {i.key_text: i for i in self.src.digests(self.key_range)}
        t = {i.key_text: i for i in self.tgt.digests(self.key_range)}
        differing: dict[str, KeyBound] = {}
        for text in s.keys() | t.keys():
            a, b = s.get(text), t.get(text)
            if not same_data(a, b):
                image = a if a is not None else b
                assert image is not None
                differing[text] = image.key
        if not differing:
            return
        if len(differing) > MAX_KEYS_PER_CHUNK:
            self.overflow = len(differing) - MAX_KEYS_PER_CHUNK
            differing = dict(sorted(differing.items())[:MAX_KEYS_PER_CHUNK])
        images = {i.key_text: i for i in self.src.rows(self.key_range, list(differing.values()))}
        for text, key in differing.items():
            self.keys[text] = KeyState(key, images.get(text), None)

    def open_keys(self) -> dict[str, KeyState]:
        """Keys without a verdict."""
        return {k: st for k, st in self.keys.items() if st.verdict is None}

    def read(self, side: ChecksumSide, keys: dict[str, KeyState]) -> dict[str, RowImage]:
        """Images of ``keys`` on ``side`` by key text (absent keys missing)."""
        if not keys:
            return {}
        return {i.key_text: i for i in side.rows(self.key_range, [st.key for st in keys.values()])}

    def read_target(self) -> dict[str, RowImage]:
        """The target's images of the open keys."""
        return self.read(self.tgt, self.open_keys())

    def judge(self, target: dict[str, RowImage], caught_up: bool, locked: bool = False) -> None:
        """Read the source again and judge every open key (``target``: from :meth:`read_target`)."""
        keys = self.open_keys()
        after = self.read(self.src, keys)
        for text, state in keys.items():
            state.judge(target.get(text), after.get(text), caught_up, locked)

    def row_diff(self, state: KeyState) -> RowDiff:
        """The reported form of ``state`` (its last images)."""
        image = state.source or state.target
        assert image is not None
        names = [c.source for c in self.plan.columns]
        key = {k.source: image.texts[names.index(k.source)] for k in self.plan.key}
        columns: dict[str, tuple[str | None, str | None]] = {}
        if state.source is not None and state.target is not None:
            for i, name in enumerate(names):
                if state.source.texts[i] != state.target.texts[i]:
                    columns[name] = (state.source.texts[i], state.target.texts[i])
        return RowDiff(
            key,
            columns,
            source_rows=int(state.source is not None),
            target_rows=int(state.target is not None),
            state="mismatch" if state.verdict == "mismatch" else "in_flight",
        )

    def outcome(self, limit: int) -> tuple[ChunkDiff | None, ChunkDiff | None]:
        """``(mismatched chunk, in-flight chunk)``: the chunk with its conclusively differing rows
        when there are any, else with its still-open rows when there are any (or keys beyond
        :data:`MAX_KEYS_PER_CHUNK` were never followed); at most ``limit`` rows listed."""
        bad = [st for st in self.keys.values() if st.verdict == "mismatch"]
        still = [st for st in self.keys.values() if st.verdict is None]
        chosen = bad or still
        if not chosen and not self.overflow:
            return None, None
        rows = tuple(self.row_diff(st) for st in chosen[: max(0, limit)])
        diff = ChunkDiff(
            self.diff.index,
            self.diff.key_range,
            self.diff.source,
            self.diff.target,
            rows=rows,
            differing_rows=len(chosen) + self.overflow,
        )
        return (diff, None) if bad else (None, diff)
