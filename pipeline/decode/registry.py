"""Schema Registry client: Avro writer schemas by id, through the Confluent-compatible REST API.

``GET {url}/schemas/ids/{id}`` answers ``{"schema": "<Avro schema JSON text>", ...}``
(Confluent Schema Registry API reference, "Schemas"; Apicurio Registry 3 serves the same
under ``/apis/ccompat/v7``, where the id is the content id). Schemas are immutable per id,
so a bounded in-memory cache keyed by id is exact.

Errors, which the decoder turns into the runner's two paths:

- :class:`UnknownSchemaError`: the registry answered 404 (Confluent error code 40403,
  "Schema not found"): the message can never be decoded -> poison -> DLQ with the reason.
- :class:`RegistryUnavailableError`: connection refused, timeout, 5xx, 401/403, or an answer
  that is not a schema: worth retrying. It is a :class:`pipeline.core.errors.TransientError`, the
  class the runner already retries with backoff. Before raising it the client itself retries
  with backoff for up to ``retry_budget_s`` seconds (the pipeline's ``retry`` settings), so a
  short registry outage never reaches the runner.

Secrets (the basic-auth password) are only given to httpx, never logged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from pipeline.core.errors import TransientError
from pipeline.core.logs import get_logger
from pipeline.core.retry import Backoff, RetryBudgetExceededError
from pipeline.core.settings.models import RetrySettings, SchemaRegistrySettings

__all__ = ["RegistryUnavailableError", "SchemaRegistryClient", "UnknownSchemaError"]

log = get_logger(__name__)


class UnknownSchemaError(Exception):
    """The registry does not know the schema id (HTTP 404 / error code 40403)."""

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(f"schema id {schema_id} unknown to the registry: {detail}")
        self.schema_id = schema_id


class RegistryUnavailableError(TransientError):
    """The registry could not be asked (connection, timeout, 5xx, auth): retry later."""


class SchemaRegistryClient:
    """Fetches and caches Avro schemas (as parsed JSON) by id.

    ``schema(id)`` returns the writer schema as a JSON value (dict, list or str). Not
    thread-safe (one per decoder). ``transport`` is for tests of the HTTP handling only
    (``httpx.MockTransport``); real use talks to a real registry.
    """

    def __init__(
        self,
        settings: SchemaRegistrySettings,
        retry: RetrySettings | None = None,
        *,
        retry_budget_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._retry = retry or RetrySettings()
        self._budget = self._retry.max_elapsed_s if retry_budget_s is None else retry_budget_s
        self._sleep = sleep
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._limit = settings.cache_size
        self.fetches = 0
        auth = None
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password is not None else ""
            auth = httpx.BasicAuth(settings.username, password)
        verify: Any = settings.verify
        if settings.verify and settings.ca_file is not None:
            verify = str(settings.ca_file)
        cert: Any = None
        if settings.cert_file is not None:
            cert = (str(settings.cert_file), str(settings.key_file)) if settings.key_file else str(settings.cert_file)
        self._http = httpx.Client(
            base_url=settings.url.rstrip("/"),
            auth=auth,
            verify=verify,
            cert=cert,
            timeout=settings.timeout_s,
            headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"},
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __len__(self) -> int:
        return len(self._cache)

    def schema(self, schema_id: int) -> Any:
        """The writer schema of ``schema_id`` as parsed JSON.

        Raises UnknownSchemaError (404) at once; retries transient failures with backoff and
        raises RegistryUnavailableError once ``retry_budget_s`` is spent.
        """
        found = self._cache.get(schema_id)
        if found is not None:
            self._cache.move_to_end(schema_id)
            return found
        backoff = Backoff(self._retry.initial_backoff_s, self._retry.max_backoff_s, self._budget)
        while True:
            try:
                parsed = self._fetch(schema_id)
                break
            except RegistryUnavailableError as exc:
                try:
                    delay = backoff.next_delay()
                except RetryBudgetExceededError:
                    raise exc from None
                log.warning(
                    "schema registry unavailable, retrying",
                    schema_id=schema_id,
                    attempt=backoff.attempts,
                    delay_s=round(delay, 3),
                    error=str(exc)[:300],
                )
                self._sleep(delay)
        self._cache[schema_id] = parsed
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return parsed

    def _fetch(self, schema_id: int) -> Any:
        self.fetches += 1
        try:
            response = self._http.get(f"/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(f"schema registry request failed: {type(exc).__name__}: {exc}") from None
        if response.status_code == 404:
            raise UnknownSchemaError(schema_id, _error_text(response))
        if response.status_code != 200:
            raise RegistryUnavailableError(
                f"schema registry answered HTTP {response.status_code} for schema id {schema_id}: "
                f"{_error_text(response)}"
            )
        try:
            body = response.json()
            text = body["schema"]
            return orjson.loads(text) if isinstance(text, str) else text
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailableError(
                f"schema registry answer for id {schema_id} holds no schema: {exc}"
            ) from None


def _error_text(response: httpx.Response) -> str:
    """``error_code``/``message`` of a Confluent-style error body, else the first bytes."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and ("error_code" in body or "message" in body):
        return f"error_code {body.get('error_code')}: {str(body.get('message'))[:200]}"
    return response.text[:200]
