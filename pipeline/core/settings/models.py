"""The pydantic models of the configuration sections: frozen, unknown keys rejected, secrets as
:class:`pydantic.SecretStr` (readable from ``<secret>_file``). The root document is :mod:`.root`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic.fields import FieldInfo

from pipeline.core.settings.masking import mask_url

Name = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="Lower-case identifier: letters, digits and '_' (used in slot, publication and group names).",
    ),
]
ScalarValue = str | int | float | bool


class _Model(BaseModel):
    """Base of every settings model: frozen, unknown keys rejected, secrets readable from files."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Fill ``<secret>`` from ``<secret>_file`` when only the file is given.

        Raises ValueError when the file cannot be read, naming the file.
        """
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            file_key = f"{name}_file"
            if file_key not in cls.model_fields or not _is_secret(field):
                continue
            path = out.get(file_key)
            if path and out.get(name) is None:
                try:
                    out[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from exc
        return out


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in repr(field.annotation)


class KafkaSettings(_Model):
    """Kafka client settings shared by consumers, producers (DLQ) and admin calls."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret; never logged).")
    sasl_password_file: Path | None = Field(None, description="File holding sasl_password.")
    ssl_ca_location: Path | None = Field(None, description="CA certificate file for TLS.")
    client_properties: dict[str, ScalarValue] = Field(
        default_factory=dict,
        description="Extra librdkafka properties passed through verbatim (e.g. 'socket.timeout.ms').",
    )

    def client_config(self) -> dict[str, str]:
        """librdkafka configuration for confluent-kafka clients, secrets included.

        The result must never be logged; use :meth:`Settings.masked_dump` for display.
        """
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location is not None:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        for key, value in self.client_properties.items():
            conf[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return conf


class ConnectSettings(_Model):
    """Kafka Connect REST endpoint (distributed mode)."""

    url: str = Field("http://127.0.0.1:8083", pattern=r"^https?://", description="REST base URL.")
    username: str | None = Field(None, description="Basic-auth user of the Connect REST API.")
    password: SecretStr | None = Field(None, description="Basic-auth password (secret).")
    password_file: Path | None = Field(None, description="File holding password.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout, seconds.")
    verify_tls: bool = Field(True, description="Verify the REST endpoint's TLS certificate.")


MessageFormat = Literal["json", "avro"]

_CCOMPAT_SUFFIX = "/apis/ccompat/v7"
_APICURIO_V2_SUFFIX = "/apis/registry/v2"


class SchemaRegistrySettings(_Model):
    """A Schema Registry holding the Avro schemas of a source's change topics.

    The pipeline reads schemas through the registry's Confluent-compatible REST API
    (``GET {url}/schemas/ids/{id}``); Kafka Connect's Apicurio ``AvroConverter`` registers them
    through ``converter_url`` (Apicurio's own v2 API). Basic auth and TLS (CA bundle, client
    certificate) apply to the pipeline's requests.
    """

    url: str = Field(
        pattern=r"^https?://",
        description="Confluent-compatible API base URL as the pipeline reaches it, e.g. "
        "'http://registry:8080/apis/ccompat/v7' (Apicurio) or 'http://registry:8081' (Confluent, Karapace).",
    )
    converter_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Apicurio registry API URL for Kafka Connect's AvroConverter; defaults to 'url' with "
        "'/apis/ccompat/v7' replaced by '/apis/registry/v2'.",
    )
    username: str | None = Field(None, description="Basic-auth user.")
    password: SecretStr | None = Field(None, description="Basic-auth password (secret).")
    password_file: Path | None = Field(None, description="File holding password.")
    ca_file: Path | None = Field(None, description="PEM CA bundle that verifies the registry's TLS certificate.")
    cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    verify: bool = Field(True, description="Verify the registry's TLS certificate.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout, seconds.")
    cache_size: int = Field(1000, ge=1, description="Schemas kept in memory (by schema id).")
    converter_properties: dict[str, ScalarValue] = Field(
        default_factory=dict,
        description="Extra converter properties, set as 'key.converter.<k>' and 'value.converter.<k>' "
        "(e.g. 'apicurio.registry.tls.truststore.location').",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file")
        return self

    @property
    def resolved_converter_url(self) -> str:
        """Apicurio registry API URL used by Kafka Connect's ``AvroConverter``.

        Raises ValueError when ``converter_url`` is unset and ``url`` is not an Apicurio
        ``/apis/ccompat/v7`` URL it can be derived from.
        """
        if self.converter_url is not None:
            return self.converter_url
        base = self.url.rstrip("/")
        if base.endswith(_CCOMPAT_SUFFIX):
            return base[: -len(_CCOMPAT_SUFFIX)] + _APICURIO_V2_SUFFIX
        raise ValueError("schema_registry.converter_url: required when url is not an Apicurio '/apis/ccompat/v7' URL")


class BulkLoadSettings(_Model):
    """Bulk initial load (``initial_load: bulk``): parallel COPY from the slot's exported snapshot."""

    jobs: int = Field(4, ge=1, le=32, description="Parallel copy sessions (source and target connections each).")
    chunk_rows: int = Field(
        250_000, ge=1000, description="Rows per ctid range of a large table (estimated from reltuples/relpages)."
    )
    binary: bool = Field(True, description="Binary COPY where every target column type equals the source's.")


class SourceSettings(_Model):
    """One PostgreSQL source database captured by one Debezium PostgreSQL connector."""

    name: Name
    host: str = Field("127.0.0.1", description="PostgreSQL host (as Kafka Connect reaches it).")
    port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    database: str = Field(description="Database captured by the connector.")
    user: str = Field(description="Role with REPLICATION and SELECT on the tables.")
    password: SecretStr | None = Field(None, description="Password of the role (secret).")
    password_file: Path | None = Field(None, description="File holding password.")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="libpq sslmode of our own connections (checks, monitor, snapshots)."
    )
    tables: list[str] = Field(
        min_length=1,
        description="Captured tables as 'schema.table' (split at the first '.'; names are not regexes).",
    )
    topic_prefix: str | None = Field(None, description="Debezium topic.prefix; defaults to the source name.")
    slot_name: str | None = Field(None, description="Replication slot; defaults to 'cdc_<name>'.")
    publication_name: str | None = Field(None, description="Publication; defaults to 'cdc_<name>'.")
    connector_name: str | None = Field(None, description="Kafka Connect connector; defaults to 'cdc-<name>'.")
    snapshot_mode: Literal["initial", "initial_only", "no_data", "when_needed", "always"] = Field(
        "initial", description="Debezium snapshot.mode (PostgreSQL connector 3.x values)."
    )
    initial_load: Literal["snapshot", "bulk"] = Field(
        "snapshot",
        description="How existing rows reach the targets: 'snapshot' (Debezium's snapshot per snapshot_mode) or "
        "'bulk' (cdc-pipeline load run copies them, then the connector streams with snapshot.mode=no_data).",
    )
    bulk_load: BulkLoadSettings = Field(
        default_factory=BulkLoadSettings, description="Bulk initial load tuning (used with initial_load: bulk)."
    )
    heartbeat_interval_ms: int = Field(
        10_000, ge=0, description="Debezium heartbeat.interval.ms; 0 disables heartbeats."
    )
    control_schema: str = Field("cdc", description="Schema of the heartbeat and signal tables.")
    tasks_max: int = Field(1, ge=1, le=1, description="The Debezium PostgreSQL connector runs one task.")
    topic_partitions: int = Field(
        -1, description="Partitions of change topics Connect creates (topic.creation.default.partitions; -1: broker)."
    )
    topic_replication_factor: int = Field(
        -1, description="Replication factor of created change topics (-1: broker default)."
    )
    connector_overrides: dict[str, ScalarValue] = Field(
        default_factory=dict, description="Connector properties set last, over everything built here."
    )
    format: MessageFormat = Field(
        "json", description="Converter of message values (and keys, unless key_format is set): json or avro."
    )
    key_format: MessageFormat | None = Field(None, description="Converter of message keys; defaults to 'format'.")
    schema_registry: SchemaRegistrySettings | None = Field(
        None, description="Schema Registry of the Avro schemas; required when a format is avro."
    )

    @model_validator(mode="after")
    def _check_initial_load(self) -> Self:
        explicit = "snapshot_mode" in self.model_fields_set
        if self.initial_load == "bulk" and explicit and self.snapshot_mode not in ("initial", "no_data"):
            raise ValueError(
                f"snapshot_mode: {self.snapshot_mode!r} conflicts with initial_load: bulk (the bulk load copies the "
                "rows and the connector always starts with snapshot.mode=no_data): drop snapshot_mode, or use "
                "initial_load: snapshot"
            )
        return self

    @model_validator(mode="after")
    def _check_registry(self) -> Self:
        if "avro" in (self.format, self.resolved_key_format) and self.schema_registry is None:
            raise ValueError("schema_registry: required when format or key_format is 'avro' (add its url)")
        if self.schema_registry is not None and "avro" in (self.format, self.resolved_key_format):
            self.schema_registry.resolved_converter_url  # noqa: B018 - raises when it cannot be derived
        return self

    @property
    def resolved_key_format(self) -> MessageFormat:
        """Format of message keys."""
        return self.key_format or self.format

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, tables: list[str]) -> list[str]:
        for table in tables:
            schema, _, name = table.partition(".")
            if not schema or not name:
                raise ValueError(f"table {table!r} must be written 'schema.table' (e.g. 'public.{table}')")
        if len(set(tables)) != len(tables):
            raise ValueError("a table is listed twice")
        return tables

    @property
    def resolved_topic_prefix(self) -> str:
        """Debezium ``topic.prefix``: change topics are ``<prefix>.<schema>.<table>``."""
        return self.topic_prefix or self.name

    @property
    def resolved_slot_name(self) -> str:
        """Replication slot name (PostgreSQL: lower case, digits, underscore)."""
        return self.slot_name or f"cdc_{self.name}"

    @property
    def resolved_publication_name(self) -> str:
        """Publication name used by pgoutput."""
        return self.publication_name or f"cdc_{self.name}"

    @property
    def resolved_connector_name(self) -> str:
        """Kafka Connect connector name."""
        return self.connector_name or f"cdc-{self.name.replace('_', '-')}"


