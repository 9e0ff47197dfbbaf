"""The Apicurio Registry of a test session: the one the session's local stack runs
(``LocalStack.registry``, port ``18081 + 100 * CDC_TEST_STACK_SLOT``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.localstack import LocalStack
from pipeline.localstack.registry import SchemaRegistryProcess


@contextmanager
def running_registry(stack: LocalStack, timeout_s: float = 240) -> Iterator[SchemaRegistryProcess]:
    """The stack's registry once it answers (``LocalStack.up`` starts it with the stack).
    Raises AssertionError when it is not ready in ``timeout_s`` seconds."""
    registry = stack.registry
    deadline = time.monotonic() + timeout_s
    health = registry.health()
    while not health.ready:
        if not health.running or time.monotonic() > deadline:
            log = registry.log_file.read_text(errors="replace")[-3000:] if registry.log_file.exists() else ""
            raise AssertionError(f"schema registry not ready ({health.detail}):\n{log}")
        time.sleep(1)
        health = registry.health()
    yield registry
