"""Custom code in transform rules (``hook: module:function``): importing it when the rules are
compiled and calling it once per event under one contract (the design's error seam):

- the hook is called with the event after the rule's other steps and returns a
  :class:`~pipeline.core.events.ChangeEvent` (the same or a new one) or None (skip it, as ``filtered``);
- it signals a bad *event* only by raising :class:`~pipeline.core.errors.PoisonMessageError` or a
  subclass, e.g. :class:`RejectedEventError`: the event goes to the DLQ with the hook's reason and the
  offset moves on;
- any other exception is a bug of the hook and propagates unchanged (with a note naming the rule,
  hook and event): the worker stops without committing, nothing is dead-lettered by accident;
- returning anything else raises :class:`HookContractError` (fatal, for the same reason).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeAlias

from pipeline.core.errors import FatalError, PoisonMessageError
from pipeline.core.events import ChangeEvent, Skip

Hook: TypeAlias = Callable[[ChangeEvent], ChangeEvent | None]


class RejectedEventError(PoisonMessageError):
    """What a hook raises for an event it judges bad: ``raise RejectedEventError(event, "no country")``.

    The event becomes a dead letter whose reason names the rule, the hook and ``reason``.
    """

    def __init__(self, event: ChangeEvent, reason: str) -> None:
        super().__init__(event.topic, event.partition, event.offset, reason)


class HookContractError(FatalError, TypeError):
    """A hook returned something other than a ChangeEvent or None: a bug of the hook (fatal)."""


def import_hook(spec: str) -> Hook | str:
    """The function named by ``spec`` (``module:function``), or a problem text when the module
    cannot be imported or has no such callable (a configuration problem)."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is a configuration problem
        return f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
    found = getattr(module, function_name, None)
    if not callable(found):
        return f"module {module_name!r} has no function {function_name!r}"
    hook: Hook = found
    return hook


def call_hook(hook: Hook, where: str, event: ChangeEvent) -> ChangeEvent | Skip:
    """``hook(event)`` under the contract above; ``where`` names it (``transforms[i].hook mod:fn``).

    Returns the hook's event or ``Skip(reason="filtered")`` for None. Raises
    :class:`~pipeline.core.errors.PoisonMessageError` (with the event's topic, partition and
    offset, the reason prefixed by ``where``) when the hook raised one, :class:`HookContractError`
    for a wrong return type, and re-raises any other exception of the hook unchanged.
    """
    try:
        result = hook(event)
    except PoisonMessageError as exc:
        raise PoisonMessageError(event.topic, event.partition, event.offset, f"{where}: {exc.reason}") from exc
    except Exception as exc:
        exc.add_note(f"raised by {where} on {event.topic}[{event.partition}]@{event.offset} (fatal: not poison)")
        raise
    if result is None:
        return Skip(event.topic, event.partition, event.offset, "filtered")
    if not isinstance(result, ChangeEvent):
        raise HookContractError(
            f"{where} returned {type(result).__name__}, not ChangeEvent or None "
            f"(on {event.topic}[{event.partition}]@{event.offset})"
        )
    return result
