"""Where a source's bulk initial load stands, read from the state each of its pipelines keeps in its
target's control schema (``bulk_loads``, written by :mod:`pipeline.control.bulkload.run`).

``connectors apply`` asks :func:`load_done` before registering a bulk source's connector: with
``snapshot.mode=no_data`` a connector registered before the copy finished would stream on from a slot
whose snapshot no one copied, and the targets would miss the existing rows."""

from __future__ import annotations

from typing import Any

from pipeline.control.bulkload.state import DONE, all_done
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import open_bulk_load
from sinks.factory import make_target


def source_pipelines(settings: Settings, source: SourceSettings) -> list[PipelineSettings]:
    """The pipelines reading ``source``, in configuration order."""
    return [p for p in settings.pipelines if p.source == source.name]


def pipeline_state(pipeline: PipelineSettings) -> dict[str, Any] | None:
    """The stored bulk-load state of ``pipeline`` (None when it has none).

    Raises TransientSinkError when the target is unreachable and TypeError when its kind has no
    bulk-load support.
    """
    target = make_target(pipeline, purpose="load-status")
    try:
        store = open_bulk_load(target)
        try:
            return store.load_state(pipeline.name)
        finally:
            store.close()
    finally:
        target.close()


def load_status(settings: Settings, source: SourceSettings) -> dict[str, dict[str, Any] | None]:
    """Pipeline name -> its stored bulk-load state (None: no load recorded), for every pipeline of
    ``source``. Raises as :func:`pipeline_state`."""
    return {p.name: pipeline_state(p) for p in source_pipelines(settings, source)}


def is_done(state: dict[str, Any] | None) -> bool:
    """True when a stored state says the pipeline's copy finished (``status`` done, written by the
    loader before the hand-over)."""
    return state is not None and state.get("status") == DONE


def load_done(settings: Settings, source: SourceSettings) -> bool:
    """True when every pipeline of ``source`` has a completed bulk load (False when the source has no
    pipeline: there is nothing a load could have filled). Raises as :func:`pipeline_state`."""
    return all_done(load_status(settings, source))
