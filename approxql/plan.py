"""Feature queries as plain data: what each statement of a pipeline computes.

A plan knows nothing about the engine that runs it. It holds the parsed statement
(a sqlglot tree), the features it produces and the parameters it reads. Engines compile
plans into their own SQL dialect.
"""
from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass

from sqlglot import exp

from .params import Param


class QueryKind(enum.Enum):
    AGGREGATE = "aggregate"  # aggregates over a table: the expensive part, approximated later
    LOOKUP = "lookup"        # reads a table without aggregating: computed exactly, 0 or 1 row
    REQUEST = "request"      # no FROM: a function of the request alone, exact and free


@dataclass(frozen=True)
class FeatureQuery:
    """One statement of a pipeline file."""

    name: str                    # q1, q2, ... in file order
    kind: QueryKind
    select: exp.Select           # the statement with every $param cast to its declared type
    features: tuple[str, ...]    # select-list aliases, in order
    params: tuple[str, ...]      # request parameters the statement reads
    tables: tuple[str, ...]      # base tables it reads
    line: int                    # first line of the statement in the pipeline file

    def sql(self, dialect: str = "duckdb") -> str:
        return self.select.sql(dialect)


class PlanError(ValueError):
    """A statement cannot be a feature query; the pipeline loader adds file and line."""


def build_query(name: str, statement: exp.Expression, params: list[Param], line: int) -> FeatureQuery:
    """Validate one parsed statement and describe it as a FeatureQuery."""
    if not isinstance(statement, exp.Select):
        kind = type(statement).__name__.upper()
        raise PlanError(f"only SELECT statements are allowed in a pipeline file (it can only read), found {kind}")
    statement.comments = None  # comments stay in the file, not in every generated statement
    if statement.args.get("group"):
        raise PlanError("a feature query must return one row: GROUP BY is not allowed, filter with WHERE instead")
    features = tuple(_feature_names(statement))
    declared = {p.name: p for p in params}
    used = []
    for node in list(statement.find_all(exp.Placeholder, exp.Parameter)):
        pname = "" if node.name == "?" else node.name
        if not pname or pname.isdigit():
            raise PlanError(f"positional parameter {node.sql('duckdb')!r}: use a named parameter such as $carrier")
        if pname not in declared:
            hint = difflib.get_close_matches(pname, list(declared), n=1)
            raise PlanError(
                f"unknown parameter ${pname}" + (f" (did you mean ${hint[0]}?)" if hint else "")
                + f"; declared params: {', '.join(declared) or 'none'}"
            )
        if pname not in used:
            used.append(pname)
        node.replace(exp.Cast(this=exp.Placeholder(this=pname), to=declared[pname].type.copy()))
    ctes = {c.alias_or_name for c in statement.find_all(exp.CTE)}
    tables = tuple(dict.fromkeys(
        _table_name(t) for t in statement.find_all(exp.Table)
        if t.name and t.name not in ctes and not isinstance(t.this, exp.Func)
    ))
    if statement.args.get("from_") is None and not statement.args.get("joins"):
        kind = QueryKind.REQUEST
        if any(statement.find_all(exp.AggFunc)):
            raise PlanError("an aggregate needs a FROM clause")
    elif any(_top_level_aggregates(statement)):
        kind = QueryKind.AGGREGATE
    else:
        kind = QueryKind.LOOKUP
    used_in_declared_order = tuple(p.name for p in params if p.name in used)
    return FeatureQuery(name, kind, statement, features, used_in_declared_order, tables, line)


def _feature_names(select: exp.Select) -> list[str]:
    names: list[str] = []
    for i, item in enumerate(select.expressions, start=1):
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            raise PlanError("SELECT * is not allowed: name every feature with AS")
        if isinstance(item, exp.Alias):
            name = item.alias
        elif isinstance(item, exp.Column):
            name = item.name
        else:
            raise PlanError(f"select item {i} ({item.sql('duckdb')}) needs a feature name: add AS name")
        if name in names:
            raise PlanError(f"feature {name!r} is produced twice by this statement")
        names.append(name)
    return names


def _top_level_aggregates(select: exp.Select):
    """Aggregates of this SELECT itself, not of subqueries inside it."""
    for item in select.expressions:
        for agg in item.find_all(exp.AggFunc):
            if agg.find_ancestor(exp.Select) is select:
                yield agg


def _table_name(table: exp.Table) -> str:
    return ".".join(part for part in (table.catalog, table.db, table.name) if part)


# types whose bound Python value (params.coerce) is exactly what DuckDB returns for CAST($p AS type)
# (not FLOAT, DECIMAL or text types: DuckDB rounds or converts those)
_PASSTHROUGH_TYPES = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT,
                      exp.DataType.Type.BIGINT, exp.DataType.Type.DOUBLE, exp.DataType.Type.BOOLEAN}


def passthrough_params(query: FeatureQuery, params: list[Param]) -> dict[str, str] | None:
    """For a request-only query whose every feature is just a parameter (``SELECT $t AS elapsed``),
    feature -> parameter: its values are the bound request's, with no statement to run (a round
    trip of 0.5-1.4 ms measured in each sampled request). None for any other query."""
    select = query.select
    if query.kind is not QueryKind.REQUEST or any(v for k, v in select.args.items() if k != "expressions"):
        return None
    declared = {p.name: p for p in params}
    out = {}
    for name, item in zip(query.features, select.expressions):
        node = item.this if isinstance(item, exp.Alias) else item
        if not (isinstance(node, exp.Cast) and isinstance(node.this, exp.Placeholder)):
            return None
        param = declared.get(node.this.name)
        if param is None or param.type.this not in _PASSTHROUGH_TYPES or node.to != param.type:
            return None
        out[name] = param.name
    return out
