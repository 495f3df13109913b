"""A feature query's peak rate: its aggregates over every row of its table, reading the same columns.

The WHERE becomes ``c = c`` for each column it reads: every row passes (but NULLs, which the filter
drops anyway), nothing can be pruned and the columns are really read (a bare COUNT(*) or MIN over
a whole table is answered from metadata). A full scan amortises the per-statement costs over all
rows: its rows per second is the most this engine and machine deliver for the query, and a
request's statements are judged against it. ``warm`` runs the same scans untimed on the table and
its prepared copy, so that a profile measures a server whose data is in memory, not disk reads;
``warm_rows`` reads just what given requests read, for tables larger than memory.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

from sqlglot import exp

from ..engines.duckdb import quote
from ..params import bind_request
from ..sampling.catalog import KEY, lookup
from ..sqlparts import on_table


@dataclass(frozen=True)
class Peak:
    rows: int            # rows of the table
    ms: float            # median time of the full scan
    runs: int

    @property
    def rows_per_ms(self) -> float:
        return self.rows / self.ms if self.ms > 0 else float("inf")


def measure(pipe, query, request: Mapping[str, Any], repeats: int) -> Peak | None:
    """Median of ``repeats`` full scans (after one untimed); None for a query over several tables."""
    scan = full_scan(query)
    if scan is None:
        return None
    compiled = pipe.engine.compile_exact([scan])
    bound = bind_request(list(pipe.params), request)
    with pipe.engine.cursor() as cur:
        rows = cur.execute(f"SELECT count(*) FROM {qualified(query.tables[0])}").fetchall()[0][0]
    pipe.engine.exact_features(compiled, bound)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.engine.exact_features(compiled, bound)
        times.append((time.perf_counter() - t0) * 1e3)
    return Peak(int(rows), statistics.median(times), repeats)


def warm(pipe, request: Mapping[str, Any]) -> None:
    """Read every column the aggregate queries read, on their tables and prepared copies, once."""
    bound = bind_request(list(pipe.params), request)
    for q in pipe.spec.aggregate_queries:
        scan = full_scan(q)
        if scan is None:
            continue
        pipe.engine.exact_features(pipe.engine.compile_exact([scan]), bound)
        with pipe.engine.cursor() as cur:
            prepared = lookup(cur, q.tables[0])
        if prepared is not None:   # a sample reads the copy's key column too
            copy = on_table(full_scan(q, also=(KEY,)), quote(prepared.copy))
            pipe.engine.exact_features(pipe.engine.compile_exact([copy]), bound)


def warm_rows(pipe, requests) -> None:
    """Read the rows each request's aggregate queries read, on their tables and prepared copies,
    once: a run of these requests then finds its rows in memory even where the tables do not fit
    (``warm`` on bearing at 3.2e8 rows, 22 GB with its copy, beside a sorted copy in a second
    database: 33 GB of full scans on a 24 GB machine, which swapped)."""
    bound = [bind_request(list(pipe.params), request) for request in requests]
    for q in pipe.spec.aggregate_queries:
        reads = [pipe.engine.compile_exact([q])]
        if full_scan(q) is not None:   # one table: its copy too, with the key a sample reads
            with pipe.engine.cursor() as cur:
                prepared = lookup(cur, q.tables[0])
            if prepared is not None:
                keyed = replace(q, select=q.select.where(f"{quote(KEY)} = {quote(KEY)}", dialect="duckdb", copy=True))
                reads.append(pipe.engine.compile_exact([on_table(keyed, quote(prepared.copy))]))
        for params in bound:
            for compiled in reads:
                pipe.engine.exact_features(compiled, params)


def full_scan(query, also: tuple[str, ...] = ()):
    """The query over every row of its one table (None when it reads several, or a subquery)."""
    sel = query.select
    source = sel.args.get("from_")
    if len(query.tables) != 1 or source is None or not isinstance(source.this, exp.Table) or sel.args.get("joins"):
        return None
    sel = sel.copy()
    where = sel.args.get("where")
    columns = [] if where is None else [c.sql("duckdb") for c in where.find_all(exp.Column)]
    columns = list(dict.fromkeys(columns + [quote(c) for c in also]))
    sel.set("where", None)
    if columns:
        sel = sel.where(" AND ".join(f"{c} = {c}" for c in columns), dialect="duckdb")
    used = {p.name for p in sel.find_all(exp.Placeholder)}
    return replace(query, select=sel, params=tuple(p for p in query.params if p in used))


def qualified(name: str) -> str:
    """A possibly schema-qualified table name, each part quoted."""
    return ".".join(quote(part) for part in name.split("."))
