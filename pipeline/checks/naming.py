"""Target table names, computed as the data plane computes them, and their collisions.

A change of source table ``schema.table`` is applied to ``<target.schema>.<table>`` (the source
schema is dropped), unless the last matching transform ``route`` names another table. Two source
tables that end up in one target table would silently merge (rows of one overwriting rows of the
other by key), and a user table landing on the pipeline's own heartbeat table crashes the worker;
so every collision is refused before anything connects. The names come from the compiled
transforms (:meth:`~pipeline.transform.transformer.Transformer.target_for`, the rule the runtime
uses), over the tables a pipeline applies: its ``tables`` (or, when unset, its source's), plus the
source's heartbeat table (applied for lag measurement). The pipeline's control schema
(``target.control_schema``: offsets, tombstones, truncations, known columns, verification
results) is reserved as a whole, and so are the sink's own column names (``__cdc_*``).

Pipelines writing to one database (same scheme family, host, port and database in
``target.url``) share the namespace: a collision across pipelines is one too. The heartbeat tables
of several sources may share a target table (it holds one row per source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from connectors.debezium import heartbeat_table
from pipeline.core.events import TableId
from pipeline.core.settings.loading import ConfigError
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.transform.rule import TransformConfigError
from pipeline.transform.transformer import Transformer, build_transformer
from sinks.postgres.ddl import OWN_PREFIX, ROW_ID, VERSION_COLUMNS


class TargetNameError(ConfigError):
    """Target names that collide; ``problems`` holds one line per collision, naming both sides
    and the fix (see :func:`check_target_names`)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """One source table as a pipeline applies it: where its target name comes from.

    ``key`` is the configuration key that decides the name (``pipelines[p].tables``,
    ``sources[s].tables``, ``pipelines[p].transforms[i].route``, ``pipelines[p].target.schema``
    for the heartbeat table); ``heartbeat`` marks the source's heartbeat table.
    """

    pipeline: str
    source: str
    table: TableId
    key: str
    heartbeat: bool = False

    def describe(self, with_pipeline: bool = True) -> str:
        """``'s1.t' of source 'app' (pipeline 'p')``, naming the heartbeat table as such."""
        own = "the pipeline's heartbeat table " if self.heartbeat else ""
        text = f"{own}{str(self.table)!r} of source {self.source!r}"
        return f"{text} (pipeline {self.pipeline!r})" if with_pipeline else text


