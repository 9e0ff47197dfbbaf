"""One real SASL/PLAIN check (issue 11): a single-node KRaft broker of this module's own with a
SASL_PLAINTEXT listener and a JAAS ``PlainLoginModule`` user list, reached through
``KafkaSettings(...).client_config()``: the right password produces and consumes, a wrong one is
refused, and our own logs (CLI at debug level) never show the password.

The broker is started from the cached jars like :class:`pipeline.localstack.services.KafkaBroker`
does (Kafka docs, "Authentication using SASL/PLAIN" and "KRaft" > "Combined nodes"), under a
temporary folder, and stopped at the end of the module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from pipeline.core.settings.models import KafkaSettings
from pipeline.localstack import LocalStack, services
from pipeline.localstack.jars import cache_for, java_binary

APP_USER = "app"
APP_PASSWORD = f"SaslPlain-{uuid.uuid4().hex}"
ADMIN_PASSWORD = f"Admin-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str
    log: Path

    def settings(self, password: str) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username=APP_USER,
            sasl_password=password,
        )


def _jaas() -> str:
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="admin" password="{ADMIN_PASSWORD}"'
        f' user_admin="{ADMIN_PASSWORD}" user_{APP_USER}="{APP_PASSWORD}";'
    )


@pytest.fixture(scope="module")
def sasl_broker(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """A KRaft broker+controller with SASL_PLAINTEXT (PLAIN) for clients and the broker itself."""
    jars = cache_for(local_stack.settings.cache_dir)  # the session stack made sure they are there
    root = tmp_path_factory.mktemp("sasl-broker")
    port, cport = _free_port(), _free_port()
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{cport}",
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": _jaas(),
        "log.dirs": str(root / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    config = root / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
    java = java_binary()
    base = [java, "-Xmx256m", "-XX:+UseG1GC", "-Djava.awt.headless=true", "-cp", jars.classpath]
    cluster_id = services.kafka_cluster_id()
    fmt = subprocess.run(
        [*base, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    log = root / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*base, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    broker = SaslBroker(f"127.0.0.1:{port}", log)
    try:
        admin = AdminClient({**broker.settings(APP_PASSWORD).client_config(), "log_level": 0})
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                admin.list_topics(timeout=3)
                break
            except KafkaException:
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(1)
        yield broker
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_right_password_produces_and_consumes(sasl_broker: SaslBroker) -> None:
    conf = sasl_broker.settings(APP_PASSWORD).client_config()
    assert conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.mechanism"] == "PLAIN"
    topic = f"sasl_{uuid.uuid4().hex[:8]}"
    producer = Producer(conf)
    producer.produce(topic, value=b"hello")
    assert producer.flush(60) == 0
    consumer = Consumer({**conf, "group.id": topic, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        got = None
        while got is None and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is None:
                got = msg.value()
        assert got == b"hello"
    finally:
        consumer.close()


def test_wrong_password_is_refused(sasl_broker: SaslBroker) -> None:
    errors: list[str] = []
    admin = AdminClient(
        {
            **sasl_broker.settings("wrong-password").client_config(),
            "log_level": 0,
            "error_cb": lambda e: errors.append(str(e)),
        }
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=10)
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        admin.poll(1)  # serves error_cb
    assert any("Authentication failed" in e or "SASL" in e for e in errors), errors


def test_password_absent_from_our_debug_logs(sasl_broker: SaslBroker, tmp_path: Path) -> None:
    """``lag`` and ``config show`` at debug level with the SASL settings (``lag`` reads the
    consumer groups through the broker; the source database is unreachable on purpose)."""
    doc = {
        "kafka": {
            "bootstrap_servers": sasl_broker.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": APP_USER,
            "sasl_password": APP_PASSWORD,
        },
        "sources": [{"name": "s", "host": "127.0.0.1", "port": _free_port(), "database": "d", "user": "u",
                     "password": "unused-pw", "tables": ["public.t"]}],
        "pipelines": [{"name": "p", "source": "s", "target": {"url": "postgresql://u@127.0.0.1:1/d"}}],
    }  # fmt: skip
    config = tmp_path / "sasl.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = ""
    for args in (["config", "show"], ["lag"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--log-level", "debug", *args, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        out += proc.stdout + proc.stderr
    assert "sasl" in out.lower()  # the settings were in play
    assert APP_PASSWORD not in out
