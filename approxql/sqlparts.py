"""Small readings and rewrites of a feature query's SQL tree, shared by exact plans, sampling and
the profiler."""
from __future__ import annotations

from dataclasses import replace

import sqlglot
from sqlglot import exp

from .engines.duckdb import quote
from .plan import FeatureQuery


def conjuncts(where: exp.Expression | None) -> list[exp.Expression]:
    """The terms of a WHERE's top-level AND."""
    if where is None:
        return []
    if isinstance(where, exp.Paren):
        return conjuncts(where.this)
    if isinstance(where, exp.And):
        return conjuncts(where.this) + conjuncts(where.expression)
    return [where]


def column_side(a: exp.Expression, b: exp.Expression) -> tuple[str, exp.Expression] | None:
    """(column name, other side) when exactly one side is a bare column and the other reads none."""
    for col, other in ((a, b), (b, a)):
        if isinstance(col, exp.Column) and not any(other.find_all(exp.Column)) and not isinstance(other, exp.Column):
            return col.name, other
    return None


def equality_pins(query: FeatureQuery) -> dict[str, exp.Expression]:
    """Columns (lower case) the query's WHERE pins to one value each (``col = $param``), and what
    each is pinned to."""
    where = query.select.args.get("where")
    pinned = {}
    for c in conjuncts(where.this if where is not None else None):
        side = column_side(c.this, c.expression) if isinstance(c, exp.EQ) else None
        if side is not None:
            pinned[side[0].lower()] = side[1]
    return pinned


def equality_columns(query: FeatureQuery) -> set[str]:
    """Columns (lower case) the query's WHERE pins to one value each: ``col = $param``."""
    return set(equality_pins(query))


def single_table(query: FeatureQuery) -> bool:
    """Whether the query reads one base table and nothing else (no join, no subquery source)."""
    sel = query.select
    source = sel.args.get("from_")
    return (len(query.tables) == 1 and source is not None and isinstance(source.this, exp.Table)
            and not sel.args.get("joins"))


def on_table(query: FeatureQuery, table_sql: str) -> FeatureQuery:
    """The query reading ``table_sql`` instead of its table, under the name it refers to it by."""
    sel = query.select.copy()
    node = sel.args["from_"].this
    alias = node.alias_or_name
    new = sqlglot.parse_one(f"SELECT 1 FROM {table_sql} AS {quote(alias)}", read="duckdb").args["from_"].this
    node.replace(new)
    return replace(query, select=sel)
