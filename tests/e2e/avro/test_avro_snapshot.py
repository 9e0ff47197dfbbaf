"""An incremental snapshot of an Avro source: the connector writes its notifications with its
Avro value converter, and the coordinator must read them (through the schema registry) to
follow the request to its end."""

from __future__ import annotations

import json

from tests.e2e.avro.test_avro_apply import ITEMS
from tests.e2e.conftest import E2EPipeline
from tests.e2e.helpers_snapshot import run_snapshot, run_verify
from tests.e2e.test_snapshot_verify import fill


def test_avro_source_incremental_snapshot_is_followed_to_completion(avro_e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = avro_e2e([ITEMS, fill("public.items", 40)], ["public.items"])
    p.start_worker()
    p.wait_converged()
    exit_code, out = run_snapshot(
        p.config_path,
        "start",
        "public.items",
        "--filter",
        "public.items=id <= 10",
        "--wait",
        "--timeout",
        "180",
        "--json",
    )
    assert exit_code == 0, out
    done = json.loads(out)
    # Progress comes only from the (Avro) notifications: a JSON-only reader never sees them.
    assert done["state"] == "completed", done
    assert done["progress"]["public.items"]["rows_scanned"] == 10, done
    exit_code, doc, _ = run_verify(p.config_path)
    assert exit_code == 0, doc
