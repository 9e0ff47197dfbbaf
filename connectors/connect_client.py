"""A typed client of the Kafka Connect REST API (distributed mode), built on httpx.

Endpoints used (Apache Kafka documentation, "Kafka Connect" > "REST API", Kafka 4.x):

- ``GET /connectors``, ``GET /connectors/{name}/config``, ``PUT /connectors/{name}/config``
  (201 when created, 200 when updated);
- ``PUT /connector-plugins/{class}/config/validate`` (per-field errors in
  ``configs[].value.errors``);
- ``GET /connectors/{name}/status`` (connector and task states; ``trace`` on FAILED);
- ``POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true`` (KIP-745, 202 with the
  status when tasks are included);
- ``PUT /connectors/{name}/pause``, ``PUT /connectors/{name}/resume``,
  ``PUT /connectors/{name}/stop`` (KIP-875, Connect 3.5+), ``DELETE /connectors/{name}``;
- ``GET /connectors?expand=status`` (every connector with its status, KIP-465);
- ``GET /connectors/{name}/offsets`` and ``DELETE /connectors/{name}/offsets`` (KIP-875,
  Connect 3.6+; the reset needs the connector STOPPED, else HTTP 400).

Retries: HTTP 409 (the worker group is rebalancing or the leader is unknown), HTTP 503 (the
worker is starting) and transport errors (connection refused, timeouts) are retried with
exponential backoff and full jitter, bounded by :class:`RetryPolicy`. Everything else raises
:class:`ConnectError` at once.

Secrets: configurations go to Connect in clear, but nothing this module logs or raises
carries a secret: configs are shown through :func:`connectors.debezium.mask_config` and every
message or trace taken from Connect passes through a :class:`~connectors.debezium.Redactor`
that knows the secret values this client has sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from connectors.debezium import Redactor, is_secret_key, secret_values
from pipeline.core.logs import get_logger
from pipeline.core.retry import exponential_cap
from pipeline.core.settings.models import ConnectSettings

log = get_logger("connectors.connect")

RETRY_STATUS = frozenset({409, 503})


class ConnectError(Exception):
    """A Kafka Connect request that failed; the message is redacted and safe to print.

    ``status_code`` is the HTTP status, or None when Connect could not be reached.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectorNotFoundError(ConnectError):
    """HTTP 404: no connector of that name."""


