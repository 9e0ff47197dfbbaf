"""Which target a pipeline writes to, from ``target.url``'s scheme, and the sink object for it.

The one place that maps a URL scheme to a backend; nothing else branches on the target kind.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pipeline.core.settings.models import PipelineSettings, TargetSettings
from sinks.base import Sink, Target
from sinks.postgres.target import PostgresTarget
from sinks.sqlalchemy.target import SqlAlchemyTarget


class UnsupportedTargetError(ValueError):
    """The target URL's scheme names no sink this build has."""


POSTGRES_SCHEMES = ("postgresql", "postgres")
# Scheme -> SQLAlchemy driver name used for it (PyMySQL is the MySQL-family driver we ship).
SQLALCHEMY_SCHEMES = {
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
}
SUPPORTED_SCHEMES = ("postgresql://", "mysql+pymysql://", "mariadb+pymysql://", "sqlite:///")


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def target_kind(target: TargetSettings) -> str:
    """``postgresql`` or ``sqlalchemy``: which sink family ``target.url`` selects.

    Raises UnsupportedTargetError naming the supported schemes.
    """
    scheme = _scheme(target.url)
    if scheme.split("+", 1)[0] in POSTGRES_SCHEMES:
        return "postgresql"
    if scheme in SQLALCHEMY_SCHEMES:
        return "sqlalchemy"
    raise UnsupportedTargetError(
        f"target.url: unsupported scheme {scheme or target.url!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
    )


def target_conninfo(target: TargetSettings) -> str:
    """libpq conninfo of a ``postgresql://`` (or ``postgresql+driver://``) target, with the
    password from ``target.password`` when the URL has none. Raises UnsupportedTargetError."""
    scheme, sep, rest = target.url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in POSTGRES_SCHEMES:
        raise UnsupportedTargetError(f"target.url: unsupported scheme {scheme!r} (use postgresql://)")
    url = f"postgresql://{rest}"
    if target.password is not None and urlsplit(url).password is None:
        return make_conninfo(url, password=target.password.get_secret_value())
    return url


def target_sqlalchemy_url(target: TargetSettings) -> URL:
    """The SQLAlchemy URL object of a MariaDB/MySQL or SQLite target: plain ``mysql://`` and
    ``mariadb://`` get the PyMySQL driver, and ``target.password`` is set on the URL object when
    the URL has none (the password is never formatted into a string or logged).

    Raises UnsupportedTargetError for another scheme or an unparsable URL.
    """
    scheme = _scheme(target.url)
    if scheme not in SQLALCHEMY_SCHEMES:
        raise UnsupportedTargetError(
            f"target.url: unsupported scheme {scheme or target.url!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
        )
    try:
        url = make_url(target.url)
    except ArgumentError as exc:
        raise UnsupportedTargetError(f"target.url: not a valid SQLAlchemy URL ({exc})") from None
    url = url.set(drivername=SQLALCHEMY_SCHEMES[scheme])
    if target.password is not None and url.password is None:
        url = url.set(password=target.password.get_secret_value())
    return url


def target_user(target: TargetSettings) -> str | None:
    """The role a pipeline connects to its target as (the URL's user name; ``target.url`` is any
    supported URL), or None when the URL names none (libpq then uses the OS user). Raises
    UnsupportedTargetError for an unparsable URL."""
    try:
        return make_url(target.url).username
    except ArgumentError as exc:
        raise UnsupportedTargetError(f"target.url: not a valid URL ({exc})") from None


def make_sink(pipeline: PipelineSettings) -> Sink:
    """The sink for ``pipeline.target`` chosen by the URL scheme: ``postgresql://`` -> the
    PostgreSQL fast path (:class:`PostgresSink`); ``mysql[+pymysql]://``,
    ``mariadb[+pymysql]://`` and ``sqlite:///`` -> :class:`SqlAlchemySink`.

    Raises UnsupportedTargetError (naming ``pipelines[<name>].target.url``) for other schemes.
    """
    return make_target(pipeline, purpose="worker")


def make_target(pipeline: PipelineSettings, *, purpose: str = "worker") -> Target:
    """The :class:`sinks.base.Target` of ``pipeline.target``, chosen by the URL scheme
    (``postgresql://`` -> :class:`PostgresTarget`; ``mysql[+pymysql]://``, ``mariadb[+pymysql]://``
    and ``sqlite:///`` -> :class:`SqlAlchemyTarget`); ``purpose`` goes into the PostgreSQL ``application_name``
    (``cdc-pipeline:<pipeline>:<purpose>``).

    Raises UnsupportedTargetError (naming ``pipelines[<name>].target.url``) for other schemes.
    """
    target = pipeline.target
    try:
        if target_kind(target) == "postgresql":
            return PostgresTarget(
                target_conninfo(target),
                control_schema=target.control_schema,
                create_tables=target.create_tables,
                add_columns=target.add_columns,
                application_name=f"cdc-pipeline:{pipeline.name}:{purpose}",
                stall_timeout_s=target.stall_timeout_s,
                drop_dropped_columns=target.dropped_columns == "drop",
                renames=target.rename_columns,
                versions=target.versions,
            )
        return SqlAlchemyTarget(
            target_sqlalchemy_url(target),
            control_schema=target.control_schema,
            create_tables=target.create_tables,
            add_columns=target.add_columns,
            stall_timeout_s=target.stall_timeout_s,
            drop_dropped_columns=target.dropped_columns == "drop",
            renames=target.rename_columns,
            versions=target.versions,
        )
    except UnsupportedTargetError as exc:
        raise UnsupportedTargetError(f"pipelines[{pipeline.name}].{exc}") from None
