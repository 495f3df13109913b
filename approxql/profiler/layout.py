"""The data-layout what-if: what exact computation of each feature query costs on the source table,
on its prepared (sample-ordered) copy, and on a copy sorted by the query's equality-filter columns
then its range column, where zone maps skip every row group but the request's.

The sorted copy is written to an in-memory database attached for the purpose (it works on a
read-only connection too) and dropped afterwards: the source database is never written. It holds
only the rows of the profiled requests' entities (their equality-filter values), so building it
costs little on a large table; a request reads only its entity's rows either way.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa
import sqlglot
from sqlglot import exp

from ..engines.duckdb import quote
from ..params import bind_request
from ..sampling.catalog import lookup
from ..sqlparts import column_side, conjuncts, on_table
from .peak import qualified

FULL_COPY_ROWS = 5_000_000   # without equality filters the sorted copy is the whole table: only this small
_ids = itertools.count()


@dataclass(frozen=True)
class LayoutResult:
    """Median exact time of one query per layout (None: that layout does not exist here)."""

    query: str
    table: str
    source_ms: float
    prepared_ms: float | None
    sorted_ms: float | None
    sorted_by: tuple[str, ...]
    note: str = ""

    @property
    def prepared_gain(self) -> float | None:
        return self.source_ms / self.prepared_ms if self.prepared_ms else None

    @property
    def sorted_gain(self) -> float | None:
        return self.source_ms / self.sorted_ms if self.sorted_ms else None


def filter_columns(where: exp.Expression | None) -> tuple[list[tuple[str, exp.Expression]], str | None]:
    """(equality-filter columns with the request-side expression each equals, first range column)."""
    eq, rng = [], None
    for c in conjuncts(where):
        if isinstance(c, exp.EQ):
            side = column_side(c.this, c.expression)
            if side is not None:
                eq.append(side)
        elif isinstance(c, (exp.GT, exp.GTE, exp.LT, exp.LTE)) and rng is None:
            side = column_side(c.this, c.expression)
            rng = side[0] if side else None
        elif isinstance(c, exp.Between) and rng is None and isinstance(c.this, exp.Column):
            rng = c.this.name
    return eq, rng


def scan_filter(where: exp.Expression | None, by) -> exp.Expression | None:
    """The part of a WHERE that a copy sorted by ``by`` (then a key) prunes on: equalities on its
    leading entity columns, then, for an expression entry such as ``date_trunc('hour', ts)``, the
    buckets the WHERE's range on its column spans. None: nothing is pruned, the whole table."""
    parts, keep = conjuncts(where), []
    for entry in by:
        node = sqlglot.parse_one(entry, read="duckdb") if "(" in entry else exp.column(entry)
        if isinstance(node, exp.Column):
            eq = [c for c in parts if isinstance(c, exp.EQ) and (column_side(c.this, c.expression) or ("",))[0]
                  .lower() == node.name.lower()]
            if eq:
                keep.append(eq[0].copy())
                continue
            lo, hi = _bounds(parts, node.name.lower())   # a sorted column's range is a run of rows too
            keep += ([exp.GTE(this=node, expression=lo.copy())] if lo is not None else []) + (
                [exp.LTE(this=node.copy(), expression=hi.copy())] if hi is not None else [])
            break
        cols = {c.name.lower() for c in node.find_all(exp.Column)}
        lo, hi = _bounds(parts, next(iter(cols))) if len(cols) == 1 else (None, None)
        col = next(iter(cols), None)

        def at(bound):
            return node.copy().transform(lambda n: bound.copy() if isinstance(n, exp.Column)
                                         and n.name.lower() == col else n)
        keep += ([exp.GTE(this=node.copy(), expression=at(lo))] if lo is not None else []) + (
            [exp.LTE(this=node.copy(), expression=at(hi))] if hi is not None else [])
        break   # the key follows: nothing after a bucket is sorted
    return exp.and_(*keep) if keep else None


