"""The apply benchmark cannot rot: a smoke run against the test stack, and its generator
reproduces a real Debezium message byte for byte.

The smoke run asserts only that ``bench/apply_throughput.py --smoke`` exits 0, prints an
events/s figure and finds the target equal to the expected state: no speed assertion.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

from pipeline.core.events import ChangeEvent, Skip
from pipeline.decode.avro import AvroReader
from pipeline.decode.config import DecoderConfig
from pipeline.decode.decoder import Decoder
from pipeline.localstack import LocalStack

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "apply_throughput.py"

# Captured from Debezium 3.6.3.Final on the local stack (this project's connector configuration,
# topic prefix and database "capchk1") for
#   CREATE TABLE public.bench (id bigint PRIMARY KEY, name text, amount numeric(12,2),
#                              updated_at timestamptz, payload jsonb);
#   INSERT INTO bench VALUES (1, 'alice', 1234.50, '2024-01-01 00:00:00.123400+00',
#                             '{"sku": "A-1", "qty": 3, "tags": ["x","y"], "flags": {"gift": true}}');
#   ... DELETE FROM bench WHERE id = 2;
# The value is '{"schema":' + schema + ',"payload":' + payload + '}'.
CAPTURED_VALUE_SCHEMA = (
    '{"type":"struct","fields":[{"type":"struct","fields":[{"type":"int64","optional":false,'
    '"parameters":{"__debezium.source.column.type":"INT8","__debezium.source.column.length":"19",'
    '"__debezium.source.column.scale":"0","__debezium.source.column.name":"id"},"field":"id"},'
    '{"type":"string","optional":true,"parameters":{"__debezium.source.column.type":"TEXT",'
    '"__debezium.source.column.length":"2147483647","__debezium.source.column.scale":"0",'
    '"__debezium.source.column.name":"name"},"field":"name"},{"type":"bytes","optional":true,'
    '"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2",'
    '"connect.decimal.precision":"12","__debezium.source.column.type":"NUMERIC",'
    '"__debezium.source.column.length":"12","__debezium.source.column.scale":"2",'
    '"__debezium.source.column.name":"amount"},"field":"amount"},{"type":"string","optional":true,'
    '"name":"io.debezium.time.ZonedTimestamp","version":1,'
    '"parameters":{"__debezium.source.column.type":"TIMESTAMPTZ","__debezium.source.column.length":"35",'
    '"__debezium.source.column.scale":"6","__debezium.source.column.name":"updated_at"},'
    '"field":"updated_at"},{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,'
    '"parameters":{"__debezium.source.column.type":"JSONB",'
    '"__debezium.source.column.length":"2147483647","__debezium.source.column.scale":"0",'
    '"__debezium.source.column.name":"payload"},"field":"payload"}],"optional":true,'
    '"name":"capchk1.public.bench.Value","field":"before"},{"type":"struct","fields":[{"type":"int64",'
    '"optional":false,"parameters":{"__debezium.source.column.type":"INT8",'
    '"__debezium.source.column.length":"19","__debezium.source.column.scale":"0",'
    '"__debezium.source.column.name":"id"},"field":"id"},{"type":"string","optional":true,'
    '"parameters":{"__debezium.source.column.type":"TEXT","__debezium.source.column.length":"2147483647",'
    '"__debezium.source.column.scale":"0","__debezium.source.column.name":"name"},"field":"name"},'
    '{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,'
    '"parameters":{"scale":"2","connect.decimal.precision":"12",'
    '"__debezium.source.column.type":"NUMERIC","__debezium.source.column.length":"12",'
    '"__debezium.source.column.scale":"2","__debezium.source.column.name":"amount"},"field":"amount"},'
    '{"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,'
    '"parameters":{"__debezium.source.column.type":"TIMESTAMPTZ","__debezium.source.column.length":"35",'
    '"__debezium.source.column.scale":"6","__debezium.source.column.name":"updated_at"},'
    '"field":"updated_at"},{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,'
    '"parameters":{"__debezium.source.column.type":"JSONB",'
    '"__debezium.source.column.length":"2147483647","__debezium.source.column.scale":"0",'
    '"__debezium.source.column.name":"payload"},"field":"payload"}],"optional":true,'
    '"name":"capchk1.public.bench.Value","field":"after"},{"type":"struct","fields":[{"type":"string",'
    '"optional":false,"field":"version"},{"type":"string","optional":false,"field":"connector"},'
    '{"type":"string","optional":false,"field":"name"},{"type":"int64","optional":false,"field":"ts_ms"},'
    '{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,'
    '"parameters":{"allowed":"true,first,first_in_data_collection,last_in_data_collection,last,false,'
    'incremental"},"default":"false","field":"snapshot"},{"type":"string","optional":false,"field":"db"},'
    '{"type":"string","optional":true,"field":"sequence"},{"type":"int64","optional":true,'
    '"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"},{"type":"string","optional":false,'
    '"field":"schema"},{"type":"string","optional":false,"field":"table"},{"type":"int64",'
    '"optional":true,"field":"txId"},{"type":"int64","optional":true,"field":"lsn"},{"type":"int64",'
    '"optional":true,"field":"xmin"},{"type":"string","optional":true,"field":"origin"},{"type":"int64",'
    '"optional":true,"field":"origin_lsn"}],"optional":false,'
    '"name":"io.debezium.connector.postgresql.Source","version":1,"field":"source"},{"type":"struct",'
    '"fields":[{"type":"string","optional":false,"field":"id"},{"type":"int64","optional":false,'
    '"field":"total_order"},{"type":"int64","optional":false,"field":"data_collection_order"}],'
    '"optional":true,"name":"event.block","version":1,"field":"transaction"},{"type":"string",'
    '"optional":false,"field":"op"},{"type":"int64","optional":true,"field":"ts_ms"},{"type":"int64",'
    '"optional":true,"field":"ts_us"},{"type":"int64","optional":true,"field":"ts_ns"}],"optional":false,'
    '"name":"capchk1.public.bench.Envelope","version":2}'
)
CAPTURED_INSERT_PAYLOAD = (
    '{"before":null,"after":{"id":1,"name":"alice","amount":"AeI6","updated_at":"2024-01-01T00:00:00.123400Z",'
    '"payload":"{\\"qty\\": 3, \\"sku\\": \\"A-1\\", \\"tags\\": [\\"x\\", \\"y\\"], \\"flags\\": {\\"gift\\": true}}"},'
    '"source":{"version":"3.6.3.Final","connector":"postgresql","name":"capchk1","ts_ms":1795287095714,'
    '"snapshot":null,"db":"capchk1","sequence":"[null,\\"26726376\\"]","ts_us":1795287095714391,'
    '"ts_ns":1795287095714391000,"schema":"public","table":"bench","txId":740,"lsn":26726376,"xmin":null,'
    '"origin":null,"origin_lsn":null},"transaction":{"id":"740:26726376","total_order":1,'
    '"data_collection_order":1},"op":"c","ts_ms":1795287095897,"ts_us":1795287095897615,'
    '"ts_ns":1795287095897615902}'
)
CAPTURED_DELETE_PAYLOAD = (
    '{"before":{"id":2,"name":null,"amount":null,"updated_at":null,"payload":null},"after":null,'
    '"source":{"version":"3.6.3.Final","connector":"postgresql","name":"capchk1","ts_ms":1795287095716,'
    '"snapshot":null,"db":"capchk1","sequence":"[\\"26727328\\",\\"26727328\\"]","ts_us":1795287095716201,'
    '"ts_ns":1795287095716201000,"schema":"public","table":"bench","txId":742,"lsn":26727328,"xmin":null,'
    '"origin":null,"origin_lsn":null},"transaction":{"id":"742:26727328","total_order":1,'
    '"data_collection_order":1},"op":"d","ts_ms":1795287095912,"ts_us":1795287095912409,'
    '"ts_ns":1795287095912409786}'
)
CAPTURED_KEY = (
    '{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}],"optional":false,'
    '"name":"capchk1.public.bench.Key"},"payload":{"id":1}}'
)


def _generator() -> ModuleType:
    """``bench/_debezium_gen.py`` (the bench folder is not a package)."""
    spec = importlib.util.spec_from_file_location("_debezium_gen", REPO / "bench" / "_debezium_gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _captured(payload: str) -> bytes:
    return ('{"schema":' + CAPTURED_VALUE_SCHEMA + ',"payload":' + payload + "}").encode()


def test_generator_reproduces_captured_debezium_messages() -> None:
    gen = _generator()
    ser = gen.DebeziumJson("capchk1", "capchk1")
    micros = (datetime(2024, 1, 1, 0, 0, 0, 123400, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    row = gen.Row(
        1, "alice", Decimal("1234.50"), micros, {"sku": "A-1", "qty": 3, "tags": ["x", "y"], "flags": {"gift": True}}
    )
    insert = gen.SourceInfo(740, 26726376, None, 1795287095714391, 1, 1795287095897615902)
    delete = gen.SourceInfo(742, 26727328, 26727328, 1795287095716201, 1, 1795287095912409786)

    assert ser.key(1) == CAPTURED_KEY.encode()
    assert ser.value("c", None, gen.row_image(row), insert) == _captured(CAPTURED_INSERT_PAYLOAD)
    assert ser.value("d", gen.key_image(2), None, delete) == _captured(CAPTURED_DELETE_PAYLOAD)
    # Other decimals Debezium wrote in the same capture (-0.01, 128.00, 99999999.99).
    assert [gen.decimal_base64(Decimal(v), 2) for v in ("-0.01", "128.00", "99999999.99")] == [
        "/w==",
        "MgA=",
        "AlQL4/8=",
    ]


def test_bench_smoke(local_stack: LocalStack) -> None:
    s = local_stack.settings
    args = ["--smoke", "--state-dir", str(s.state), "--kafka-port", str(s.kafka_port)]
    args += ["--target-port", str(s.target_pg_port)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600, cwd=REPO, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"^events/s: [\d,]+", proc.stdout, re.MULTILINE), output
    assert "target matches: yes" in proc.stdout, output


def _decoded(decoder: Decoder, messages: list[tuple[bytes, bytes | None]]) -> list[object]:
    out: list[object] = []
    for offset, (key, value) in enumerate(messages):
        event = decoder.decode("avrochk.public.bench", 0, offset, key, value)
        if isinstance(event, Skip):
            out.append(event.reason)
        else:
            assert isinstance(event, ChangeEvent)
            out.append((event.op, event.key, event.before, event.after, event.position, event.columns))
    return out


def test_avro_generator_decodes_like_json() -> None:
    """The bench's Avro messages (``--format avro``) carry the same changes as its JSON ones."""
    gen = _generator()
    schemas = {1: gen.avro_schema(gen.value_schema("avrochk")), 2: gen.avro_schema(gen.key_schema("avrochk"))}
    as_json = gen.Workload("avrochk", 300, 60, seed=3)
    as_avro = gen.Workload("avrochk", 300, 60, seed=3)
    as_avro.serializer = lambda prefix, database: gen.DebeziumAvro(prefix, database, 1, 2)
    json_messages, avro_messages = list(as_json.messages()), list(as_avro.messages())
    reader = AvroReader(schemas.__getitem__)
    avro_decoder = Decoder(DecoderConfig(), avro_values=reader, avro_keys=reader)
    assert _decoded(avro_decoder, avro_messages) == _decoded(Decoder(DecoderConfig()), json_messages)
    assert as_avro.expected == as_json.expected
    json_bytes = sum(len(k) + len(v or b"") for k, v in json_messages)
    avro_bytes = sum(len(k) + len(v or b"") for k, v in avro_messages)
    assert avro_bytes * 5 < json_bytes


def test_bench_smoke_avro(local_stack: LocalStack) -> None:
    """``--format avro`` against the test stack's Apicurio Registry (the bench starts it when
    nothing answers on the port, and stops what it started)."""
    s = local_stack.settings
    slot = int(os.environ.get("CDC_TEST_STACK_SLOT", "0") or "0")
    args = ["--smoke", "--format", "avro", "--state-dir", str(s.state), "--kafka-port", str(s.kafka_port)]
    args += ["--target-port", str(s.target_pg_port), "--registry-port", str(18081 + 100 * slot)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=900, cwd=REPO, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"^format: avro; bytes/event: [\d,]+", proc.stdout, re.MULTILINE), output
    assert "target matches: yes" in proc.stdout, output