class ConnectUnavailableError(ConnectError):
    """Connect could not be reached, or kept answering 409/503, within the retry budget."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter for retryable failures.

    Attempt ``n`` (from 0) sleeps ``uniform(0, min(max_backoff_s, initial_backoff_s * 2**n))``
    seconds; retrying stops after ``max_attempts`` attempts or once ``max_elapsed_s`` seconds
    have passed since the first one, whichever comes first.
    """

    max_attempts: int = 8
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_elapsed_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to sleep after failed attempt ``attempt`` (0-based)."""
        cap = exponential_cap(self.initial_backoff_s, self.max_backoff_s, attempt)
        return rng.uniform(0, cap)


class ApplyAction(StrEnum):
    """What :meth:`ConnectClient.apply` did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """Outcome of an idempotent apply; ``changed_keys`` names (never values) the keys that differ."""

    name: str
    action: ApplyAction
    changed_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldError:
    """Errors Connect reported for one configuration key during validation."""

    key: str
    messages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Result of ``PUT /connector-plugins/{class}/config/validate``."""

    connector_class: str
    error_count: int
    errors: tuple[FieldError, ...]

    @property
    def ok(self) -> bool:
        """True when Connect reported no error."""
        return self.error_count == 0 and not self.errors


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """One task: ``state`` is UNASSIGNED, RUNNING, PAUSED, FAILED or RESTARTING; ``trace`` on failure."""

    id: int
    state: str
    worker_id: str
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """``GET /connectors/{name}/status``: the connector's state and its tasks'.

    Connector states: UNASSIGNED, RUNNING, PAUSED, STOPPED, FAILED, RESTARTING.
    """

    name: str
    state: str
    worker_id: str
    tasks: tuple[TaskStatus, ...]
    type: str | None = None
    trace: str | None = None

    @property
    def healthy(self) -> bool:
        """Connector RUNNING with at least one task, all RUNNING."""
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)

    @property
    def failed(self) -> bool:
        """The connector or one of its tasks is FAILED."""
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "name": self.name,
            "type": self.type,
            "connector": {"state": self.state, "worker_id": self.worker_id, "trace": self.trace},
            "tasks": [{"id": t.id, "state": t.state, "worker_id": t.worker_id, "trace": t.trace} for t in self.tasks],
            "healthy": self.healthy,
        }


@dataclass(frozen=True, slots=True)
class SourceOffset:
    """One entry of ``GET /connectors/{name}/offsets``: a source partition and its offset.

    For the Debezium PostgreSQL connector the partition is ``{"server": <topic.prefix>}`` and
    the offset holds ``lsn``, ``lsn_proc`` (last completely processed), ``lsn_commit``,
    ``txId``, ``ts_usec`` and, during a snapshot, ``snapshot`` (Debezium PostgreSQL
    ``PostgresOffsetContext``); values are as stored (LSNs as integers).
    """

    partition: dict[str, Any]
    offset: dict[str, Any]


@dataclass
class _Clock:
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)


class ConnectClient:
    """Kafka Connect REST client; use as a context manager or call :meth:`close`.

    ``settings`` gives the base URL, basic-auth credentials, per-request timeout (seconds) and
    TLS verification. ``transport`` (an httpx transport) is for tests; ``sleep``/``monotonic``
    replace the clock in tests. Methods raise :class:`ConnectorNotFoundError` (404),
    :class:`ConnectUnavailableError` (retries exhausted) or :class:`ConnectError`.
    """

    def __init__(
        self,
        settings: ConnectSettings,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._retry = retry or RetryPolicy()
        self._clock = _Clock(sleep, monotonic, rng or random.Random())  # noqa: S311 - jitter, not cryptography
        self.redact = Redactor()
        auth: httpx.BasicAuth | None = None
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password is not None else ""
            self.redact.add(password)
            auth = httpx.BasicAuth(settings.username, password)
        self._http = httpx.Client(
            base_url=settings.url.rstrip("/"),
            auth=auth,
            timeout=settings.timeout_s,
            verify=settings.verify_tls,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    # ----------------------------------------------------------------- requests

    def _remember_secrets(self, config: Mapping[str, str]) -> None:
        for secret in secret_values(config):
            self.redact.add(secret)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        not_found_ok: bool = False,
    ) -> httpx.Response:
        """Send one request with the retry policy; returns the response (404 too when ``not_found_ok``)."""
        start = self._clock.monotonic()
        attempt = 0
        while True:
            failure: str
            status: int | None
            try:
                resp = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                failure, status = f"{type(exc).__name__}: {exc}", None
            else:
                if resp.status_code not in RETRY_STATUS:
                    if resp.status_code == 404 and not_found_ok:
                        return resp
                    if resp.status_code == 404:
                        raise ConnectorNotFoundError(self._error_text(method, path, resp), 404)
                    if resp.status_code >= 400:
                        raise ConnectError(self._error_text(method, path, resp), resp.status_code)
                    return resp
                failure, status = self._error_text(method, path, resp), resp.status_code
            attempt += 1
            elapsed = self._clock.monotonic() - start
            if attempt >= self._retry.max_attempts or elapsed >= self._retry.max_elapsed_s:
                raise ConnectUnavailableError(
                    f"{method} {path}: giving up after {attempt} attempt(s) in {elapsed:.1f}s: {self.redact(failure)}",
                    status,
                )
            delay = min(self._retry.delay(attempt - 1, self._clock.rng), max(0.0, self._retry.max_elapsed_s - elapsed))
            log.warning(
                "connect request retried",
                method=method,
                path=path,
                status=status,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=self.redact(failure)[:300],
            )
            self._clock.sleep(delay)

    def _error_text(self, method: str, path: str, resp: httpx.Response) -> str:
        try:
            body = resp.json()
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            message = None
        text = message or resp.text.strip() or resp.reason_phrase
        return self.redact(f"{method} {path}: HTTP {resp.status_code}: {text}")

    # ----------------------------------------------------------------- reads

    def list_connectors(self) -> list[str]:
        """Names of all connectors, sorted."""
        body = self._request("GET", "/connectors").json()
        return sorted(str(n) for n in body)

    def get_config(self, name: str) -> dict[str, str] | None:
        """The stored configuration of ``name`` (secrets in clear: never log it), None when absent."""
        resp = self._request("GET", f"/connectors/{_seg(name)}/config", not_found_ok=True)
        if resp.status_code == 404:
            return None
        config = {str(k): str(v) for k, v in resp.json().items()}
        self._remember_secrets(config)
        return config

    def status(self, name: str) -> ConnectorStatus:
        """Connector and task states; traces of failed ones are redacted.

        Raises ConnectorNotFoundError when there is no such connector.
        """
        body = self._request("GET", f"/connectors/{_seg(name)}/status").json()
        return self._parse_status(body)

    def _parse_status(self, body: Mapping[str, Any]) -> ConnectorStatus:
        conn = body.get("connector", {})
        tasks = tuple(
            TaskStatus(
                id=int(t["id"]),
                state=str(t["state"]),
                worker_id=str(t.get("worker_id", "")),
                trace=self.redact(t["trace"]) if t.get("trace") else None,
            )
            for t in sorted(body.get("tasks", []), key=lambda t: int(t["id"]))
        )
        return ConnectorStatus(
            name=str(body["name"]),
            state=str(conn.get("state", "UNKNOWN")),
            worker_id=str(conn.get("worker_id", "")),
            tasks=tasks,
            type=body.get("type"),
            trace=self.redact(conn["trace"]) if conn.get("trace") else None,
        )

    def statuses(self) -> list[ConnectorStatus]:
        """``GET /connectors?expand=status``: the status of every connector, sorted by name."""
        body = self._request("GET", "/connectors", params={"expand": "status"}).json()
        found = [self._parse_status(entry["status"]) for entry in body.values() if isinstance(entry, dict)]
        return sorted(found, key=lambda s: s.name)

    def offsets(self, name: str) -> list[SourceOffset]:
        """``GET /connectors/{name}/offsets`` (KIP-875): the offsets Connect stored for ``name``.

        Empty when it has none (never committed, or reset). Raises ConnectorNotFoundError.
        """
        body = self._request("GET", f"/connectors/{_seg(name)}/offsets").json()
        return [
            SourceOffset(dict(item.get("partition") or {}), dict(item.get("offset") or {}))
            for item in body.get("offsets", [])
            if isinstance(item, dict)
        ]

    # ----------------------------------------------------------------- writes

    def validate(self, config: Mapping[str, str], *, name: str | None = None) -> ValidationResult:
        """Validate ``config`` (must hold ``connector.class``) with the plugin's own checks.

        ``name`` is added as the ``name`` key (Connect requires one). Debezium's PostgreSQL
        validation also connects to the database; connection errors are reported on
        ``database.hostname``. Messages are redacted.
        """
        connector_class = config["connector.class"]
        self._remember_secrets(config)
        payload = dict(config)
        if name is not None:
            payload["name"] = name
        body = self._request("PUT", f"/connector-plugins/{_seg(connector_class)}/config/validate", json=payload).json()
        errors: list[FieldError] = []
        for item in body.get("configs", []):
            value = item.get("value", {})
            messages = tuple(self.redact(str(m)) for m in value.get("errors", []) if m)
            if messages:
                errors.append(FieldError(str(value.get("name", "?")), messages))
        return ValidationResult(str(body.get("name", connector_class)), int(body.get("error_count", 0)), tuple(errors))

    def put_config(self, name: str, config: Mapping[str, str]) -> bool:
        """``PUT /connectors/{name}/config``: create or replace; True when it was created (HTTP 201)."""
        self._remember_secrets(config)
        body = {k: v for k, v in config.items() if k != "name"}
        resp = self._request("PUT", f"/connectors/{_seg(name)}/config", json=body)
        return resp.status_code == 201

    def apply(self, name: str, config: Mapping[str, str]) -> ApplyResult:
        """Make ``name``'s configuration equal ``config``; a no-op when it already is.

        The current configuration is read first; when it equals ``config`` (the ``name`` key
        aside, values compared as strings) nothing is sent, so the running tasks are left
        alone. Otherwise the config is PUT (Connect restarts the connector and its tasks).
        Logs the action and the changed key names, never values.
        """
        desired = {k: str(v) for k, v in config.items() if k != "name"}
        current = self.get_config(name)
        if current is not None:
            current.pop("name", None)
            changed = tuple(sorted(k for k in desired.keys() | current.keys() if desired.get(k) != current.get(k)))
            if not changed:
                log.info("connector unchanged", connector=name)
                return ApplyResult(name, ApplyAction.UNCHANGED)
        else:
            changed = tuple(sorted(desired))
        created = self.put_config(name, desired)
        action = ApplyAction.CREATED if created or current is None else ApplyAction.UPDATED
        shown = [k + ("(secret)" if is_secret_key(k) else "") for k in changed] if action is ApplyAction.UPDATED else []
        log.info(f"connector {action.value}", connector=name, changed_keys=shown)
        return ApplyResult(name, action, changed if action is ApplyAction.UPDATED else ())

    def restart(self, name: str, *, include_tasks: bool = True, only_failed: bool = True) -> ConnectorStatus | None:
        """``POST /connectors/{name}/restart?includeTasks=..&onlyFailed=..`` (KIP-745).

        Returns the status Connect answers with (HTTP 202), or None when it answers 204/200
        without one. Raises ConnectorNotFoundError when absent.
        """
        params = {"includeTasks": _bool(include_tasks), "onlyFailed": _bool(only_failed)}
        resp = self._request("POST", f"/connectors/{_seg(name)}/restart", params=params)
        log.info("connector restart requested", connector=name, include_tasks=include_tasks, only_failed=only_failed)
        if resp.status_code == 202 and resp.content:
            return self._parse_status(resp.json())
        return None

    def pause(self, name: str) -> None:
        """``PUT /connectors/{name}/pause``: tasks stop polling; state becomes PAUSED (asynchronously)."""
        self._request("PUT", f"/connectors/{_seg(name)}/pause")
        log.info("connector pause requested", connector=name)

    def resume(self, name: str) -> None:
        """``PUT /connectors/{name}/resume``: a PAUSED or STOPPED connector runs again."""
        self._request("PUT", f"/connectors/{_seg(name)}/resume")
        log.info("connector resume requested", connector=name)

    def stop(self, name: str) -> None:
        """``PUT /connectors/{name}/stop`` (KIP-875): tasks are shut down, config and offsets kept."""
        self._request("PUT", f"/connectors/{_seg(name)}/stop")
        log.info("connector stop requested", connector=name)

    def reset_offsets(self, name: str) -> None:
        """``DELETE /connectors/{name}/offsets`` (KIP-875): forget every offset of ``name``.

        The connector must be STOPPED (Connect answers HTTP 400 otherwise, raised as
        ConnectError); on its next start a source connector behaves as if new (Debezium: the
        configured ``snapshot.mode`` decides whether it snapshots).
        """
        self._request("DELETE", f"/connectors/{_seg(name)}/offsets")
        log.info("connector offsets reset", connector=name)

    def delete(self, name: str) -> bool:
        """``DELETE /connectors/{name}``; True when it existed. Offsets stay in Connect's topic."""
        resp = self._request("DELETE", f"/connectors/{_seg(name)}", not_found_ok=True)
        existed = resp.status_code != 404
        log.info("connector deleted" if existed else "connector absent", connector=name)
        return existed

    # ----------------------------------------------------------------- waiting

    def wait_for(
        self,
        name: str,
        done: Callable[[ConnectorStatus], bool],
        *,
        timeout_s: float = 60.0,
        interval_s: float = 1.0,
        stable_s: float = 0.0,
    ) -> ConnectorStatus:
        """Poll the status until ``done(status)`` has held for ``stable_s`` seconds, or ``timeout_s`` pass.

        Returns the last status (check it: at the deadline it may not be ``done``). ``stable_s``
        guards against a task that starts RUNNING and fails a moment later. A connector not yet
        known (404 right after creation) is polled again; ConnectorNotFoundError is raised when
        it is still absent at the deadline.
        """
        deadline = self._clock.monotonic() + timeout_s
        since: float | None = None
        while True:
            now = self._clock.monotonic()
            try:
                status = self.status(name)
            except ConnectorNotFoundError:
                if now >= deadline:
                    raise
                since = None
            else:
                if done(status):
                    since = now if since is None else since
                    if now - since >= stable_s:
                        return status
                else:
                    since = None
                if now >= deadline:
                    return status
            self._clock.sleep(interval_s)


def settled(status: ConnectorStatus) -> bool:
    """True when the connector is healthy or something failed (a state worth reporting)."""
    return status.healthy or status.failed


def _seg(value: str) -> str:
    return quote(value, safe="")


def _bool(value: bool) -> str:
    return "true" if value else "false"
