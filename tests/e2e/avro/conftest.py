"""Avro end-to-end harness: the ``e2e`` factory with sources writing Avro through a real
Apicurio Registry (session-scoped, beside the test stack) and workers decoding it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.localstack import LocalStack
from pipeline.localstack.registry import SchemaRegistryProcess
from tests.e2e.conftest import E2EPipeline
from tests.integration.avro.registry_stack import running_registry


@pytest.fixture(scope="session")
def schema_registry(local_stack: LocalStack) -> Iterator[SchemaRegistryProcess]:
    """The running registry (Confluent-compatible API at ``.endpoint``)."""
    with running_registry(local_stack) as registry:
        yield registry


@pytest.fixture
def avro_e2e(e2e: Callable[..., E2EPipeline], schema_registry: SchemaRegistryProcess) -> Callable[..., E2EPipeline]:
    """``e2e`` with the source's keys and values in Avro (``format: avro``) through the session
    registry; ``registry_url`` overrides the URL the *pipeline* reads schemas from (Kafka
    Connect keeps the real one)."""

    def make(
        ddl: list[str],
        tables: list[str],
        pipeline: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        registry_url: str | None = None,
    ) -> E2EPipeline:
        registry = {"url": registry_url or schema_registry.endpoint, "converter_url": schema_registry.converter_url}
        src = {"format": "avro", "schema_registry": registry, **(source or {})}
        return e2e(ddl, tables, pipeline=pipeline, source=src)

    return make


class TcpForwarder:
    """Forwards a loopback port to ``target`` while started: a registry that can be taken
    down and brought back (the real registry keeps its schemas meanwhile)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