class TargetSettings(_Model):
    """The database a pipeline writes to; the sink is chosen by the URL scheme."""

    url: str = Field(
        description="SQLAlchemy-style URL, e.g. 'postgresql://user@host:5432/db'. A password in it is masked.",
    )
    password: SecretStr | None = Field(None, description="Password, when not in the URL.")
    password_file: Path | None = Field(None, description="File holding password.")
    schema_name: str = Field("public", alias="schema", description="Default target schema.")
    create_tables: bool = Field(True, description="Create missing target tables from the event schema.")
    add_columns: bool = Field(True, description="Add columns that appear in the source.")
    control_schema: str = Field(
        "cdc_control", description="Schema of the pipeline's control tables (offsets, tombstones, truncations)."
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds one target transaction may take before the connection is dropped and the batch"
        " retried (a frozen target must not hang the worker; SQLite: the busy timeout).",
    )
    dropped_columns: Literal["keep", "drop"] = Field(
        "keep",
        description="A column dropped at the source: 'keep' it on the target (nullable, no longer written, recorded"
        " as dropped at source and ignored by verify) or 'drop' it on the target too.",
    )
    versions: Literal["columns", "table"] = Field(
        "columns",
        description="Where each row's source position (the version guard) is kept: 'columns' adds __cdc_commit_lsn"
        " and __cdc_lsn to the target tables (and __cdc_row_id to keyless ones); 'table' keeps positions in the"
        " control schema, keyed by table and primary key, and never alters a user table (a schema pre-created by a"
        " migration tool, the old source of a reverse pipeline).",
    )
    rename_columns: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Rename hints, target table 'schema.table' -> {old column: new column}: when the new column"
        " appears while the old one leaves the events (a source RENAME COLUMN), the new target column is filled"
        " from the old one in the same transaction.",
    )

    @field_serializer("url")
    def _mask_url(self, url: str) -> str:
        return mask_url(url)


