"""structlog configuration, done once at process start.

JSON lines on stderr by default (for containers and log shippers), or a coloured console
renderer for humans. Every record carries ``timestamp`` (ISO 8601, UTC), ``level`` and
``event``; callers bind ``topic``/``partition``/``offset`` on errors.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]
LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger.

    ``level`` is one of debug, info, warning, error (case-insensitive). Raises ValueError for
    another value. Safe to call again (e.g. in tests); the last call wins.
    """
    lvl = level.lower()
    if lvl not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    numeric = getattr(logging, lvl.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # httpx logs every request URL at INFO; keep it quiet unless debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if lvl == "debug" else logging.WARNING)


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """A logger writing to the *current* ``sys.stderr`` (which tests and CLIs may replace)."""
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> Any:
    """A structlog logger with ``component=name``; lazy, so the configuration made later by
    :func:`configure_logging` applies (binding now would freeze structlog's defaults)."""
    return structlog.get_logger(component=name)
