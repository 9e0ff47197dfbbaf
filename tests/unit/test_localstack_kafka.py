"""Unit tests for the local stack's Kafka helpers (no JVM started)."""

from __future__ import annotations

import base64
import uuid

import pytest

from pipeline.localstack import services


def test_cluster_id_is_22_char_urlsafe_base64() -> None:
    cluster_id = services.kafka_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first draw encodes to "-..." (0xF8 -> '-' in URL-safe base64); it must be drawn again.
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(bytes=b"\x10" * 16)])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(draws))
    cluster_id = services.kafka_cluster_id()
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == b"\x10" * 16
