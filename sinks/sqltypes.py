"""Column types reduced to what widening needs, and the one rule deciding whether a target
column can hold, be widened to, or must refuse the type the source now has. Pure code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Fit = Literal["same", "holds", "widen", "refuse"]

# Decimal digits an integer of this many bytes needs (int2 5, int4 10, int8 19).
_INT_DIGITS = {1: 3, 2: 5, 4: 10, 8: 19}


@dataclass(frozen=True, slots=True)
class SqlType:
    """A column type reduced to what widening needs: ``family`` (``int``, ``float``,
    ``numeric``, ``string``, ``char``, ``timestamp``, ``timestamptz``, ``time``, ``timetz``,
    ``binary``, or the type's own name), ``size`` (bytes for int/float, length for strings,
    precision for numeric and fractional-second digits for times; ``math.inf`` when unbounded)
    and ``scale`` (numeric only)."""

    family: str
    size: float = math.inf
    scale: int = 0
    array: bool = False


def fit(target: SqlType, incoming: SqlType) -> Fit:
    """How the target's column type relates to the type the source now has.

    ``same``: equal; ``holds``: every incoming value fits the target already (nothing to do);
    ``widen``: the target can be altered in place to the incoming type without losing a stored
    value; ``refuse``: neither (a change of family, or numeric scale up with fewer integer
    digits).
    """
    if target == incoming:
        return "same"
    if target.array != incoming.array:
        return "refuse"
    if target.family == incoming.family:
        if target.family == "numeric":
            return _numeric_fit(target, incoming)
        return "holds" if target.size >= incoming.size else "widen"
    if target.family == "numeric" and incoming.family == "int":
        return "holds" if _holds_int(target, incoming) else "refuse"
    if target.family == "int" and incoming.family == "numeric":
        return "widen" if _holds_int(incoming, target) else "refuse"
    return "refuse"


def _holds_int(numeric: SqlType, integer: SqlType) -> bool:
    digits = _INT_DIGITS.get(int(integer.size), 19) if integer.size != math.inf else math.inf
    return numeric.size == math.inf or numeric.size - numeric.scale >= digits


def _numeric_fit(target: SqlType, incoming: SqlType) -> Fit:
    if target.size == math.inf:
        return "holds"
    if incoming.size == math.inf:
        return "widen"
    if target.scale >= incoming.scale and target.size - target.scale >= incoming.size - incoming.scale:
        return "holds"
    if incoming.scale >= target.scale and incoming.size - incoming.scale >= target.size - target.scale:
        return "widen"
    return "refuse"
