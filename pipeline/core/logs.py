"""structlog configuration, done once at process start.

JSON lines on stderr by default (for containers and log shippers), or a coloured console
renderer for humans. Every record carries ``timestamp`` (ISO 8601, UTC), ``level`` and
``event``; callers bind ``topic``/``partition``/``offset`` on errors.

librdkafka (every confluent-kafka client) would otherwise print its own ``%3|...|FAIL|...``
lines to stderr, dozens a second against an unreachable broker; :func:`kafka_logging` routes
them through structlog instead, each distinct message at most once per
:data:`KAFKA_LOG_REPEAT_S` seconds with a count of the repeats.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]
LEVELS = ("debug", "info", "warning", "error")
KAFKA_LOG_REPEAT_S = 30.0
"""Seconds during which a repeated librdkafka message is counted instead of logged again."""

_state: dict[str, LogFormat] = {"format": "json"}


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger.

    ``level`` is one of debug, info, warning, error (case-insensitive). Raises ValueError for
    another value. Safe to call again (e.g. in tests); the last call wins.
    """
    lvl = level.lower()
    if lvl not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    numeric = getattr(logging, lvl.upper())
    _state["format"] = fmt
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


def current_format() -> LogFormat:
    """The format of the last :func:`configure_logging` call (``json`` before any)."""
    return _state["format"]


_VARYING = re.compile(r"\b\d+ ?ms\b")
"""Durations inside librdkafka messages ("after 0ms in state CONNECT"): not part of a repeat's identity."""


class _KafkaLogHandler(logging.Handler):
    """Receives the records confluent-kafka makes of librdkafka's log lines (its ``logger``
    config calls ``logger.log(level, "%s [%s] %s", facility, client name, message)``) and
    logs them through structlog, rate-limited per (client, facility, message)."""

    def __init__(self, repeat_s: float) -> None:
        super().__init__(logging.DEBUG)
        self._repeat_s = repeat_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}  # key -> (last logged, repeats since)
        self._log = get_logger("librdkafka")

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3:
            facility, client, message = (str(a) for a in args)
        else:
            facility, client, message = "", "", record.getMessage()
        repeats = self._admit((client, facility, _VARYING.sub("Nms", message)))
        if repeats is None:
            return
        fields: dict[str, Any] = {"client": client, "facility": facility, "message": message}
        if repeats:
            fields["repeated"] = repeats
        self._method(record.levelno)("kafka client log", **fields)

    def _admit(self, key: tuple[str, str, str]) -> int | None:
        """None to suppress this occurrence; else how many were suppressed since the last one logged."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self._repeat_s:
                self._seen[key] = (last[0], last[1] + 1)
                return None
            if len(self._seen) > 1000:  # forget old keys: bounded memory whatever librdkafka says
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._repeat_s}
            self._seen[key] = (now, 0)
            return last[1] if last is not None else 0

    def _method(self, levelno: int) -> Any:
        if levelno >= logging.ERROR:
            return self._log.error
        if levelno >= logging.WARNING:
            return self._log.warning
        return self._log.info if levelno >= logging.INFO else self._log.debug


_kafka_loggers: dict[float, logging.Logger] = {}


def kafka_logger(repeat_s: float = KAFKA_LOG_REPEAT_S) -> logging.Logger:
    """The stdlib logger to give confluent-kafka clients as their ``logger`` config
    (confluent-kafka-python "Configuration": ``logger`` takes a ``logging.Logger``): it
    forwards librdkafka's lines to structlog (event ``kafka client log`` with ``client``,
    ``facility``, ``message`` and, after suppressed repeats, ``repeated``), each distinct
    message at most once per ``repeat_s`` seconds. Not propagated to the root logger.

    confluent-kafka then delivers the lines from ``poll()``/``consume()`` (or an admin call's
    own polling): a client nobody polls logs nothing, where librdkafka would print to stderr.
    """
    found = _kafka_loggers.get(repeat_s)
    if found is not None:
        return found
    logger = logging.getLogger(f"cdc.librdkafka.{repeat_s:g}")
    logger.handlers[:] = [_KafkaLogHandler(repeat_s)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _kafka_loggers[repeat_s] = logger
    return logger


def kafka_logging(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a confluent-kafka Consumer/Producer/AdminClient configuration) with
    ``logger`` set to :func:`kafka_logger`: every client the project builds goes through this."""
    return {**config, "logger": kafka_logger()}
