"""The Apicurio Registry of a test session, beside the session's local stack.

Started from the jar cache the stack fetched (``deploy/local/pom.xml``), under the stack's
state folder, on ``18081 + 100 * CDC_TEST_STACK_SLOT``. Until ``LocalStack`` starts the
registry itself, Avro tests use :func:`running_registry` from a session fixture.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.localstack import LocalStack
from pipeline.localstack.jars import cache_for
from pipeline.localstack.registry import SchemaRegistryProcess

TEST_REGISTRY_PORT = 18081


def test_registry_port() -> int:
    """``18081 + 100 * CDC_TEST_STACK_SLOT``."""
    return TEST_REGISTRY_PORT + 100 * int(os.environ.get("CDC_TEST_STACK_SLOT", "0") or "0")


test_registry_port.__test__ = False  # type: ignore[attr-defined]  # not a test


@contextmanager
def running_registry(stack: LocalStack, timeout_s: float = 240) -> Iterator[SchemaRegistryProcess]:
    """Start (or reuse) the registry of ``stack``'s state folder; stopped on exit unless
    ``CDC_TEST_KEEP_STACK=1``. Raises AssertionError when it is not ready in ``timeout_s``."""
    s = stack.settings
    registry = SchemaRegistryProcess(s.state, cache_for(s.cache_dir), s.host, test_registry_port())
    registry.start()
    deadline = time.monotonic() + timeout_s
    health = registry.health()
    while not health.ready:
        if not health.running or time.monotonic() > deadline:
            log = registry.log_file.read_text(errors="replace")[-3000:] if registry.log_file.exists() else ""
            raise AssertionError(f"schema registry not ready ({health.detail}):\n{log}")
        time.sleep(1)
        health = registry.health()
    try:
        yield registry
    finally:
        if os.environ.get("CDC_TEST_KEEP_STACK") != "1":
            registry.stop()