def _bounds(parts, col: str):
    """(lower, upper) bound expressions the conjuncts put on column ``col`` (None where absent)."""
    lo = hi = None
    for c in parts:
        if isinstance(c, exp.Between) and isinstance(c.this, exp.Column) and c.this.name.lower() == col:
            lo, hi = c.args["low"], c.args["high"]
        elif isinstance(c, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
            side = column_side(c.this, c.expression)
            if side is None or side[0].lower() != col:
                continue
            column_left = isinstance(c.this, exp.Column)
            if isinstance(c, (exp.GT, exp.GTE)) == column_left:
                lo = side[1]
            else:
                hi = side[1]
    return lo, hi


def measure(pipe, query, requests: Sequence[Mapping[str, Any]], repeats: int) -> LayoutResult | None:
    """Exact time of ``query`` for ``requests`` on each layout, interleaved request by request."""
    sel = query.select
    source = sel.args.get("from_")
    if len(query.tables) != 1 or source is None or not isinstance(source.this, exp.Table) or sel.args.get("joins"):
        return None
    table = query.tables[0]
    where = sel.args.get("where")
    eq, rng = filter_columns(where.this if where is not None else None)
    order = tuple([c for c, _ in eq] + ([rng] if rng and rng not in [c for c, _ in eq] else []))
    bounds = [bind_request(list(pipe.params), r) for r in requests]
    con = getattr(pipe.engine, "con", None)
    layouts = {"source": _compiled(pipe, query, None)}
    with pipe.engine.cursor() as cur:
        prepared = lookup(cur, table)
    if prepared is not None:
        layouts["prepared"] = _compiled(pipe, query, quote(prepared.relation))
    note, db = "", None
    if con is None or not order:
        note = "no sorted copy: " + ("not a DuckDB engine" if con is None else "the query filters on no column")
    else:
        db = f"__approxql_profile_{next(_ids)}"
        try:
            note = _build_sorted(con, db, table, eq, order, bounds)
            layouts["sorted"] = _compiled(pipe, query, f"{quote(db)}.main.sorted")
        except _Skip as why:
            note = str(why)
    try:
        times = _time(pipe, layouts, bounds, repeats)
    finally:
        if db is not None:
            con.execute(f"DETACH DATABASE IF EXISTS {quote(db)}")
    return LayoutResult(query.name, table, times["source"], times.get("prepared"), times.get("sorted"),
                        order if "sorted" in layouts else (), note)


class _Skip(Exception):
    pass


def _build_sorted(con, db: str, table: str, eq, order, bounds) -> str:
    """Write the sorted copy; returns what it holds, for the report."""
    con.execute(f"ATTACH ':memory:' AS {quote(db)} (READ_WRITE)")
    src = qualified(table)
    by = ", ".join(quote(c) for c in order)
    with con.cursor() as cur:
        if eq:
            values = _entity_values(cur, eq, bounds)
            cur.register("__aqp_entities", values)
            on = " AND ".join(f"s.{quote(c)} = e.v{i}" for i, (c, _) in enumerate(eq))
            cur.execute(f"CREATE TABLE {quote(db)}.main.sorted AS SELECT s.* FROM {src} AS s "
                        f"SEMI JOIN __aqp_entities AS e ON {on} ORDER BY {by}")
            cur.unregister("__aqp_entities")
            rows = cur.execute(f"SELECT count(*) FROM {quote(db)}.main.sorted").fetchall()[0][0]
            return f"sorted copy holds the {rows:,} rows of the {values.num_rows} profiled entities"
        n = cur.execute(f"SELECT count(*) FROM {src}").fetchall()[0][0]
        if n > FULL_COPY_ROWS:
            raise _Skip(f"no sorted copy: no equality filter, and the whole table ({n:,} rows) is too large to copy")
        cur.execute(f"CREATE TABLE {quote(db)}.main.sorted AS SELECT * FROM {src} ORDER BY {by}")
        return f"sorted copy of the whole table ({n:,} rows)"


def _entity_values(cur, eq, bounds) -> pa.Table:
    """The distinct values the requests' equality filters ask for (one column per filter)."""
    sel = exp.select(*[exp.alias_(rhs.copy(), f"v{i}") for i, (_, rhs) in enumerate(eq)])
    used = sorted({p.name for p in sel.find_all(exp.Placeholder)})
    sql = sel.sql("duckdb")
    rows = {tuple(cur.execute(sql, {k: b[k] for k in used}).fetchall()[0]) for b in bounds}
    rows = sorted(rows, key=repr)
    return pa.table({f"v{i}": [r[i] for r in rows] for i in range(len(eq))})


def _compiled(pipe, query, table_sql: str | None):
    return pipe.engine.compile_exact([query if table_sql is None else on_table(query, table_sql)])


def _time(pipe, layouts, bounds, repeats: int) -> dict[str, float]:
    for b in bounds:                       # warm every layout's pages first
        for c in layouts.values():
            pipe.engine.exact_features(c, b)
    times = {name: [] for name in layouts}
    for _ in range(repeats):
        for b in bounds:
            for name, c in layouts.items():
                t0 = time.perf_counter()
                pipe.engine.exact_features(c, b)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


