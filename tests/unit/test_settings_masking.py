"""Masking of passwords in connection strings (issue 22, defect 3): URL user-info, a URL's
``password=`` query parameter (libpq URIs take any keyword there) and libpq ``keyword=value``
conninfo."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.settings.masking import MASK, mask_text, mask_tree, mask_url


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u@h/db?password=x&sslmode=require", "postgresql://u@h/db?password=**********&sslmode=require"),
        ("postgresql://u@h/db?sslmode=require;PASSWORD=x", "postgresql://u@h/db?sslmode=require;PASSWORD=**********"),
        ("host=h password=s3cr3t dbname=app", "host=h password=********** dbname=app"),
        ("host=h password = 'se cr\\'et' dbname=app", "host=h password = ********** dbname=app"),
        ("connect to postgresql://u:pw@h:5/db failed", "connect to postgresql://u:**********@h:5/db failed"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("user:pw@host without a scheme", "user:pw@host without a scheme"),
    ],
)
def test_mask_text_masks_every_place_of_a_password(text: str, masked: str) -> None:
    assert mask_text(text) == masked
    assert mask_text(masked) == masked  # idempotent


def test_mask_url_masks_the_query_password_and_keeps_the_rest() -> None:
    assert mask_url("postgresql://u:SECRET@h/db?password=SECRET2") == f"postgresql://u:{MASK}@h/db?password={MASK}"
    assert mask_url("mysql+pymysql://u:p%40ss@[::1]:3306/db") == f"mysql+pymysql://u:{MASK}@[::1]:3306/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_mask_tree_masks_secret_keys_and_connection_strings() -> None:
    tree = {"password": "a", "password_file": "/run/pw", "items": [{"dsn": "host=h password=b"}], "n": 1}
    assert mask_tree(tree) == {
        "password": MASK,
        "password_file": "/run/pw",
        "items": [{"dsn": f"host=h password={MASK}"}],
        "n": 1,
    }


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and "*" not in s))
def test_no_password_survives_in_any_form(password: str) -> None:
    encoded = quote(password, safe="")
    url = f"postgresql://u:{encoded}@h:5432/db?sslmode=require&password={encoded}"
    masked = f"postgresql://u:{MASK}@h:5432/db?sslmode=require&password={MASK}"
    assert mask_url(url) == masked
    assert mask_text(f"cannot connect: {url} (timeout)") == f"cannot connect: {masked} (timeout)"
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    conninfo = f"host=h password={quoted} dbname=db"
    assert mask_text(conninfo) == f"host=h password={MASK} dbname=db"
