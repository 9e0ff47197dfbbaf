"""Debezium connector config builder, Java-regex escaping, secret masking, and the Connect
REST client against a mock transport (no Kafka Connect needed)."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.connect_client import (
    ApplyAction,
    ConnectClient,
    ConnectError,
    ConnectorNotFoundError,
    ConnectUnavailableError,
    RetryPolicy,
)
from connectors.debezium import (
    ConnectorConfigError,
    Redactor,
    TableRef,
    build_connector_config,
    change_topic,
    collection_id,
    heartbeat_query,
    java_regex_literal,
    mask_config,
    publication_tables,
    signal_table,
    table_regex,
)
from pipeline.core.settings.masking import MASK
from pipeline.core.settings.models import ConnectSettings, SourceSettings

PASSWORD = "s3cr3t-Pa55word"


def source(**overrides: Any) -> SourceSettings:
    data: dict[str, Any] = {
        "name": "app",
        "host": "db.internal",
        "port": 5433,
        "database": "shop",
        "user": "debezium",
        "password": PASSWORD,
        "tables": ["public.orders", "sales.Line Items"],
    }
    data.update(overrides)
    return SourceSettings(**data)


# --------------------------------------------------------------------------- Debezium's list splitting, emulated


JAVA_TRIM = "".join(chr(c) for c in range(0x21))  # java.lang.String.trim() removes chars <= U+0020


def debezium_patterns(value: str) -> list[re.Pattern[str]]:
    """What Debezium compiles from an ``*.include.list`` value (``Strings.RegExSplitter`` then
    ``Pattern.compile(item, CASE_INSENSITIVE)``), translated to Python ``re``.

    Split at commas not escaped by a backslash (a backslash skips the next character), trim
    each item (Java ``String.trim``), turn ``\\,`` into ``,``; a leading ``(?-i)`` turns case-insensitivity off.
    """
    items: list[str] = []
    start, i = 0, 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == ",":
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    patterns = []
    for item in items:
        text = item.strip(JAVA_TRIM).replace("\\,", ",")
        if not text:
            continue
        flags = re.IGNORECASE
        if text.startswith("(?-i)"):
            text, flags = text[len("(?-i)") :], 0
        patterns.append(re.compile(text, flags))
    return patterns


def captured_by(value: str, identifier: str) -> bool:
    return any(p.fullmatch(identifier) for p in debezium_patterns(value))


# --------------------------------------------------------------------------- config builder


def test_config_has_the_documented_options() -> None:
    config = build_connector_config(source())
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["plugin.name"] == "pgoutput"
    assert config["database.hostname"] == "db.internal"
    assert config["database.port"] == "5433"
    assert config["database.dbname"] == "shop"
    assert config["database.user"] == "debezium"
    assert config["database.password"] == PASSWORD
    assert config["topic.prefix"] == "app"
    assert config["slot.name"] == "cdc_app"
    assert config["publication.name"] == "cdc_app"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["snapshot.mode"] == "initial"
    assert config["skipped.operations"] == "none"
    assert config["tombstones.on.delete"] == "true"
    assert config["column.propagate.source.type"] == ".*"
    assert config["decimal.handling.mode"] == "precise"
    assert config["time.precision.mode"] == "adaptive_time_microseconds"
    assert config["provide.transaction.metadata"] == "true"
    assert config["signal.enabled.channels"] == "source"
    assert config["signal.data.collection"] == "cdc.debezium_signal_app"
    assert config["notification.enabled.channels"] == "sink"
    assert config["notification.sink.topic.name"] == "__debezium-notification.app"
    assert config["heartbeat.interval.ms"] == "10000"
    for side in ("key", "value"):
        assert config[f"{side}.converter"] == "org.apache.kafka.connect.json.JsonConverter"
        assert config[f"{side}.converter.schemas.enable"] == "true"
        assert config[f"{side}.converter.replace.null.with.default"] == "false"
    assert config["topic.creation.default.partitions"] == "-1"
    assert config["topic.creation.default.replication.factor"] == "-1"
    assert "name" not in config
    assert all(isinstance(v, str) for v in config.values())


def test_heartbeat_table_is_captured_and_published() -> None:
    src = source()
    include = build_connector_config(src)["table.include.list"]
    assert captured_by(include, "public.orders")
    assert captured_by(include, "sales.Line Items")
    assert captured_by(include, "cdc.heartbeat")
    assert not captured_by(include, "cdc.debezium_signal_app")  # Debezium adds the signal table itself
    assert [str(t) for t in publication_tables(src)] == [
        "public.orders",
        "sales.Line Items",
        "cdc.heartbeat",
        "cdc.debezium_signal_app",
    ]


def test_heartbeat_query_upserts_this_sources_row_with_quoted_names() -> None:
    query = heartbeat_query(source(control_schema="Ctl Schema"))
    assert query == (
        'INSERT INTO "Ctl Schema"."heartbeat" (source, ts) VALUES (\'app\', now()) '
        "ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts"
    )
    assert "heartbeat.action.query" not in build_connector_config(source(heartbeat_interval_ms=0))
    assert "heartbeat.interval.ms" not in build_connector_config(source(heartbeat_interval_ms=0))


def test_overrides_come_last_and_booleans_are_lower_case() -> None:
    config = build_connector_config(
        source(
            connector_overrides={"snapshot.mode": "no_data", "provide.transaction.metadata": False, "max.batch.size": 4}
        ),
        topic_partitions=6,
        topic_replication_factor=3,
    )
    assert config["snapshot.mode"] == "no_data"
    assert config["provide.transaction.metadata"] == "false"
    assert config["max.batch.size"] == "4"
    assert config["topic.creation.default.partitions"] == "6"
    assert config["topic.creation.default.replication.factor"] == "3"


def test_snapshot_modes_of_debezium_3() -> None:
    # Settings only accept Debezium 3.x PostgreSQL modes; the builder still maps or rejects
    # the old names for sources built without validation.
    with pytest.raises(ValueError, match="snapshot_mode"):
        source(snapshot_mode="never")
    legacy = source().model_copy(update={"snapshot_mode": "never"})
    assert build_connector_config(legacy)["snapshot.mode"] == "no_data"
    with pytest.raises(ConnectorConfigError, match="recovery"):
        build_connector_config(source().model_copy(update={"snapshot_mode": "recovery"}))
    assert build_connector_config(source(topic_partitions=4))["topic.creation.default.partitions"] == "4"


def test_metadata_topics_get_one_partition() -> None:
    config = build_connector_config(source(topic_prefix="shop-1"))
    assert config["topic.creation.groups"] == "cdcmeta"
    patterns = [re.compile(p) for p in config["topic.creation.cdcmeta.include"].split(",")]
    for topic in ("shop-1.transaction", "__debezium-notification.shop-1", "__debezium-heartbeat.shop-1"):
        assert any(p.fullmatch(topic) for p in patterns), topic
    assert not any(p.fullmatch("shop-1.public.orders") for p in patterns)
    assert config["topic.creation.cdcmeta.partitions"] == "1"


def test_change_topic_is_sanitized_like_debezium() -> None:
    assert change_topic(source(), TableRef("sales", "Line Items")) == "app.sales.Line_Items"
    assert change_topic(source(), TableRef("public", "orders")) == "app.public.orders"


# --------------------------------------------------------------------------- regex escaping


@pytest.mark.parametrize(
    ("schema", "table"),
    [
        ("public", "orders"),
        ("public", "Orders"),
        ("my.schema", "t.a.b"),
        ("public", "with space"),
        ("public", " lead and trail "),
        ("public", 'quote"d'),
        ("public", "comma,name"),
        ("public", "back\\slash,"),
        ("public", "regex.*+?[](){}|^$"),
        ("sch", "ümlaut_表"),
        ("public", "tab\tnew\nline"),
    ],
)
def test_table_regex_matches_exactly_that_table(schema: str, table: str) -> None:
    value = table_regex(TableRef(schema, table))
    patterns = debezium_patterns(value)
    assert len(patterns) == 1, value
    assert captured_by(value, f"{schema}.{table}")
    assert not captured_by(value, f"{schema}.{table}x")
    assert not captured_by(value, f"{schema}x{table}")
    if f"{schema}.{table}".swapcase() != f"{schema}.{table}":
        assert not captured_by(value, f"{schema}.{table}".swapcase())


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(names, names, names, names)
def test_include_list_captures_exactly_the_listed_tables(s1: str, t1: str, s2: str, t2: str) -> None:
    value = ",".join(table_regex(TableRef(s, t)) for s, t in ((s1, t1), (s2, t2)))
    assert len(debezium_patterns(value)) == 2
    assert captured_by(value, f"{s1}.{t1}")
    assert captured_by(value, f"{s2}.{t2}")
    other = f"{s1}.{t1}_"
    if other != f"{s2}.{t2}":
        assert not captured_by(value, other)


def test_regex_literal_escapes_only_what_is_needed() -> None:
    assert java_regex_literal("orders_2024") == "orders_2024"
    assert java_regex_literal("a.b") == "a\\.b"
    assert java_regex_literal("a b") == "a\\x20b"
    assert java_regex_literal("a,b") == "a\\,b"


def test_signal_collection_quotes_parts_when_needed() -> None:
    assert collection_id(TableRef("cdc", "debezium_signal_app")) == "cdc.debezium_signal_app"
    assert collection_id(TableRef("my.ctl", 'x"y')) == '"my.ctl"."x""y"'
    with pytest.raises(ConnectorConfigError):
        collection_id(TableRef("a,b", "t"))
    assert signal_table(source(control_schema="ops")) == TableRef("ops", "debezium_signal_app")


# --------------------------------------------------------------------------- masking


def test_mask_config_masks_every_secret_key() -> None:
    config = build_connector_config(
        source(connector_overrides={"database.sslpassword": "kp", "signal.consumer.sasl.jaas.config": "jaas"})
    )
    masked = mask_config(config)
    assert masked["database.password"] == MASK
    assert masked["database.sslpassword"] == MASK
    assert masked["signal.consumer.sasl.jaas.config"] == MASK
    assert masked["database.user"] == "debezium"
    assert PASSWORD not in json.dumps(masked)


def test_redactor_removes_known_secrets_longest_first() -> None:
    red = Redactor({PASSWORD, "abc"})
    red.add("s3cr3t")
    assert red(f"auth failed with {PASSWORD} and s3cr3t") == f"auth failed with {MASK} and {MASK}"
    assert red("abc stays: too short to search for") == "abc stays: too short to search for"


# --------------------------------------------------------------------------- Connect client (mock transport)


Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, sleeps: list[float] | None = None, **connect: Any) -> ConnectClient:
    recorded = sleeps if sleeps is not None else []
    return ConnectClient(
        ConnectSettings(url="http://connect:8083", **connect),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=2, max_elapsed_s=30),
        sleep=recorded.append,
        rng=random.Random(7),
    )


def test_apply_creates_then_reports_unchanged_without_a_put() -> None:
    stored: dict[str, str] = {}
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "GET":
            if not stored:
                return httpx.Response(404, json={"error_code": 404, "message": "Connector c1 not found"})
            return httpx.Response(200, json={**stored, "name": "c1"})
        created = not stored
        stored.clear()
        stored.update(json.loads(request.content))
        return httpx.Response(201 if created else 200, json={"name": "c1", "config": stored, "tasks": []})

    config = build_connector_config(source())
    with client_for(handler) as client:
        first = client.apply("c1", config)
        second = client.apply("c1", config)
        third = client.apply("c1", {**config, "snapshot.mode": "no_data", "database.password": "new-Password-1"})
    assert first.action is ApplyAction.CREATED
    assert second.action is ApplyAction.UNCHANGED
    assert third.action is ApplyAction.UPDATED
    assert third.changed_keys == ("database.password", "snapshot.mode")
    assert calls.count("PUT /connectors/c1/config") == 2


def test_409_is_retried_with_bounded_jittered_backoff() -> None:
    answers = iter([409, 409, 200])
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(answers)
        if code == 409:
            return httpx.Response(409, json={"error_code": 409, "message": "Cannot complete request: rebalance"})
        return httpx.Response(200, json=["a", "b"])

    with client_for(handler, sleeps) as client:
        assert client.list_connectors() == ["a", "b"]
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5
    assert 0 <= sleeps[1] <= 1.0


def test_connection_errors_give_up_after_the_budget() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sleeps: list[float] = []
    with client_for(handler, sleeps) as client, pytest.raises(ConnectUnavailableError, match="4 attempt"):
        client.status("c1")
    assert len(sleeps) == 3
    assert all(s <= 2 for s in sleeps)


def test_errors_are_typed_and_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(404, json={"error_code": 404, "message": "No status found for connector c1"})
        return httpx.Response(400, json={"error_code": 400, "message": f"bad value {PASSWORD} for database.password"})

    with client_for(handler) as client:
        with pytest.raises(ConnectorNotFoundError):
            client.status("c1")
        with pytest.raises(ConnectError) as info:
            client.put_config("c1", {"connector.class": "X", "database.password": PASSWORD})
    assert info.value.status_code == 400
    assert PASSWORD not in str(info.value)
    assert MASK in str(info.value)


def test_validate_reports_errors_per_field() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["body"] = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "name": "io.debezium.connector.postgresql.PostgresConnector",
                "error_count": 2,
                "groups": [],
                "configs": [
                    {
                        "definition": {},
                        "value": {
                            "name": "database.hostname",
                            "value": "h",
                            "errors": [f"Error while validating connector config: password {PASSWORD} rejected"],
                        },
                    },
                    {"definition": {}, "value": {"name": "slot.name", "value": "", "errors": ["Invalid slot"]}},
                    {"definition": {}, "value": {"name": "topic.prefix", "value": "p", "errors": []}},
                ],
            },
        )

    config = build_connector_config(source())
    with client_for(handler) as client:
        result = client.validate(config, name="c1")
    assert seen["path"] == "/connector-plugins/io.debezium.connector.postgresql.PostgresConnector/config/validate"
    assert seen["body"]["name"] == "c1"
    assert not result.ok
    assert [e.key for e in result.errors] == ["database.hostname", "slot.name"]
    assert PASSWORD not in result.errors[0].messages[0]


def test_status_restart_and_lifecycle_requests() -> None:
    requests: list[str] = []
    trace = f"org.postgresql.util.PSQLException: FATAL: password {PASSWORD}\n\tat x.y(Z.java:1)"

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}?{request.url.query.decode()}".rstrip("?"))
        if request.url.path.endswith("/status"):
            return httpx.Response(
                200,
                json={
                    "name": "c1",
                    "connector": {"state": "RUNNING", "worker_id": "w:8083"},
                    "tasks": [{"id": 0, "state": "FAILED", "worker_id": "w:8083", "trace": trace}],
                    "type": "source",
                },
            )
        if request.url.path.endswith("/restart"):
            return httpx.Response(202, json={"name": "c1", "connector": {"state": "RESTARTING"}, "tasks": []})
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(202)

    with client_for(handler, username="admin", password="connect-Pass-9") as client:
        client.redact.add(PASSWORD)
        status = client.status("c1")
        restarted = client.restart("c1")
        client.pause("c1")
        client.resume("c1")
        client.stop("c1")
        assert client.delete("c1") is True
    assert status.failed and not status.healthy
    assert status.tasks[0].trace is not None and PASSWORD not in status.tasks[0].trace
    assert restarted is not None and restarted.state == "RESTARTING"
    assert requests == [
        "GET /connectors/c1/status",
        "POST /connectors/c1/restart?includeTasks=true&onlyFailed=true",
        "PUT /connectors/c1/pause",
        "PUT /connectors/c1/resume",
        "PUT /connectors/c1/stop",
        "DELETE /connectors/c1",
    ]


def test_basic_auth_from_connect_settings() -> None:
    headers: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization", ""))
        return httpx.Response(200, json=[])

    with client_for(handler, username="admin", password="connect-Pass-9") as client:
        client.list_connectors()
    assert headers == ["Basic " + base64.b64encode(b"admin:connect-Pass-9").decode()]
