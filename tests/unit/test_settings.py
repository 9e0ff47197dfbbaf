"""Settings: YAML + ${VAR} interpolation + CDC_ env overrides + secret files, errors by key path."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.settings.loading import ConfigError, interpolate, load_settings
from pipeline.core.settings.masking import mask_url
from pipeline.core.settings.reference import json_schema, reference_markdown

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))

MINIMAL = """
sources:
  - name: app
    database: app
    user: debezium
    password: ${SRC_PW}
    tables: [public.orders]
pipelines:
  - name: orders
    source: app
    target:
      url: postgresql://writer:urlsecret@db:5432/app
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_interpolation_env_overrides_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    env = {
        "SRC_PW": "s3cret",
        "CDC_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "CDC_SOURCES__APP__PORT": "6543",
        "CDC_PIPELINES__0__BATCH__MAX_MESSAGES": "42",
    }
    s = load_settings(path, env)
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    src = s.source("app")
    assert src.port == 6543
    assert src.password is not None
    assert src.password.get_secret_value() == "s3cret"
    assert src.resolved_slot_name == "cdc_app"
    assert src.resolved_connector_name == "cdc-app"
    pipe = s.pipeline("orders")
    assert pipe.batch.max_messages == 42
    assert pipe.resolved_consumer_group == "cdc.orders"
    assert pipe.resolved_dlq_topic == "cdc.orders.dlq"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL), {"SRC_PW": "x"})
    with pytest.raises(ValueError, match="frozen"):
        s.kafka.bootstrap_servers = "other:9092"  # type: ignore[misc]


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    text = MINIMAL.replace("password: ${SRC_PW}", f"password_file: {secret}")
    s = load_settings(write(tmp_path, text), {})
    pw = s.source("app").password
    assert pw is not None
    assert pw.get_secret_value() == "from-file"


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    text = MINIMAL.replace("password: ${SRC_PW}", "password_file: /nonexistent/pw")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), {})
    assert any(p.startswith("sources[0]") and "password_file" in p for p in err.value.problems)


def test_unset_variable_is_an_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, MINIMAL), {})
    assert err.value.problems == ["line 6: ${SRC_PW} is not set (export it or write ${SRC_PW:-default})"]


def test_every_problem_is_reported_by_key_path(tmp_path: Path) -> None:
    text = """
kafka:
  bootstrap_servers: 1
  bogus: true
sources:
  - name: app
    database: app
    user: u
    port: notaport
    tables: [orders]
pipelines:
  - name: p
    source: app
    target: {schema: public}
"""
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), {})
    problems = "\n".join(err.value.problems)
    assert "kafka.bootstrap_servers: input should be a valid string, got 1" in problems
    assert "kafka.bogus: unknown key" in problems
    assert "sources[0].port: input should be a valid integer" in problems
    assert "sources[0].tables: table 'orders' must be written 'schema.table' (e.g. 'public.orders')" in problems
    assert "pipelines[0].target.url: missing (add this key)" in problems


