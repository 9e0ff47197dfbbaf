"""Generated references of the configuration: the JSON Schema (``config/schema.json``) and the
README's key table (key path, env override, default, meaning), both derived from the models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.core.settings.root import ENV_NESTING, ENV_PREFIX, Settings


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the configuration file, for editors (``config/schema.json``)."""
    schema = Settings.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cdc-pipeline configuration"
    return schema


def reference_rows() -> list[tuple[str, str, str, str]]:
    """``(key path, env override, default, meaning)`` for every configuration key, in model
    order, for the README's configuration reference. List entries are shown as ``[]`` in the
    path and as ``<NAME>`` (or an index) in the variable."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], path: str, env: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            sub_path = f"{path}.{key}" if path else key
            sub_env = f"{env}{ENV_NESTING}{key.upper()}" if env else f"{ENV_PREFIX}{key.upper()}"
            inner = _model_of(field.annotation)
            if inner is not None:
                is_list = "list[" in repr(field.annotation)
                walk(inner, sub_path + ("[]" if is_list else ""), sub_env + (f"{ENV_NESTING}<NAME>" if is_list else ""))
                continue
            rows.append((sub_path, sub_env, _default_text(field), field.description or ""))

    walk(Settings, "", "")
    return rows


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    return str(value)


def reference_markdown() -> str:
    """The configuration reference as a Markdown table (README section, kept in sync by a test)."""
    lines = ["| key | env override | default | meaning |", "|---|---|---|---|"]
    for path, env, default, meaning in reference_rows():
        lines.append(f"| `{path}` | `{env}` | {default.replace('|', '/')} | {meaning.replace('|', '/')} |")
    return "\n".join(lines)
