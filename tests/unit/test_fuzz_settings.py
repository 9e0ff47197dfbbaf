"""Fuzzing the configuration loader (issue 11): random YAML and wrong types anywhere in a valid
configuration give a :class:`ConfigError` whose lines name the offending key, never another
exception; a secret given with a wrong type is not echoed back."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.settings.loading import ConfigError, load_settings
from pipeline.core.settings.root import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "local.yaml"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENV = {"SOURCE_PASSWORD": "postgres", "TARGET_PASSWORD": "postgres"}

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["", "-1", "1e999", "yes", "${UNSET_VAR}", "x" * 5000, "'; DROP TABLE t; --"]),
)
wrong = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _load_text(text: str, env: dict[str, str] | None = None) -> Settings:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path, env if env is not None else ENV)


def _load_doc(doc: Any) -> Settings:
    return _load_text(yaml.safe_dump(doc, allow_unicode=True))


def _leaves(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*prefix, k))] + [prefix]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*prefix, i))] + [prefix]
    return [prefix]


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)
    return copy


def _key_text(path: tuple[Any, ...]) -> str:
    """How ConfigError lines spell a key path: ``sources[0].port``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(load: Callable[[], Settings]) -> list[str] | None:
    """None when ``load`` succeeds, else the ConfigError's problem lines (any other exception
    propagates and fails the test)."""
    try:
        load()
    except ConfigError as exc:
        return exc.problems
    return None


KEY_LINE = re.compile(r"^(\(top level\)|(" + "|".join(Settings.model_fields) + r")\b|/\S+:\d+:\d+|line \d+)")
BASE = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_the_base_configuration_loads() -> None:
    assert _load_text(EXAMPLE.read_text(encoding="utf-8")).pipelines[0].name == "app_to_target"


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    problems = _problems(lambda: _load_text(text))
    assert problems is None or (problems and all(line.strip() for line in problems))


@pytest.mark.parametrize("text", ["?", "1: x", "true: 1"])
def test_top_level_keys_that_are_not_names_are_config_errors(text: str) -> None:
    """Found by test_random_text: ``?`` parses as ``{None: None}``, which used to escape as a TypeError."""
    with pytest.raises(ConfigError, match="is not a name"):
        _load_text(text)


@FUZZ
@given(st.data())
def test_truncated_yaml(data: st.DataObject) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    assert _problems(lambda: _load_text(text[:cut])) != []


@FUZZ
@given(st.data())
def test_wrong_value_anywhere_names_its_key(data: st.DataObject) -> None:
    """Any node of a valid configuration replaced by a random value: either still valid or a
    ConfigError with a line naming that node's key path (or one of its parents')."""
    path = data.draw(st.sampled_from([p for p in _leaves(BASE) if p]))
    value = data.draw(wrong)
    doc = _replace(BASE, path, value)
    problems = _problems(lambda: _load_doc(doc))
    if problems is None:
        return
    text = "\n".join(problems)
    if "${" in repr(value):  # interpolation runs on the text first: its errors name the line
        assert "line " in text and "is not set" in text, text
        return
    assert all(KEY_LINE.match(line) for line in problems), text
    # The changed key (or a parent) is named, or a key that referred to what was changed.
    prefixes = [_key_text(path[:n]) for n in range(len(path), 0, -1)]
    assert any(p in text for p in prefixes) or "unknown source" in text, (path, text)


@FUZZ
@given(st.dictionaries(st.sampled_from(["CDC_KAFKA__BOOTSTRAP_SERVERS", "CDC_SOURCES__0__PORT",
                                        "CDC_PIPELINES__9__NAME", "CDC_PIPELINES__APP_TO_TARGET__BATCH__MAX_MESSAGES",
                                        "CDC_METRICS__PORT", "CDC_SOURCES__APP__TABLES"]),
                       st.text(max_size=12), max_size=3))  # fmt: skip
def test_environment_overrides(env: dict[str, str]) -> None:
    assert _problems(lambda: _load_text(EXAMPLE.read_text(encoding="utf-8"), {**ENV, **env})) != []


@pytest.mark.parametrize("value", [987654321, ["s3cr3t-value"], {"v": "s3cr3t-value"}])
def test_mistyped_secret_is_not_echoed(value: Any) -> None:
    doc = _replace(BASE, ("sources", 0, "password"), value)
    with pytest.raises(ConfigError) as info:
        _load_doc(doc)
    assert "sources[0].password" in str(info.value)
    assert "987654321" not in str(info.value) and "s3cr3t" not in str(info.value)
