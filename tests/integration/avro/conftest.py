"""Session fixture: a real Apicurio Registry next to the test stack (see ``registry_stack``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.localstack import LocalStack
from pipeline.localstack.registry import SchemaRegistryProcess
from tests.integration.avro.registry_stack import running_registry


@pytest.fixture(scope="session")
def schema_registry(local_stack: LocalStack) -> Iterator[SchemaRegistryProcess]:
    """The running registry (Confluent-compatible API at ``.endpoint``)."""
    with running_registry(local_stack) as registry:
        yield registry
