"""Fixtures of the integration tests: those that register connectors (see
:mod:`tests.integration.sources`) and one target per backend (:mod:`tests.integration.each_target`)."""

from tests.integration.each_target import each_target
from tests.integration.sources import cli, env

__all__ = ["cli", "each_target", "env"]
