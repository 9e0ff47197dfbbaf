"""Fixtures of the integration tests that register connectors (see :mod:`tests.integration.sources`)."""

from tests.integration.sources import cli, env

__all__ = ["cli", "env"]