class BatchSettings(_Model):
    """Bounds of one consumer batch; whichever is reached first closes it."""

    max_messages: int = Field(5000, ge=1, description="Messages per batch at most.")
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Bytes of message payload.")
    max_wait_ms: int = Field(100, ge=1, description="Milliseconds from the first message of a batch.")


class RetrySettings(_Model):
    """Backoff for transient errors (connection loss, serialization failure, deadlock)."""

    initial_backoff_s: float = Field(0.2, gt=0, description="First backoff, seconds (doubles each retry, with jitter).")
    max_backoff_s: float = Field(30.0, gt=0, description="Largest backoff, seconds.")
    max_elapsed_s: float = Field(600.0, gt=0, description="Retry budget; past it the worker stops without committing.")


class DlqSettings(_Model):
    """Dead-letter queue for poison messages, with limits that stop the worker."""

    topic: str | None = Field(None, description="Defaults to 'cdc.<pipeline>.dlq'.")
    max_consecutive: int = Field(100, ge=1, description="Consecutive dead-lettered messages that stop the worker.")
    max_ratio: float = Field(0.5, gt=0, le=1, description="Dead-lettered share of the last 'ratio_window' messages.")
    ratio_window: int = Field(1000, ge=10, description="Messages over which max_ratio is measured.")


