"""The testcontainers stack (tests/containers.py, ``CDC_TEST_STACK=containers``): its container
definitions are built without a Docker engine and hold the images of docker-compose.yml, the
environment each official image needs and the host ports of the test stack's settings, so the
fixtures' addresses are the same whichever stack runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.localstack import LocalStackSettings
from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER
from tests import containers
from tests.containers import INTERNAL_KAFKA, ContainerSpec, compose_images, stack_specs

SETTINGS = LocalStackSettings(
    state_dir=Path("/nonexistent"),
    source_pg_port=15433,
    target_pg_port=15434,
    kafka_port=19092,
    controller_port=19093,
    connect_port=18083,
    mariadb_port=15435,
    registry_port=18081,
)


def specs() -> dict[str, ContainerSpec]:
    return {s.name: s for s in stack_specs(SETTINGS)}


def test_the_stack_holds_every_service_the_tests_use_in_start_order() -> None:
    names = [s.name for s in stack_specs(SETTINGS)]
    assert names == ["source-postgres", "target-postgres", "mariadb", "kafka", "connect", "registry"]
    assert names.index("kafka") < names.index("connect")  # Connect needs its broker
    lean = SETTINGS.model_copy(update={"mariadb_enabled": False, "registry_enabled": False})
    assert [s.name for s in stack_specs(lean)] == ["source-postgres", "target-postgres", "kafka", "connect"]


def test_images_are_docker_compose_ones() -> None:
    images = compose_images()
    built = specs()
    for service in ("source-postgres", "target-postgres", "kafka", "connect"):
        assert built[service].image == images[service], service
    assert built["kafka"].image.startswith("apache/kafka:") and built["connect"].image.startswith("quay.io/debezium/")
    assert built["mariadb"].image.startswith("mariadb:") and built["registry"].image.startswith("quay.io/apicurio/")
    for spec in built.values():
        assert ":" in spec.image and not spec.image.endswith(":latest"), spec.image


def test_host_ports_are_the_settings_ones() -> None:
    built = specs()
    assert built["source-postgres"].ports == {5432: SETTINGS.source_pg_port}
    assert built["target-postgres"].ports == {5432: SETTINGS.target_pg_port}
    assert built["mariadb"].ports == {3306: SETTINGS.mariadb_port}
    assert built["kafka"].ports == {9092: SETTINGS.kafka_port}
    assert built["connect"].ports == {8083: SETTINGS.connect_port}
    assert built["registry"].ports == {8080: SETTINGS.registry_port}
    shifted = SETTINGS.model_copy(update={"kafka_port": 19192, "source_pg_port": 15533})
    moved = {s.name: s for s in stack_specs(shifted)}
    assert moved["kafka"].ports == {9092: 19192} and moved["source-postgres"].ports == {5432: 15533}
    assert "HOST://127.0.0.1:19192" in moved["kafka"].env["KAFKA_ADVERTISED_LISTENERS"]


def test_environment_of_each_image() -> None:
    built = specs()
    for name in ("source-postgres", "target-postgres"):
        env = built[name].env
        assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == (PG_SUPERUSER, PG_PASSWORD), name
    source_command = built["source-postgres"].command
    assert source_command is not None and "wal_level=logical" in source_command  # Debezium's pgoutput needs it
    assert built["target-postgres"].command is None
    kafka = built["kafka"].env
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert f"INTERNAL://{INTERNAL_KAFKA}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert f"HOST://{SETTINGS.bootstrap_servers}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    connect = built["connect"].env
    assert connect["BOOTSTRAP_SERVERS"] == INTERNAL_KAFKA  # through the stack's network, not the host port
    for key in ("CONFIG_STORAGE_TOPIC", "OFFSET_STORAGE_TOPIC", "STATUS_STORAGE_TOPIC", "GROUP_ID"):
        assert connect[key], key
    assert built["connect"].ready == f"http:{SETTINGS.connect_url}/connector-plugins"
    assert built["mariadb"].env["MARIADB_ROOT_PASSWORD"]


def test_containers_stack_without_an_engine_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert containers.docker_engine_available() is False
