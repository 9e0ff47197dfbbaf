"""`config validate` through the real CLI (issue 22, acceptance of defects 1 and 2): it exits 2 on
each configuration that `run` would reject, with one line per problem naming its key, all problems
in one pass; `config show` prints the derived names. Only the CLI is imported, so these tests run
against any version of the checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import pipeline.app
from pipeline.cli import app
from pipeline.core.settings.loading import load_settings
from pipeline.transform.transformer import build_transformer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))

BASE = """
sources:
  - name: app
    database: app
    user: u
    password: p
    tables: [public.a, public.b]
pipelines:
  - name: p
    source: app
    target:
      url: postgresql://w@db/app
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def validate(path: Path, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Exit code and the problem lines (the indented lines after 'FILE: invalid configuration')."""
    res = CliRunner().invoke(app, ["config", "validate", "-c", str(path)], env=env)
    assert "Traceback" not in res.output, res.output
    return res.exit_code, [line.strip() for line in res.output.splitlines() if line.startswith("  ")]


CASES = {
    "oracle-target": (BASE.replace("postgresql://w@db/app", "oracle://w@db/app"), "pipelines[p].target.url: "),
    "where-syntax": (
        BASE + "    transforms:\n      - where: \"status = = 'x'\"\n",
        "pipelines[p].transforms[0].where: ",
    ),
    "route-placeholder": (BASE + "    transforms:\n      - route: '{schem}.x'\n", "pipelines[p].transforms[0].route: "),
    "hash-without-salt": (BASE + "    transforms:\n      - mask: {email: hash}\n", "pipelines[p].transforms[0].mask: "),
    "two-schemas": (BASE.replace("[public.a, public.b]", "[s1.t, s2.t]"), "sources[app].tables: "),
    "user-heartbeat": (BASE.replace("[public.a, public.b]", "[public.heartbeat]"), "sources[app].tables: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validate_refuses_what_run_rejects(tmp_path: Path, case: str) -> None:
    text, key = CASES[case]
    code, lines = validate(write(tmp_path, text))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(key), lines


def test_every_problem_in_one_pass(tmp_path: Path) -> None:
    text = BASE.replace("postgresql://w@db/app", "oracle://w@db/app") + (
        "    transforms:\n"
        "      - match: public.a\n        where: \"status = = 'x'\"\n"
        "      - match: public.b\n        route: '{schem}.x'\n"
        "      - mask: {email: hash}\n"
    )
    code, lines = validate(write(tmp_path, text))
    assert code == 2
    assert [line.split(": ")[0] for line in lines] == [
        "pipelines[p].target.url",
        "pipelines[p].transforms[0].where",
        "pipelines[p].transforms[1].route",
        "pipelines[p].transforms[2].mask",
    ]


def test_model_errors_and_runtime_errors_together(tmp_path: Path) -> None:
    """A document failing the models still has its valid entries checked in the same pass."""
    text = "kafka:\n  bogus: 1\n" + BASE + "    transforms:\n      - where: 'a ='\n"
    code, lines = validate(write(tmp_path, text))
    assert code == 2
    assert [line.split(": ")[0] for line in lines] == ["kafka.bogus", "pipelines[p].transforms[0].where"]


def test_several_reference_problems_in_one_pass(tmp_path: Path) -> None:
    text = (
        BASE + "    tables: [public.x, public.y]\n  - name: q\n    source: nope\n    target: {url: 'sqlite:///q.db'}\n"
    )
    code, lines = validate(write(tmp_path, text))
    assert code == 2
    assert [line.split(": ")[0] for line in lines] == [
        "pipelines[0].tables",
        "pipelines[0].tables",
        "pipelines[1].source",
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_compile_as_run_compiles_them(example: Path) -> None:
    settings = load_settings(example, {})
    for pipe in settings.pipelines:
        build_transformer(pipe.transforms, pipe.mask_salt)  # raises TransformConfigError
    assert validate(example)[0] == 0


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n"):
        code, lines = validate(write(tmp_path, text))
        assert code == 2
        assert lines and "empty" in lines[0]


def test_an_env_override_matching_no_entry_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    code, lines = validate(path, {"CDC_PIPELINES__NOSUCH__NAME": "x"})
    assert code == 2
    (line,) = lines
    assert line.startswith("CDC_PIPELINES__NOSUCH__NAME: ") and "'nosuch'" in line and "'p'" in line
    assert validate(path, {"CDC_PIPELINES__P__BATCH__MAX_MESSAGES": "7"})[0] == 0  # by name still works


def test_show_prints_the_derived_names(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["config", "show", "-c", str(write(tmp_path, BASE)), "--json"])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.output)
    src, pipe = doc["sources"][0], doc["pipelines"][0]
    assert (src["slot_name"], src["publication_name"], src["connector_name"], src["topic_prefix"]) == (
        "cdc_app",
        "cdc_app",
        "cdc-app",
        "app",
    )
    assert pipe["consumer_group"] == "cdc.p"
    assert pipe["dlq"]["topic"] == "cdc.p.dlq"


@pytest.mark.parametrize("command", ["run", "control"])
def test_run_and_control_refuse_colliding_names_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    def no_client(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a Kafka client was created for a configuration with colliding names")

    monkeypatch.setattr(pipeline.app, "Consumer", no_client)
    monkeypatch.setattr(pipeline.app, "Producer", no_client)
    monkeypatch.setattr(pipeline.app, "ControlPlane", no_client)
    path = write(tmp_path, CASES["two-schemas"][0])
    res = CliRunner().invoke(app, [command, "-c", str(path)])
    assert res.exit_code == 2, res.output
    lines = [line.strip() for line in res.output.splitlines() if line.startswith("  ")]
    assert len(lines) == 1 and lines[0].startswith("sources[app].tables: "), res.output