MaskMode = Literal["hash", "redact", "null"]


class TransformRule(_Model):
    """Transforms for the tables whose 'schema.table' matches ``match`` (a shell-style glob)."""

    match: str = Field("*.*", description="Glob over 'schema.table', e.g. 'public.*'.")
    route: str | None = Field(None, description="Target 'schema.table' pattern; '{schema}' and '{table}' are replaced.")
    rename: dict[str, str] = Field(default_factory=dict, description="Source column -> target column.")
    include: list[str] | None = Field(None, description="Only these columns (before renaming).")
    exclude: list[str] = Field(default_factory=list, description="Columns dropped.")
    mask: dict[str, MaskMode] = Field(default_factory=dict, description="Column -> hash | redact | null.")
    ops: list[Literal["c", "u", "d", "r", "t"]] | None = Field(None, description="Keep only these ops.")
    where: str | None = Field(None, description="Simple predicate, e.g. \"status != 'draft'\".")
    add_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column -> constant or '$ts_ms', '$lsn', '$txid', '$op', '$table'.",
    )
    hook: str | None = Field(None, pattern=r"^[\w.]+:\w+$", description="'module:function' for custom code.")


class FenceSettings(_Model):
    """How ``cutover run`` stops application writes on the source, and how an abort lifts that.

    ``read_only`` (the default) sets ``default_transaction_read_only`` for ``roles`` (``ALTER ROLE
    ... IN DATABASE``) or, when ``roles`` is empty, for the whole database (``ALTER DATABASE``),
    then terminates the open sessions of those roles (or of every role but the pipeline's); the
    replication role and the pipeline's own sessions are never touched. ``command`` runs
    ``command`` to fence (e.g. pause a PgBouncer pool) and ``unfence_command`` to lift it.
    """

    method: Literal["read_only", "command"] = Field("read_only", description="read_only or command.")
    roles: list[str] = Field(
        default_factory=list,
        description="Application roles to fence; empty: the whole database (every role but the pipeline's).",
    )
    terminate_sessions: bool = Field(True, description="Terminate the fenced roles' open sessions after the fence.")
    command: list[str] | None = Field(None, description="Fence command (argv) for method 'command'; exit 0 = fenced.")
    unfence_command: list[str] | None = Field(None, description="Command (argv) that lifts the fence (abort).")
    timeout_s: float = Field(30.0, gt=0, description="Seconds a fence or unfence step may take.")

    @model_validator(mode="after")
    def _check_command(self) -> Self:
        if self.method == "command" and (not self.command or not self.unfence_command):
            raise ValueError("command and unfence_command: both required when method is 'command'")
        return self