def test_unknown_source_reference(tmp_path: Path) -> None:
    text = MINIMAL.replace("    source: app", "    source: nope")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), {"SRC_PW": "x"})
    assert err.value.problems == ["pipelines[0].source: unknown source 'nope' (defined: app)"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_servers: [a\nsources: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert err.value.problems[0].startswith(f"{path}:3:")
    assert "YAML syntax error" in err.value.problems[0]


def test_masked_dump_hides_every_secret(tmp_path: Path) -> None:
    text = MINIMAL + "kafka:\n  sasl_username: u\n  sasl_password: saslsecret\n"
    s = load_settings(write(tmp_path, text), {"SRC_PW": "s3cret"})
    dumped = json.dumps(s.masked_dump())
    for secret in ("s3cret", "saslsecret", "urlsecret"):
        assert secret not in dumped
    assert "postgresql://writer:**********@db:5432/app" in dumped


def test_mask_url_keeps_urls_without_password() -> None:
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("postgresql://u:p@h:1/db") == "postgresql://u:**********@h:1/db"


def test_cli_validate_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write(tmp_path, MINIMAL.replace("${SRC_PW}", "pw"), "good.yaml")
    ok = runner.invoke(app, ["config", "validate", "-c", str(good)])
    assert ok.exit_code == 0, ok.output
    bad = write(tmp_path, "pipelines:\n  - name: p\n    source: s\n    target: {}\n", "bad.yaml")
    res = runner.invoke(app, ["config", "validate", "-c", str(bad)])
    assert res.exit_code == 2
    assert "pipelines[0].target.url: missing (add this key)" in res.output
    assert "Traceback" not in res.output
    broken = write(tmp_path, "kafka: [\n", "broken.yaml")
    res = runner.invoke(app, ["config", "validate", "-c", str(broken)])
    assert res.exit_code == 2
    assert f"{broken}:2:" in res.output


def test_cli_show_masks_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("${SRC_PW}", "topsecret"))
    res = CliRunner().invoke(app, ["config", "show", "-c", str(path)])
    assert res.exit_code == 0, res.output
    assert "topsecret" not in res.output
    assert "urlsecret" not in res.output
    assert "**********" in res.output


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_are_valid(example: Path) -> None:
    load_settings(example, {})


def test_schema_file_is_in_sync() -> None:
    committed = json.loads((REPO / "config" / "schema.json").read_text(encoding="utf-8"))
    assert committed == json_schema(), "regenerate: cdc-pipeline config schema > config/schema.json"


def test_schema_validates_the_examples() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    for example in EXAMPLES:
        doc = yaml.safe_load(interpolate(example.read_text(encoding="utf-8"), {}))
        errors = list(validator.iter_errors(doc))
        assert not errors, f"{example.name}: {errors[0].message}"


def test_readme_configuration_reference_is_in_sync() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- generated by `cdc-pipeline config reference`")
    end = readme.index("<!-- end of generated reference -->")
    table = readme[start:end].split("\n", 1)[1].strip()
    assert table == reference_markdown(), "regenerate: cdc-pipeline config reference (README section)"


def test_cli_show_masks_a_password_in_the_url_query(tmp_path: Path) -> None:
    """Issue 22, defect 3: ``?password=`` of a libpq URI was printed in clear."""
    text = MINIMAL.replace("${SRC_PW}", "pw").replace(
        "postgresql://writer:urlsecret@db:5432/app", "postgresql://u:SECRET1@h/db?sslmode=require&password=SECRET2"
    )
    res = CliRunner().invoke(app, ["config", "show", "-c", str(write(tmp_path, text))])
    assert res.exit_code == 0, res.output
    assert "SECRET1" not in res.output and "SECRET2" not in res.output
    assert "postgresql://u:**********@h/db?sslmode=require&password=**********" in res.output


def test_masked_dump_masks_passwords_under_any_key(tmp_path: Path) -> None:
    """A URL or conninfo may sit under a key that is not a secret's (a registry URL, a property)."""
    text = MINIMAL.replace("${SRC_PW}", "pw") + (
        "kafka:\n  client_properties: {sasl.oauthbearer.config: 'scope=x password=prop-secret'}\n"
    )
    text = text.replace(
        "    tables: [public.orders]",
        "    tables: [public.orders]\n    format: avro\n"
        "    schema_registry: {url: 'http://reg:reg-secret@registry:8080/apis/ccompat/v7'}",
    )
    dumped = json.dumps(load_settings(write(tmp_path, text), {}).masked_dump())
    assert "prop-secret" not in dumped and "reg-secret" not in dumped
    assert "http://reg:**********@registry:8080/apis/ccompat/v7" in dumped


def test_a_rejected_value_is_shown_masked(tmp_path: Path) -> None:
    text = MINIMAL.replace("${SRC_PW}", "pw") + "connect:\n  url: 'ftp://u:connect-secret@h'\n"
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), {})
    assert "connect.url" in str(err.value) and "connect-secret" not in str(err.value)
