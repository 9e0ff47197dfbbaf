"""Masking of secrets for display: every dump or URL that may be printed or logged goes through here."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "**********"
"""What a secret value is replaced with."""

SECRET_KEY = re.compile(r"(password|secret|token|sasl\.jaas|salt)", re.IGNORECASE)
"""Configuration keys whose values are secrets (``*_file`` keys name files, not secrets)."""


def mask_tree(node: Any, key: str = "") -> Any:
    """A copy of the plain-data tree ``node`` (dicts, lists, scalars) with the non-empty string value
    of every key matching :data:`SECRET_KEY` (but not ending in ``_file``) replaced by :data:`MASK`."""
    if isinstance(node, dict):
        return {k: mask_tree(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_tree(v, key) for v in node]
    if isinstance(node, str) and node and SECRET_KEY.search(key) and not key.endswith("_file"):
        return MASK
    return node


def mask_url(url: str) -> str:
    """``url`` with any password in its user-info replaced by the mask; other parts unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