class ReverseSettings(_Model):
    """The rollback direction started by ``cutover run --reverse``: ``source`` names a 'sources'
    entry describing the new primary (the old target), ``pipeline`` a 'pipelines' entry applying
    its changes to the old source (with ``target.versions: table``)."""

    source: str = Field(description="Name of the 'sources' entry of the new primary.")
    pipeline: str = Field(description="Name of the 'pipelines' entry applying to the old source.")


class PipelineCutover(_Model):
    """Per-pipeline cutover settings: the fence, the sequences and the reverse direction."""

    fence: FenceSettings = Field(default_factory=FenceSettings)
    sequence_margin: int = Field(
        1000, ge=0, description="Added to each source sequence's last_value when it is set on the target."
    )
    sequences: list[str] = Field(
        default_factory=list,
        description="Free-standing sequences 'schema.name' synced too (owned and identity ones are found).",
    )
    reverse: ReverseSettings | None = Field(None, description="The rollback direction; required for --reverse.")


class PipelineSettings(_Model):
    """One pipeline: change topics of one source, applied to one target by one consumer group."""

    name: Name
    source: str = Field(description="Name of an entry of 'sources'.")
    tables: list[str] | None = Field(None, description="Subset of the source's tables; all by default.")
    target: TargetSettings
    consumer_group: str | None = Field(None, description="Defaults to 'cdc.<name>'.")
    value_format: MessageFormat | None = Field(
        None, description="Format of message values; defaults to the source's 'format' and must agree with it."
    )
    key_format: MessageFormat | None = Field(
        None, description="Format of message keys; defaults to the source's key format and must agree with it."
    )
    keyless_mode: Literal["append_dedup"] = Field(
        "append_dedup",
        description="Tables without a primary key: rows keyed by source position, deletes match whole rows.",
    )
    mask_salt: SecretStr | None = Field(None, description="Salt of 'hash' masks.")
    mask_salt_file: Path | None = Field(None, description="File holding mask_salt.")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    transforms: list[TransformRule] = Field(default_factory=list)
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a stopping worker may take to finish or abandon its batch; then it exits."
    )
    cutover: PipelineCutover = Field(default_factory=PipelineCutover)

    @property
    def resolved_consumer_group(self) -> str:
        """Kafka consumer group id of this pipeline's workers."""
        return self.consumer_group or f"cdc.{self.name}"

    @property
    def resolved_dlq_topic(self) -> str:
        """Dead-letter topic of this pipeline."""
        return self.dlq.topic or f"cdc.{self.name}.dlq"


class MonitorSettings(_Model):
    """Replication-slot lag monitor and thresholds used by alerts and throttling."""

    enabled: bool = Field(True, description="Run the slot-lag and connector monitors in the control plane.")
    interval_s: float = Field(15.0, gt=0, description="Seconds between slot polls.")
    wal_rate_window_s: float = Field(300.0, gt=0, description="Sliding window of the WAL rate, seconds.")
    connector_auto_restart: bool = Field(True, description="Restart FAILED connector tasks with backoff.")