def database_identity(url: str) -> str:
    """Which database ``url`` names, for comparing the targets of two pipelines: the scheme family
    (``postgres`` = ``postgresql``, ``mariadb`` = ``mysql``; drivers ignored), host, port and path;
    user and password are ignored. Unparsable URLs are their own identity."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower().split("+", 1)[0]
    scheme = {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}:{port or ''}{parts.path}"


def applied_tables(source: SourceSettings, pipeline: PipelineSettings) -> list[tuple[TableId, bool]]:
    """``(source table, is the heartbeat table)`` for every table ``pipeline`` applies: its
    ``tables`` (or the source's), then the source's heartbeat table unless listed already."""
    hb = heartbeat_table(source)
    heartbeat = TableId(hb.schema, hb.table)
    tables = [TableId(*name.split(".", 1)) for name in (pipeline.tables or source.tables)]
    out = [(table, table == heartbeat) for table in tables]
    if heartbeat not in tables:
        out.append((heartbeat, True))
    return out


def target_names(
    source: SourceSettings, pipeline: PipelineSettings, transformer: Transformer
) -> list[tuple[TableId, Origin]]:
    """``(target table, origin)`` of every table ``pipeline`` applies, as the worker names them:
    the last matching ``route`` of ``transformer``, else ``<target.schema>.<table>``."""
    out: list[tuple[TableId, Origin]] = []
    default_key = f"pipelines[{pipeline.name}].tables" if pipeline.tables else f"sources[{source.name}].tables"
    for table, heartbeat in applied_tables(source, pipeline):
        routed = transformer.target_for(table)
        if routed is not None:
            label = [rule.label for rule in transformer.rules_for(table) if rule.route is not None][-1]
            key = f"pipelines[{pipeline.name}].{label}.route"
            target = routed
        else:
            key = f"pipelines[{pipeline.name}].target.schema" if heartbeat else default_key
            target = TableId(pipeline.target.schema_name, table.table)
        out.append((target, Origin(pipeline.name, source.name, table, key, heartbeat)))
    return out


def _column_problems(pipeline: PipelineSettings, transformer: Transformer, tables: Sequence[TableId]) -> list[str]:
    """Renamed or added columns that take a name of the sink's own columns (``__cdc_*``)."""
    own = ", ".join((*VERSION_COLUMNS, ROW_ID))
    found: dict[str, None] = {}
    for table in tables:
        for rule in transformer.rules_for(table):
            named = [("rename", new) for new in rule.rename.values()] + [("add_columns", a.name) for a in rule.added]
            for key, name in named:
                if name.startswith(OWN_PREFIX):
                    found.setdefault(
                        f"pipelines[{pipeline.name}].{rule.label}.{key}: column {name!r} takes the sink's "
                        f"reserved prefix {OWN_PREFIX!r} (its own columns: {own}); choose another name"
                    )
    return list(found)


def _collision_line(target: TableId, origins: list[Origin]) -> str:
    ordered = sorted(origins, key=lambda o: (o.heartbeat, o.pipeline, str(o.table)))
    first, other = ordered[0], ordered[-1]
    several = len({o.pipeline for o in ordered}) > 1
    sides = ", ".join(o.describe(several) for o in ordered[:-1]) + f" and {other.describe(several)}"
    where = (
        f" of one target database, by pipelines {', '.join(sorted({o.pipeline for o in ordered}))}" if several else ""
    )
    moved = other if not other.heartbeat else first
    suggestion = f"{moved.table.schema}_{moved.table.table}"
    both = "both" if len(ordered) == 2 else "all"
    dropped = len({o.table.schema for o in ordered}) > 1 and len({o.table.table for o in ordered}) == 1
    why = " (the source schema is dropped from target names)" if dropped else ""
    return (
        f"{first.key}: {sides} would {both} be applied to target table {str(target)!r}{where}{why}"
        f" - fix: a route transform in pipeline "
        f"{moved.pipeline!r}, e.g. {{match: {str(moved.table)!r}, route: '{target.schema}.{suggestion}'}}, "
        "or leave one of the tables out of the pipeline's tables"
    )


def _control_line(target: TableId, origin: Origin, owner: str) -> str:
    return (
        f"{origin.key}: {origin.describe()} would be applied to {str(target)!r}, inside the control schema "
        f"{target.schema!r} of pipeline {owner!r} (target.control_schema: the pipeline's offsets, tombstones, "
        "truncations and verification tables) - fix: a route transform to another schema"
    )


def check_target_names(sources: Sequence[SourceSettings], pipelines: Sequence[PipelineSettings]) -> list[str]:
    """Every target-name collision of ``pipelines``, one ``key.path: problem - fix`` line each
    (empty when there is none): two source tables applied to one target table (within a pipeline,
    or across pipelines of one database), a table applied into a control schema, a renamed or added
    column named like the sink's own columns. Pipelines whose source is unknown or whose transforms
    do not compile are skipped (those problems are reported by their own checks)."""
    by_name = {s.name: s for s in sources}
    entries: dict[tuple[str, TableId], list[Origin]] = {}
    reserved: dict[tuple[str, str], str] = {}
    in_control: set[str] = set()  # pipelines whose target.schema is their control schema (reported once)
    problems: list[str] = []
    for pipe in pipelines:
        source = by_name.get(pipe.source)
        if source is None:
            continue
        try:
            transformer = build_transformer(pipe.transforms, pipe.mask_salt)
        except TransformConfigError:
            continue
        db = database_identity(pipe.target.url)
        reserved.setdefault((db, pipe.target.control_schema), pipe.name)
        if pipe.target.schema_name == pipe.target.control_schema:
            in_control.add(pipe.name)
            problems.append(
                f"pipelines[{pipe.name}].target.schema: {pipe.target.schema_name!r} is also target.control_schema, "
                "the schema of the pipeline's own control tables - fix: choose another target.schema"
            )
        named = target_names(source, pipe, transformer)
        for target, origin in named:
            entries.setdefault((db, target), []).append(origin)
        problems.extend(_column_problems(pipe, transformer, [origin.table for _, origin in named]))
    for (db, target), origins in entries.items():
        users = [o for o in origins if not o.heartbeat]
        if len(users) > 1 or (users and len(users) < len(origins)):
            problems.append(_collision_line(target, origins))
        owner = reserved.get((db, target.schema))
        if owner is None:
            continue
        for origin in origins:
            if origin.key.endswith(".route") or origin.pipeline not in in_control:
                problems.append(_control_line(target, origin, owner))
    return problems


def require_unique_target_names(settings: Settings) -> None:
    """Raise :class:`TargetNameError` (problem lines as :func:`check_target_names` gives them) when
    target names of ``settings`` collide; for the worker and control replica, before they connect."""
    problems = check_target_names(settings.sources, settings.pipelines)
    if problems:
        raise TargetNameError(problems)
