"""Loading the configuration once: YAML file, ``${VAR}`` interpolation, ``CDC_`` environment
overrides, validation into a frozen :class:`~pipeline.core.settings.root.Settings`, and errors that name the key.

Sources, in rising priority:

1. the YAML file given by ``--config/-c`` or ``CDC_CONFIG``, after ``${VAR}`` /
   ``${VAR:-default}`` interpolation from the environment;
2. environment variables ``CDC_<KEY>__<KEY>...`` (``__`` nests; a list entry is addressed by
   its index or by its ``name``, e.g. ``CDC_SOURCES__INVENTORY__PASSWORD`` or
   ``CDC_PIPELINES__0__TARGET__URL``); values are parsed as YAML scalars, so ``true``, ``5`` and
   ``[a, b]`` keep their types;
3. ``<secret>_file`` keys (``password_file``, ``sasl_password_file``): the secret is read from
   that file, as Docker and Kubernetes mount secrets.

Errors: :func:`load_settings` raises :class:`ConfigError` whose ``problems`` are lines of the
form ``key.path: problem (hint)``, e.g. ``pipelines[0].target.url: missing (add the key ...)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.core.settings.masking import SECRET_KEY, mask_text
from pipeline.core.settings.root import CONFIG_ENV, ENV_NESTING, ENV_PREFIX, Settings


class ConfigError(Exception):
    """A configuration file or environment that cannot be loaded.

    ``problems`` holds one line per problem, ``key.path: problem (hint)`` or, for YAML syntax,
    ``FILE:LINE:COLUMN: problem``. The message is meant for users; no traceback is needed.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text`` from ``environ``.

    ``$${VAR}`` is left as the literal ``${VAR}``. Raises :class:`ConfigError` naming every
    variable that is unset and has no default, with the line it is on.
    """
    missing: list[str] = []

    def repl(match: re.Match[str]) -> str:
        start = match.start()
        if start > 0 and text[start - 1] == "$":
            return match.group(0)
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        line = text.count("\n", 0, start) + 1
        missing.append(f"line {line}: ${{{name}}} is not set (export it or write ${{{name}:-default}})")
        return ""

    result = _VAR.sub(repl, text).replace("$${", "${")
    if missing:
        raise ConfigError(missing)
    return result


def read_yaml(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse the YAML config at ``path`` after interpolation.

    Raises :class:`ConfigError` for an unreadable file, a syntax error (with line and column),
    an empty file (or comments only) or a top level that is not a mapping of string keys (``?``
    alone is ``{None: None}``).
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file ({exc.strerror})"]) from exc
    text = interpolate(raw, environ)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from exc
    if data is None:
        raise ConfigError([f"{path}: the file is empty (expected the sections kafka, sources, pipelines, ...)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys (kafka, sources, pipelines, ...)"])
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise ConfigError(
            [f"{path}: top-level key {key!r} is not a name (kafka, sources, pipelines, ...)" for key in odd]
        )
    return data


def apply_env_overrides(doc: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Merge ``CDC_A__B__C=value`` variables into ``doc`` (a new dict is returned).

    A path part addressing a list is an index (``0``) or the ``name`` of an existing entry
    (case-insensitive). Values are parsed as YAML scalars. ``CDC_CONFIG`` and variables without
    ``__`` that name no top-level section are ignored. Raises :class:`ConfigError` naming every
    variable that cannot be applied (an index past the end, a name no entry has: a typo in an
    override must not be ignored, nor create a half-defined entry).
    """
    out: dict[str, Any] = _deep_copy(doc)
    problems: list[str] = []
    sections = set(Settings.model_fields)
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if not parts or parts[0] not in sections:
            continue
        try:
            value = yaml.safe_load(environ[var]) if environ[var] != "" else ""
        except yaml.YAMLError:
            value = environ[var]
        try:
            _set_path(out, parts, value)
        except (IndexError, KeyError, TypeError) as exc:
            problems.append(f"{var}: {exc.args[0] if exc.args else exc}")
    if problems:
        raise ConfigError(problems)
    return out


def _deep_copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _deep_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deep_copy(v) for v in node]
    return node


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        index = _list_index(node, head)
        if not rest:
            node[index] = value
            return
        _set_path(node[index], rest, value)
        return
    if not isinstance(node, dict):
        raise TypeError(f"cannot set {head!r} inside a {type(node).__name__}")
    if not rest:
        node[head] = value
        return
    child = node.get(head)
    if child is None:
        child = [] if head in ("sources", "pipelines", "transforms") else {}
        node[head] = child
    _set_path(child, rest, value)


def _list_index(items: list[Any], part: str) -> int:
    if part.isdigit():
        index = int(part)
        if index >= len(items):
            raise IndexError(f"index {index} is past the end of a list of {len(items)}")
        return index
    names: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            name = str(item.get("name", ""))
            names.append(name)
            if name.lower() == part:
                return i
    known = ", ".join(repr(n) for n in names if n) or "none"
    raise KeyError(f"no list entry is named {part!r} (names: {known}; or address it by index)")


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn a pydantic ValidationError into ``key.path: problem (hint)`` lines."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = _format_loc(err["loc"])
        kind = err["type"]
        msg = err["msg"]
        if kind == "missing":
            lines.append(f"{loc}: missing (add this key)")
        elif kind == "extra_forbidden":
            lines.append(f"{loc}: unknown key (check its spelling; see config/schema.json)")
        elif kind == "value_error":
            # Errors raised by whole-document checks carry their own key path, one line each.
            for text in msg.removeprefix("Value error, ").split("\n"):
                lines.append(text if re.match(r"^\w+\[\d+\]", text) else f"{loc}: {text}")
        else:
            got = err.get("input")
            secret = any(isinstance(part, str) and SECRET_KEY.search(part) for part in err["loc"])
            shown = "" if secret or isinstance(got, dict | list) else f", got {mask_text(repr(got))}"
            lines.append(f"{loc}: {msg.lower()}{shown}")
    return lines


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def load_document(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged configuration document before validation: the YAML file (``path``, default
    ``$CDC_CONFIG``; none: an empty document) after interpolation, with the environment
    overrides applied. Raises :class:`ConfigError` as :func:`read_yaml` and
    :func:`apply_env_overrides` do."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV)
    doc = read_yaml(Path(chosen), env) if chosen else {}
    return apply_env_overrides(doc, env)


def settings_from_document(doc: Mapping[str, Any]) -> Settings:
    """Validate a merged document (:func:`load_document`) into a frozen :class:`Settings`.
    Raises :class:`ConfigError` listing every model problem."""
    try:
        return Settings(**doc)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, merge and validate the configuration.

    ``path`` defaults to ``$CDC_CONFIG``; with neither, only environment overrides and
    defaults apply. Returns a frozen :class:`Settings`. Raises :class:`ConfigError` listing
    every problem.
    """
    return settings_from_document(load_document(path, environ))
