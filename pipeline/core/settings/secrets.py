"""Every secret value a loaded configuration holds, so free text that may quote one (a database
error, a Connect response, a step's failure reason) can be redacted before it is stored, logged
or printed."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr


def secret_values(model: BaseModel) -> set[str]:
    """The non-empty values of every :class:`~pydantic.SecretStr` field of ``model`` and of the
    models, lists and dicts under it, plus the passwords written into URL fields
    (``scheme://user:password@host/...``, percent-decoded too). Pure; never raises."""
    found: set[str] = set()
    _walk(model, found)
    return {s for s in found if s}


def _walk(value: object, found: set[str]) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _walk(getattr(value, name), found)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, found)
    elif isinstance(value, str) and "://" in value and "@" in value:
        _url_password(value, found)


def _url_password(text: str, found: set[str]) -> None:
    try:
        password = urlsplit(text).password
    except ValueError:
        return
    if password:
        found.update({password, unquote(password)})
