"""Schema Registry client: HTTP status handling, retry with backoff, cache by id, auth/TLS
settings. The HTTP exchanges are driven by ``httpx.MockTransport`` (the real registry is
exercised in ``tests/integration/avro``)."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.core.settings.models import RetrySettings, SchemaRegistrySettings
from pipeline.decode.registry import RegistryUnavailableError, SchemaRegistryClient, UnknownSchemaError

SCHEMA = {"type": "record", "name": "Key", "fields": [{"name": "id", "type": "long"}]}
FAST = RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.02, max_elapsed_s=0.2)
PATIENT = RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.02, max_elapsed_s=10)


def _client(handler, retry: RetrySettings = FAST, **settings) -> SchemaRegistryClient:  # type: ignore[no-untyped-def]
    # Real sleeps: the retry budget is wall-clock seconds, so FAST gives ~20 attempts in
    # 0.2 s whatever the machine's speed (a no-op sleep made thousands, and the count
    # depended on how fast the machine was).
    cfg = SchemaRegistrySettings(url="http://registry:8080/apis/ccompat/v7", **settings)
    return SchemaRegistryClient(cfg, retry, transport=httpx.MockTransport(handler))


def test_schema_is_fetched_once_per_id() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    client = _client(handler)
    assert client.schema(7) == SCHEMA
    assert client.schema(7) == SCHEMA
    assert seen == ["/apis/ccompat/v7/schemas/ids/7"]


def test_unknown_id_is_not_retried() -> None:
    calls = 0

    def handler(_request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})

    with pytest.raises(UnknownSchemaError, match="schema id 5 unknown to the registry: error_code 40403"):
        _client(handler).schema(5)
    assert calls == 1


@pytest.mark.parametrize("failure", ["refused", "timeout", "500", "401", "garbage"])
def test_unavailable_registry_is_retried_then_transient(failure: str) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if failure == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if failure == "garbage":
            return httpx.Response(200, text="<html>proxy</html>")
        return httpx.Response(int(failure), json={"error_code": 50001, "message": "boom"})

    with pytest.raises(RegistryUnavailableError):
        _client(handler).schema(1)
    assert calls >= 2  # retried with backoff before giving up


def test_recovers_when_the_registry_comes_back() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    # a budget no stall can spend: this test is about recovering, not about giving up
    assert _client(handler, PATIENT).schema(1) == SCHEMA
    assert calls == 3


def test_basic_auth_header_is_sent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Basic dXNlcjpwdw=="  # user:pw
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    assert _client(handler, username="user", password="pw").schema(1) == SCHEMA


def test_cache_is_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    client = _client(handler, cache_size=2)
    for schema_id in (1, 2, 3):
        client.schema(schema_id)
    assert len(client) == 2
