"""``python -m tests.e2e.avro.avro_worker run -c FILE``: ``cdc-pipeline`` with the worker's
decoder built by :func:`pipeline.decode.make_decoder` (JSON or Avro per the configuration).

Test-only bridge until ``pipeline.app.build_worker`` calls ``make_decoder`` itself (a one-line
change reported to the lead); once it does, the patch below is a no-op.
"""

from __future__ import annotations

from typing import Any

import pipeline.app as app
from pipeline.cli import main
from pipeline.decode import make_decoder
from pipeline.settings import PipelineSettings, Settings

_build_worker = app.build_worker


def _build_avro_worker(settings: Settings, pipeline: PipelineSettings, **kwargs: Any) -> app.Worker:
    source = settings.source(pipeline.source)
    original = getattr(app, "Decoder")  # noqa: B009 - patched for the duration of build_worker
    setattr(app, "Decoder", lambda *_a, **_k: make_decoder(source, pipeline))  # noqa: B010
    try:
        return _build_worker(settings, pipeline, **kwargs)
    finally:
        setattr(app, "Decoder", original)  # noqa: B010


app.build_worker = _build_avro_worker

if __name__ == "__main__":
    main()
