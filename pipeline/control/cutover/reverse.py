"""The rollback window's reverse direction: the new primary (the old target) captured by its own
Debezium connector, whose changes the reverse pipeline applies to the old source.

Why the slot is created here and not by the connector: Debezium creates a missing slot when its
task starts, which is some seconds after the connector is registered; a write made on the new
primary in between would never reach the old source. ``pg_create_logical_replication_slot``
returns only once the slot has a consistent point, so every transaction committing after
:func:`start_reverse` has created it is decoded; the connector (``snapshot.mode=no_data``: the
old source already holds the data) then streams from the slot's position. With no offset stored,
Debezium starts streaming where the slot is (Debezium PostgreSQL connector, "Snapshots":
``no_data`` "streams changes from the point of the replication slot").

:func:`stop_reverse` (abort, ``cutover finish``) stops the connector, forgets its offsets
(KIP-875 ``DELETE /connectors/{name}/offsets``: a later connector of the same name with a new slot
would otherwise find an offset behind that slot and fail, ``offset.mismatch.strategy``), deletes it
and drops the slot. Both are idempotent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from connectors import source_prep
from connectors.connect_client import ConnectClient, ConnectError, ConnectorNotFoundError, ConnectorStatus
from connectors.debezium import ConnectorConfigError, build_connector_config
from connectors.slots import create_logical_slot, drop_slot_when_free, format_lsn
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings

log = get_logger(__name__)

REVERSE_SNAPSHOT_MODE = "no_data"
"""The reverse connector never snapshots: the old source holds the data already."""


class ReverseError(Exception):
    """The reverse direction could not be started or stopped; the message is safe to print."""


@dataclass(frozen=True, slots=True)
class ReverseStarted:
    """What :func:`start_reverse` created on the new primary and in Kafka Connect.

    ``slot_lsn`` is the slot's consistent point in ``pg_lsn`` text form (``16/B374D848``): every
    transaction committed on the new primary after it is captured. ``slot_created`` is False when
    an existing slot of that name was reused (a rerun).
    """

    connector: str
    slot: str
    publication: str
    slot_lsn: str
    slot_created: bool = True

    def to_dict(self) -> dict[str, str | bool]:
        """Plain data for the cutover report and state (no secrets)."""
        return asdict(self)


def reverse_source(settings: Settings, pipeline: PipelineSettings) -> SourceSettings:
    """The ``sources`` entry of the new primary named by ``pipeline.cutover.reverse.source``, with
    ``snapshot_mode`` forced to ``no_data``. Raises ReverseError when no reverse is configured."""
    reverse = pipeline.cutover.reverse
    if reverse is None:
        raise ReverseError(f"pipelines[{pipeline.name}].cutover.reverse is not set: configure it to use --reverse")
    try:
        source = settings.source(reverse.source)
    except KeyError:
        key = f"pipelines[{pipeline.name}].cutover.reverse.source"
        raise ReverseError(f"{key}: unknown source {reverse.source!r}") from None
    return source.model_copy(update={"snapshot_mode": REVERSE_SNAPSHOT_MODE})


def reverse_connector_config(source: SourceSettings) -> dict[str, str]:
    """:func:`connectors.debezium.build_connector_config` of the reverse source with
    ``snapshot.mode=no_data`` whatever ``connector_overrides`` say. Raises ReverseError."""
    try:
        config = build_connector_config(source)
    except (ConnectorConfigError, ValueError) as exc:
        raise ReverseError(f"reverse connector configuration: {exc}") from None
    config["snapshot.mode"] = REVERSE_SNAPSHOT_MODE
    return config


def start_reverse(settings: Settings, pipeline: PipelineSettings, *, timeout_s: float = 120.0) -> ReverseStarted:
    """Start capturing the new primary for the rollback window (cutover phase
    ``sequences_synced -> reverse_started``).

    1. ``source prepare`` of the reverse source (:func:`connectors.source_prep.prepare`): control
       schema, heartbeat and signal tables, the publication of exactly its tables;
    2. the logical slot, created here (:func:`connectors.slots.create_logical_slot`): from now on
       every committed write on the new primary is kept for the connector;
    3. the reverse connector registered (idempotent ``PUT /connectors/{name}/config``) with
       ``snapshot.mode=no_data``, then waited for until it and its task are RUNNING, at most
       ``timeout_s`` seconds.

    Raises ReverseError (a step failed, the connector FAILED or was not RUNNING in time; what was
    created stays: :func:`stop_reverse` removes it).
    """
    source = reverse_source(settings, pipeline)
    try:
        source_prep.prepare(source)
    except source_prep.PrepareError as exc:
        raise ReverseError(f"preparing the new primary ({source.name}): {exc}") from None
    lsn, created = _create_slot(source)
    config = reverse_connector_config(source)
    name = source.resolved_connector_name
    with ConnectClient(settings.connect) as client:
        try:
            client.apply(name, config)
            status = client.wait_for(name, _settled, timeout_s=timeout_s, interval_s=0.5, stable_s=1.0)
        except ConnectError as exc:
            raise ReverseError(f"registering the reverse connector {name}: {exc}") from None
    if not status.healthy:
        trace = next((t.trace for t in status.tasks if t.trace), status.trace) or ""
        raise ReverseError(
            f"reverse connector {name} is {status.state} "
            f"(tasks: {', '.join(t.state for t in status.tasks) or 'none'}) after {timeout_s:.0f}s"
            + (f": {trace.strip().splitlines()[0][:300]}" if trace.strip() else "")
        )
    started = ReverseStarted(
        name, source.resolved_slot_name, source.resolved_publication_name, format_lsn(lsn), created
    )
    log.info("reverse direction started", pipeline=pipeline.name, **started.to_dict())
    return started


def _settled(status: ConnectorStatus) -> bool:
    return status.healthy or status.failed


def _create_slot(source: SourceSettings) -> tuple[int, bool]:
    try:
        with source_prep.connect(source, "cdc-pipeline cutover reverse") as conn:
            return create_logical_slot(conn, source.resolved_slot_name)
    except (psycopg.Error, ValueError) as exc:
        text = source_prep.redactor(source)(str(exc).strip())
        raise ReverseError(f"creating slot {source.resolved_slot_name} on the new primary: {text}") from None


def stop_reverse(
    settings: Settings,
    pipeline: PipelineSettings,
    started: ReverseStarted | None = None,
    *,
    timeout_s: float = 60.0,
) -> None:
    """Remove the reverse connector and its slot (abort before ``done``; ``cutover finish``).

    ``started`` names what :func:`start_reverse` created; None takes the names from the reverse
    source's settings (a start that failed half-way, a crashed run). The connector is stopped,
    its offsets reset and it is deleted; then the slot is dropped once its WAL sender has let
    go (at most ``timeout_s`` seconds, then that sender is terminated). Absent pieces are skipped,
    so a second call does nothing. The publication and the heartbeat and signal tables stay
    (``cutover finish`` drops them). Raises ReverseError.
    """
    source = reverse_source(settings, pipeline)
    name = started.connector if started is not None else source.resolved_connector_name
    slot = started.slot if started is not None else source.resolved_slot_name
    with ConnectClient(settings.connect) as client:
        try:
            remove_connector(client, name, reset_offsets=True, timeout_s=timeout_s)
        except ConnectError as exc:
            raise ReverseError(f"removing the reverse connector {name}: {exc}") from None
    try:
        with source_prep.connect(source, "cdc-pipeline cutover reverse") as conn:
            drop_slot_when_free(conn, slot, timeout_s=timeout_s / 2)
    except psycopg.Error as exc:
        text = source_prep.redactor(source)(str(exc).strip())
        raise ReverseError(f"dropping slot {slot} on the new primary: {text}") from None
    log.info("reverse direction stopped", pipeline=pipeline.name, connector=name, slot=slot)


def remove_connector(client: ConnectClient, name: str, *, reset_offsets: bool, timeout_s: float = 60.0) -> bool:
    """Delete connector ``name``; True when it existed.

    With ``reset_offsets`` it is first stopped (``PUT /connectors/{name}/stop``, waited for until
    STOPPED, at most ``timeout_s`` seconds) and its offsets deleted (KIP-875, Connect 3.6+; the
    reset needs the connector STOPPED), so a connector created later under the same name starts
    as new. Raises ConnectError.
    """
    try:
        client.status(name)
    except ConnectorNotFoundError:
        return False
    if reset_offsets:
        client.stop(name)
        status = client.wait_for(name, lambda s: s.state == "STOPPED", timeout_s=timeout_s, interval_s=0.5)
        if status.state != "STOPPED":
            raise ConnectError(f"connector {name} is {status.state}, not STOPPED, after {timeout_s:.0f}s")
        client.reset_offsets(name)
    return client.delete(name)
