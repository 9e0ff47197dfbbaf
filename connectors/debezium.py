"""The Debezium PostgreSQL source connector configuration built from a :class:`SourceSettings`.

Every option name and value here was checked against the Debezium documentation of the
version the project runs (Debezium PostgreSQL connector 3.6.x, "Debezium connector for
PostgreSQL" page, sections "Required Debezium PostgreSQL connector configuration properties"
and "Advanced Debezium PostgreSQL connector configuration properties"; "Signaling and
notifications"; "Customization of Kafka Connect automatic topic creation") and against the
running plugin's ``GET /connector-plugins/{class}/config`` definitions.

Decisions (each one can be overridden per source through ``connector_overrides``, which is
applied last):

- ``publication.autocreate.mode=disabled``: ``cdc-pipeline source prepare`` creates the
  publication for exactly the captured tables plus the heartbeat and signal tables
  (:func:`publication_tables`). The connector role then needs neither table ownership nor
  ``CREATE`` on the database, and no connector restart rewrites the publication behind our
  back ("filtered" runs ``ALTER PUBLICATION ... SET TABLE`` on every start). The cost: after
  changing ``tables`` run ``source prepare`` (``connectors apply`` checks the publication and
  says so; ``connectors apply --prepare`` does both).
- ``signal.enabled.channels=source`` with a per-source signal table
  ``<control_schema>.debezium_signal_<name>``: the table is needed anyway for the default
  incremental-snapshot watermarking (``incremental.snapshot.watermarking.strategy=insert_insert``
  writes window markers into it); a signal is a plain ``INSERT`` in the source database; and the
  Kafka channel would need its own consumer settings (``signal.kafka.bootstrap.servers`` and
  SASL pass-through). "Signaling and notifications": *the signaling data collection must be
  unique to each connector instance*, hence one table per source.
- Heartbeat: ``heartbeat.action.query`` upserts ``(source, ts=now())`` into
  ``<control_schema>.heartbeat`` (one row per source, shared by all sources of a database).
  That table is in ``table.include.list`` and in the publication, so heartbeats flow as change
  events on ``<prefix>.<control_schema>.heartbeat``: they advance the slot on a quiet database
  ("WAL disk space consumption") and give the time-lag measurement a row whose commit time
  (``source.ts_ms``) and ``ts`` are known.
- ``provide.transaction.metadata=true``: BEGIN/END events with per-table event counts go to
  ``<prefix>.transaction`` and every change carries ``transaction.total_order``; the decoder
  skips the transaction topic (``Skip(reason="transaction")``), the verifier and
  transaction-consistent batching can use it. The position (``pipeline.core.events.Position``) does
  not depend on it.
- ``time.precision.mode=adaptive_time_microseconds``: timestamps keep the column's precision
  (``Timestamp``/``MicroTimestamp``; ``timestamptz`` is always an ISO string with zone) and
  every ``TIME`` is ``MicroTime`` whatever its declared precision, so decoders have one exact
  representation for it. (Debezium 3.6's default is ``adaptive``, which is exact too.)
- ``interval.handling.mode=string``: ISO 8601 durations; the default ``numeric`` approximates
  months as 30.4375 days and is lossy.
- ``poll.interval.ms=100`` (default 500): the connector hands change events to Connect five
  times as often, the largest single cut in commit-to-apply latency we measured.
- ``include.unknown.datatypes=true``: a column of a type Debezium does not know is sent as
  bytes instead of being silently dropped from the event.
- Avro instead of JSON when the source's ``format``/``key_format`` say so: Apicurio's
  ``AvroConverter`` writing the Confluent wire format (see
  :func:`converter_config`), with ``schema.name.adjustment.mode=avro``.
- JSON converters with schemas; ``replace.null.with.default=false`` so a NULL in a column that
  has a DEFAULT stays NULL (Kafka ``JsonConverter`` option, Kafka 3.8+); decimals as
  ``BASE64`` bytes with their scale (exact with any JSON parser).
- Topics created by Connect (``topic.creation.default.*``) with the broker's default
  replication factor and partition count (``-1``) unless given; the metadata topics
  (transaction, notifications, Debezium heartbeat) go to a one-partition group so their order
  is total.
- ``errors.max.retries=10`` ("Advanced ... properties"): Debezium classifies any SQL error
  while streaming as retriable, and the default ``-1`` restarts the task forever while Connect
  reports it RUNNING (observed: a dropped heartbeat table). Bounded, the task turns FAILED
  after about 10 x ``retriable.restart.connector.wait.ms`` (10 s) and shows in
  ``connectors status``. Note: a failure while the task *starts* (wrong password, database
  down) is retried without limit by ``BaseSourceTask`` whatever this says, and reported
  RUNNING; a wrong password is caught earlier by validation, and slot activity / heartbeat lag
  are what reveal a task stuck starting.
- ``offset.mismatch.strategy=trust_offset`` (new in 3.6.3; "Technology Preview" in Red Hat's
  product docs): on start, a stored offset behind the slot's ``confirmed_flush_lsn`` (slot
  dropped and recreated, or advanced by hand) fails the task instead of streaming on from the
  slot and silently skipping the gap (the default ``no_validation`` does that on PostgreSQL 15+).
- ``snapshot.mode``: Debezium 3.x removed ``never`` (use ``no_data``, which it maps to) and
  PostgreSQL has no ``recovery`` (rejected); see :func:`resolved_snapshot_mode`.

Names: :func:`table_regex` turns a table name into the anchored, case-sensitive Java regex
Debezium expects in ``table.include.list``; :func:`collection_id` writes a name for
``signal.data.collection`` (``<schemaName>.<tableName>`` for PostgreSQL, parts double-quoted
when needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from psycopg import sql

from pipeline.core.settings.masking import MASK
from pipeline.core.settings.models import MessageFormat, ScalarValue, SourceSettings

POSTGRES_CONNECTOR_CLASS: Final = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER: Final = "org.apache.kafka.connect.json.JsonConverter"
APICURIO_AVRO_CONVERTER: Final = "io.apicurio.registry.utils.converter.AvroConverter"

HEARTBEAT_TABLE: Final = "heartbeat"
SIGNAL_TABLE_PREFIX: Final = "debezium_signal_"

# Debezium 3.6 PostgreSQL ``snapshot.mode`` values ("Snapshots", "snapshot mode options").
# ``never`` was renamed ``no_data`` (Debezium 2.x deprecation, removed in 3.0); ``recovery``
# only exists for connectors with a schema history (MySQL, SQL Server...), not PostgreSQL.
_SNAPSHOT_MODE_ALIASES: Final = {"never": "no_data"}
_SNAPSHOT_MODES: Final = frozenset(
    {"initial", "initial_only", "no_data", "when_needed", "always", "configuration_based", "custom"}
)

_SECRET_KEY = re.compile(
    r"password|secret|token|sasl\.jaas\.config|basic\.auth\.user\.info|credentials|connection\.?string",
    re.IGNORECASE,
)


class ConnectorConfigError(ValueError):
    """Settings that cannot be turned into a valid Debezium configuration (message names the key)."""


@dataclass(frozen=True, slots=True, order=True)
class TableRef:
    """A PostgreSQL table ``schema.table`` with its exact (unquoted, case-sensitive) names."""

    schema: str
    table: str

    @classmethod
    def parse(cls, text: str) -> TableRef:
        """Split ``schema.table`` at the first ``.`` (the settings' convention; no quoting).

        Raises ConnectorConfigError when either part is empty.
        """
        schema, _, table = text.partition(".")
        if not schema or not table:
            raise ConnectorConfigError(f"table {text!r} must be written 'schema.table'")
        return cls(schema, table)

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"

    def identifier(self) -> sql.Identifier:
        """The quoted SQL identifier (``psycopg.sql``)."""
        return sql.Identifier(self.schema, self.table)


# --------------------------------------------------------------------------- names


def captured_tables(source: SourceSettings) -> list[TableRef]:
    """The source's ``tables`` as :class:`TableRef`, in settings order, duplicates removed."""
    seen: dict[TableRef, None] = {}
    for text in source.tables:
        seen.setdefault(TableRef.parse(text), None)
    return list(seen)


def heartbeat_table(source: SourceSettings) -> TableRef:
    """``<control_schema>.heartbeat``: one row per source, ``(source text PK, ts timestamptz)``."""
    return TableRef(source.control_schema, HEARTBEAT_TABLE)


def signal_table(source: SourceSettings) -> TableRef:
    """``<control_schema>.debezium_signal_<name>``, this source's Debezium signaling table.

    Columns ``id varchar(42) PK, type varchar(32) NOT NULL, data varchar(2048)`` ("Signaling
    and notifications", "Structure of a signaling data collection").
    """
    return TableRef(source.control_schema, f"{SIGNAL_TABLE_PREFIX}{source.name}")


def publication_tables(source: SourceSettings) -> list[TableRef]:
    """Every table the publication must hold: captured tables, heartbeat and signal tables."""
    tables = captured_tables(source)
    for extra in (heartbeat_table(source), signal_table(source)):
        if extra not in tables:
            tables.append(extra)
    return tables


def notification_topic(source: SourceSettings) -> str:
    """``__debezium-notification.<topic prefix>``: where the ``sink`` channel writes notifications.

    Named like Debezium's heartbeat topic (``heartbeat.topics.prefix`` + ``.`` + prefix).
    """
    return f"__debezium-notification.{source.resolved_topic_prefix}"


def transaction_topic(source: SourceSettings) -> str:
    """``<topic prefix>.transaction``: Debezium's transaction metadata topic ("Transaction metadata")."""
    return f"{source.resolved_topic_prefix}.transaction"


def debezium_heartbeat_topic(source: SourceSettings) -> str:
    """``__debezium-heartbeat.<topic prefix>``: Debezium's own heartbeat messages (default prefix)."""
    return f"__debezium-heartbeat.{source.resolved_topic_prefix}"


_TOPIC_INVALID = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC_LENGTH: Final = 249


def change_topic(source: SourceSettings, table: TableRef) -> str:
    """``<topic prefix>.<schema>.<table>``, the change topic of ``table`` (Debezium "Topic names").

    As Debezium's ``AbstractTopicNamingStrategy.sanitizedTopicName``: every character outside
    ``[A-Za-z0-9._-]`` becomes ``_`` and the name is cut at 249 characters.
    """
    name = _TOPIC_INVALID.sub("_", f"{source.resolved_topic_prefix}.{table.schema}.{table.table}")
    return name[:MAX_TOPIC_LENGTH]


def topic_pattern(source: SourceSettings) -> str:
    """librdkafka regex subscription for every change topic of the source
    (``<topic.prefix>.<schema>.<table>``), so tables added later are picked up."""
    return "^" + re.escape(source.resolved_topic_prefix).replace("\\-", "-") + r"\..+"


def java_regex_literal(text: str) -> str:
    """A Java regex matching exactly ``text``, written so Debezium's list splitter keeps it whole.

    Debezium splits ``*.include.list`` values at unescaped commas and turns ``\\,`` back into
    ``,``, trimming each item (``io.debezium.util.Strings.RegExSplitter``). So: ASCII letters,
    digits and ``_`` stay; a comma becomes ``\\,``; whitespace and control characters become
    ``\\xHH`` (a trailing ``\\ `` would be trimmed); every other ASCII character gets a
    backslash (Java: "a backslash may be used prior to a non-alphabetic character"); non-ASCII
    characters are never regex syntax and stay as they are.
    """
    out: list[str] = []
    for ch in text:
        if not ch.isascii() or ch.isalnum() or ch == "_":
            out.append(ch)
        elif ch == ",":
            out.append("\\,")
        elif ch.isspace() or not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append("\\" + ch)
    return "".join(out)


def table_regex(table: TableRef) -> str:
    """The ``table.include.list`` entry matching exactly ``table``.

    Debezium matches each entry as an anchored regex against ``<schema>.<table>`` with
    ``Pattern.CASE_INSENSITIVE`` (``io.debezium.function.Predicates.includes``), so the entry
    starts with ``(?-i)`` to make ``public.Foo`` not also capture ``public.foo``.
    """
    return f"(?-i){java_regex_literal(table.schema)}\\.{java_regex_literal(table.table)}"


_NEEDS_QUOTES = re.compile(r"[.\s\"'`,]")


def collection_id(table: TableRef) -> str:
    """``schema.table`` for ``signal.data.collection`` (PostgreSQL: ``<schemaName>.<tableName>``).

    Parts holding ``.``, whitespace or a quote character are double-quoted with ``"`` doubled
    (Debezium ``TableIdParser``). Raises ConnectorConfigError for a comma: Connect splits LIST
    values at commas with no escape.
    """
    parts: list[str] = []
    for part in (table.schema, table.table):
        if "," in part:
            raise ConnectorConfigError(f"signal table name {table} must not contain ','")
        parts.append('"' + part.replace('"', '""') + '"' if _NEEDS_QUOTES.search(part) else part)
    return ".".join(parts)


def heartbeat_query(source: SourceSettings) -> str:
    """The ``heartbeat.action.query``: upsert this source's row with ``now()``.

    ``INSERT INTO <schema>.heartbeat (source, ts) VALUES ('<name>', now())
    ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts`` with quoted identifiers.
    """
    table = heartbeat_table(source)
    query = sql.SQL(
        "INSERT INTO {table} (source, ts) VALUES ({name}, now()) ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts"
    ).format(table=table.identifier(), name=sql.Literal(source.name))
    return query.as_string(None)


def resolved_snapshot_mode(source: SourceSettings) -> str:
    """``snapshot.mode`` for Debezium 3.6: ``never`` maps to ``no_data``; a source with
    ``initial_load: bulk`` is always ``no_data`` (``cdc-pipeline load run`` copied the rows from the
    slot's exported snapshot, so streaming starts at the slot's consistent point).

    Raises ConnectorConfigError for ``recovery`` (not a PostgreSQL mode).
    """
    if source.initial_load == "bulk":
        return "no_data"
    mode = _SNAPSHOT_MODE_ALIASES.get(source.snapshot_mode, source.snapshot_mode)
    if mode not in _SNAPSHOT_MODES:
        raise ConnectorConfigError(
            f"sources[{source.name}].snapshot_mode: {source.snapshot_mode!r} is not a Debezium PostgreSQL "
            f"snapshot mode (use one of {', '.join(sorted(_SNAPSHOT_MODES))})"
        )
    return mode


# --------------------------------------------------------------------------- the config


def build_connector_config(
    source: SourceSettings,
    *,
    topic_partitions: int | None = None,
    topic_replication_factor: int | None = None,
) -> dict[str, str]:
    """The complete Debezium PostgreSQL connector configuration for ``source``.

    Returns ``{property: string value}`` as ``PUT /connectors/{name}/config`` takes it (the
    ``name`` key is not included), with the password in clear: pass it to Kafka Connect only,
    and show :func:`mask_config` of it anywhere else. ``topic_partitions`` and
    ``topic_replication_factor`` set ``topic.creation.default.*`` (``-1``: the broker's
    default); they default to ``source.topic_partitions`` / ``source.topic_replication_factor``.
    ``connector_overrides`` are applied last, verbatim (booleans as ``true``/``false``).

    Raises ConnectorConfigError for settings Debezium 3.6 cannot take (see
    :func:`resolved_snapshot_mode`, :func:`collection_id`).
    """
    if topic_partitions is None:
        topic_partitions = source.topic_partitions
    if topic_replication_factor is None:
        topic_replication_factor = source.topic_replication_factor
    prefix = source.resolved_topic_prefix
    include = [table_regex(t) for t in captured_tables(source)]
    hb = heartbeat_table(source)
    if hb not in captured_tables(source):
        include.append(table_regex(hb))
    meta_topics = [transaction_topic(source), notification_topic(source), debezium_heartbeat_topic(source)]

    config: dict[str, str] = {
        # "Required Debezium PostgreSQL connector configuration properties"
        "connector.class": POSTGRES_CONNECTOR_CLASS,
        "tasks.max": str(source.tasks_max),
        "plugin.name": "pgoutput",
        "database.hostname": source.host,
        "database.port": str(source.port),
        "database.user": source.user,
        "database.dbname": source.database,
        "database.sslmode": source.sslmode,
        "topic.prefix": prefix,
        "slot.name": source.resolved_slot_name,
        "slot.drop.on.stop": "false",
        "publication.name": source.resolved_publication_name,
        "publication.autocreate.mode": "disabled",
        "table.include.list": ",".join(include),
        "snapshot.mode": resolved_snapshot_mode(source),
        "skipped.operations": "none",
        "tombstones.on.delete": "true",
        "column.propagate.source.type": ".*",
        "decimal.handling.mode": "precise",
        "time.precision.mode": "adaptive_time_microseconds",
        "interval.handling.mode": "string",
        "include.unknown.datatypes": "true",
        "provide.transaction.metadata": "true",
        # How long the task waits for new change events before a poll returns (Debezium default
        # 500 ms): measured commit-to-apply p50 623 ms / p99 1,028 ms at 100 vs 1,635 / 2,583 ms
        # at the default (docs/benchmarks.md, bench/e2e_latency.py).
        "poll.interval.ms": "100",
        # Retriable errors (connection loss, failed login) restart the task at most this many
        # times, retriable.restart.connector.wait.ms (10 s) apart; then the task is FAILED and
        # shows in `connectors status` (the default -1 retries forever while reporting RUNNING).
        "errors.max.retries": "10",
        # On start, fail when the stored offset is behind the slot (slot dropped and recreated,
        # or advanced by hand) instead of streaming on and silently skipping the gap (3.6.3,
        # "offset.mismatch.strategy"; the default no_validation starts from the slot on PG 15+).
        "offset.mismatch.strategy": "trust_offset",
        # "Signaling and notifications"
        "signal.enabled.channels": "source",
        "signal.data.collection": collection_id(signal_table(source)),
        "notification.enabled.channels": "sink",
        "notification.sink.topic.name": notification_topic(source),
        # Kafka Connect converters (JsonConverterConfig, or Apicurio's AvroConverter)
        **converter_config("key", source.resolved_key_format, source),
        **converter_config("value", source.format, source),
        # "Customization of Kafka Connect automatic topic creation" (-1: broker default)
        "topic.creation.default.replication.factor": str(topic_replication_factor),
        "topic.creation.default.partitions": str(topic_partitions),
        "topic.creation.groups": "cdcmeta",
        "topic.creation.cdcmeta.include": ",".join(java_regex_literal(t) for t in meta_topics),
        "topic.creation.cdcmeta.partitions": "1",
    }
    if "avro" in (source.format, source.resolved_key_format):
        # Avro schema names must match [A-Za-z_][A-Za-z0-9_]* per dot-separated part: adjust
        # Debezium's schema names (e.g. a topic prefix with '-'). Column names are NOT adjusted:
        # an invalid one fails the task visibly instead of renaming the target column silently.
        config["schema.name.adjustment.mode"] = "avro"
    if source.password is not None:
        config["database.password"] = source.password.get_secret_value()
    if source.heartbeat_interval_ms > 0:
        config["heartbeat.interval.ms"] = str(source.heartbeat_interval_ms)
        config["heartbeat.action.query"] = heartbeat_query(source)
    for key, value in source.connector_overrides.items():
        config[key] = _prop(value)
    return config


def converter_config(side: Literal["key", "value"], fmt: MessageFormat, source: SourceSettings) -> dict[str, str]:
    """The ``<side>.converter*`` properties of a connector writing ``fmt`` (``json``/``avro``).

    ``json``: Kafka's ``JsonConverter`` with schemas (see the module docstring; unchanged by
    the Avro support). ``avro``: Apicurio Registry's ``AvroConverter`` (2.x converter, in
    ``plugins/apicurio-converter`` of the local stack) configured for the Confluent wire format
    (magic byte 0, 4-byte schema id, Avro binary; no Kafka headers), which any
    Confluent-compatible reader decodes (source: Apicurio ``SerdeConfig`` 2.6.13):

    - ``apicurio.registry.url``: the registry's v2 API (``schema_registry.resolved_converter_url``);
    - ``apicurio.registry.auto-register=true``, ``find-latest=true``: new schema versions
      (ADD COLUMN) are registered by the connector as they appear;
    - ``apicurio.registry.as-confluent=true`` (``Legacy4ByteIdHandler``: 4-byte id) with
      ``apicurio.registry.use-id=contentId``: the id is the content id, which is what
      Apicurio 3's ``/apis/ccompat/v7/schemas/ids/{id}`` resolves (``legacy-id-mode`` off);
    - ``apicurio.registry.headers.enabled=false``: the id is in the payload, not in headers;
    - ``apicurio.auth.username``/``apicurio.auth.password`` from the registry settings;
    - ``schema_registry.converter_properties`` last, verbatim.

    Raises ValueError when ``fmt`` is avro and the source has no ``schema_registry``.
    """
    prefix = f"{side}.converter"
    if fmt == "json":
        return {
            prefix: JSON_CONVERTER,
            f"{prefix}.schemas.enable": "true",
            f"{prefix}.replace.null.with.default": "false",
            f"{prefix}.decimal.format": "BASE64",
        }
    registry = source.schema_registry
    if registry is None:
        raise ValueError(f"source {source.name!r}: {side} format avro needs schema_registry")
    props = {
        prefix: APICURIO_AVRO_CONVERTER,
        f"{prefix}.apicurio.registry.url": registry.resolved_converter_url,
        f"{prefix}.apicurio.registry.auto-register": "true",
        f"{prefix}.apicurio.registry.find-latest": "true",
        f"{prefix}.apicurio.registry.as-confluent": "true",
        f"{prefix}.apicurio.registry.use-id": "contentId",
        f"{prefix}.apicurio.registry.headers.enabled": "false",
    }
    if registry.username is not None:
        props[f"{prefix}.apicurio.auth.username"] = registry.username
    if registry.password is not None:
        props[f"{prefix}.apicurio.auth.password"] = registry.password.get_secret_value()
    for key, value in registry.converter_properties.items():
        props[f"{prefix}.{key}"] = _prop(value)
    return props


def _prop(value: ScalarValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- secrets


def is_secret_key(key: str) -> bool:
    """True for a connector property holding a secret (any key containing ``password``, ``secret``...)."""
    return bool(_SECRET_KEY.search(key))


def mask_config(config: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``config`` with the value of every secret key (:func:`is_secret_key`) masked."""
    return {k: (MASK if is_secret_key(k) and v else v) for k, v in config.items()}


def secret_values(config: Mapping[str, str]) -> set[str]:
    """The non-empty values of the secret keys of ``config`` (for :class:`Redactor`)."""
    return {v for k, v in config.items() if is_secret_key(k) and v}


class Redactor:
    """Removes known secret values from free text (Connect error messages, task traces).

    Secrets shorter than 4 characters are not searched for (they would mask ordinary words);
    keys are masked by :func:`mask_config` regardless.
    """

    def __init__(self, secrets: set[str] | None = None) -> None:
        self._secrets: set[str] = set()
        for secret in secrets or ():
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember ``secret`` (ignored when None or shorter than 4 characters)."""
        if secret is not None and len(secret) >= 4:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        """``text`` with every remembered secret replaced by the mask (longest first)."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text