class SnapshotConfig(_Model):
    """Snapshot coordinator (incremental snapshots through Debezium signals) and its throttling."""

    interval_s: float = Field(2.0, gt=0, description="Seconds between coordinator polls.")
    max_wal_retained_bytes: int | None = Field(
        1 << 30, ge=0, description="Pause a running incremental snapshot while the slot retains more WAL (bytes)."
    )
    max_consumer_lag: int | None = Field(
        100_000, ge=0, description="Pause it while the pipeline's consumer lag exceeds this (messages)."
    )
    resume_ratio: float = Field(0.8, gt=0, le=1, description="Resume below this share of the thresholds.")
    auto_snapshot_new_tables: bool = Field(True, description="Snapshot tables the connector starts capturing.")
    capture_settle_s: float = Field(10.0, ge=0, description="Seconds a new table must be captured before its snapshot.")
    signal_ack_timeout_s: float = Field(900.0, gt=0, description="Seconds to wait for Debezium to start a request.")
    notification_lookback_s: float = Field(60.0, ge=0, description="Notification history read at start, seconds.")


class VerifyConfig(_Model):
    """Source-vs-target verification and the cutover-readiness signal."""

    chunk_size: int = Field(10_000, ge=1, description="Rows per compared key-ordered chunk.")
    max_wait_s: float = Field(300.0, ge=0, description="Seconds to wait for the pipeline to catch up first.")
    recheck_attempts: int = Field(
        2,
        ge=0,
        description="Rounds of row-by-row rechecks of the differing chunks, each after a catch-up, before rows that"
        " keep changing are locked (at least 2 run: a mismatch needs two conclusive rounds).",
    )
    statement_timeout_s: float = Field(600.0, gt=0, description="Statement timeout of checksum queries, seconds.")
    repair_timeout_s: float = Field(3600.0, gt=0, description="Seconds a --repair may take.")
    schedule_interval_s: float | None = Field(
        None, gt=0, description="Verify every pipeline this often from the control plane (seconds); off when unset."
    )
    numeric_text_exact: bool = Field(
        False,
        description="Compare numeric columns by their text, display scale included (1.50 differs from 1.5), instead"
        " of by value. Debezium drops the trailing zeros of unconstrained numeric (docs/targets.md).",
    )
    hot_key_lock_s: float = Field(
        10.0,
        ge=0,
        description="Rows that keep changing through the rechecks are locked on the source (SELECT ... FOR SHARE,"
        " lock_timeout 3 s) until the target has applied past the lock, for at most this many seconds (writers of"
        " those rows wait meanwhile); 0 never locks and leaves such rows in flight.",
    )
    max_hot_keys: int = Field(1000, ge=1, description="Most source rows of one table locked at once for a recheck.")
    max_reported_rows: int = Field(
        100, ge=1, description="Differing rows listed (key, columns, both values) per table; counts stay complete."
    )


class CutoverConfig(_Model):
    """The cutover gate (also behind ``cdc_cutover_ready``) and the bounds of ``cutover run``."""

    max_lag_s: float = Field(
        5.0,
        gt=0,
        description="The gate needs the heartbeat lag below this (seconds); keep it above the connector's"
        " heartbeat_interval_ms.",
    )
    stable_s: float = Field(60.0, ge=0, description="...continuously for this long (seconds).")
    interval_s: float = Field(15.0, gt=0, description="Seconds between cutover-readiness checks (control plane).")
    verification_max_age_s: float = Field(
        3600.0, gt=0, description="The gate needs a clean verification of every table at most this old (seconds)."
    )
    drain_timeout_s: float = Field(
        120.0, gt=0, description="Seconds the drain may take to reach the fence LSN; past it the cutover aborts."
    )
    final_verify_timeout_s: float = Field(600.0, gt=0, description="Seconds the final verification may take.")


class MetricsSettings(_Model):
    """Prometheus exposition and health endpoints."""

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz.")
    host: str = Field(
        "0.0.0.0",  # noqa: S104 - the endpoint must be reachable from Prometheus
        description="Listen address of the HTTP endpoints.",
    )
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port.")
