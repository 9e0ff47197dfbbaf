"""Masking of secrets for display: every dump, URL or message that may be printed or logged goes
through here.

A password can hide in three places of a connection string, and each is masked:

- the user-info of a URL: ``postgresql://user:SECRET@host/db`` (RFC 3986 section 3.2.1);
- a query parameter of a URL: ``postgresql://user@host/db?password=SECRET`` (libpq accepts any
  connection keyword as a URI query parameter: PostgreSQL "Connection Strings", 34.1.1.2);
- a ``keyword=value`` conninfo: ``host=h password=SECRET`` or ``password='se cret'`` (34.1.1.1).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "**********"
"""What a secret value is replaced with."""

SECRET_KEY = re.compile(r"(password|secret|token|sasl\.jaas|salt)", re.IGNORECASE)
"""Configuration keys whose values are secrets (``*_file`` keys name files, not secrets)."""

_QUERY_PASSWORD = re.compile(r"(^|[&;])(password=)([^&;#]*)", re.IGNORECASE)
# A conninfo value is a quoted string (backslash escapes) or a run of non-blanks.
_CONNINFO_PASSWORD = re.compile(
    r"(?<![\w.])(password\s*=\s*)(?!\*{10}(?:[\s&;#'\"]|$))('(?:[^'\\]|\\.)*'?|[^\s]+)", re.IGNORECASE
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_tree(node: Any, key: str = "") -> Any:
    """A copy of the plain-data tree ``node`` (dicts, lists, scalars) with the non-empty string value
    of every key matching :data:`SECRET_KEY` (but not ending in ``_file``) replaced by :data:`MASK`,
    and every other string passed through :func:`mask_text` (a URL or conninfo may carry a password
    under any key)."""
    if isinstance(node, dict):
        return {k: mask_tree(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_tree(v, key) for v in node]
    if isinstance(node, str) and node:
        if SECRET_KEY.search(key) and not key.endswith("_file"):
            return MASK
        return mask_text(node)
    return node


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info and any ``password=`` query parameter replaced
    by the mask; every other character unchanged. A text that is not a URL is returned as
    :func:`mask_text` masks it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text_conninfo(url)
    if not parts.scheme or "://" not in url:
        return mask_text_conninfo(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_text_conninfo(text: str) -> str:
    """``text`` with the value of every ``password=`` keyword of a libpq conninfo masked
    (``password=x`` and ``password = 'x y'``)."""
    return _CONNINFO_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)


def mask_text(text: str) -> str:
    """Free text (a setting value, an error message) with every URL masked by :func:`mask_url`
    and every conninfo ``password=`` value masked. Text without a password is returned unchanged."""
    if "@" not in text and "password" not in text.lower():
        return text
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    return mask_text_conninfo(text)
