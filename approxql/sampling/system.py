"""Strategy 2: DuckDB's TABLESAMPLE SYSTEM, for tables that were not prepared.

SYSTEM keeps whole 2048-row vectors, so the sampling unit is the block ``rowid // 2048``: the SQL
sums contribution columns per block and the variance is computed between blocks. Samples are not
nested, so fractions grow geometrically (x4) to keep total work within a small multiple of the
final fraction. Seeded with REPEATABLE; DuckDB repeats a SYSTEM sample only with one thread.
"""
from __future__ import annotations

from .base import SampleSource, SampleSQL, quote, value_condition
from .layout import MomentLayout
from .terms import AggregatePlan

BLOCK_ROWS = 2048
GROWTH = 4.0


class SystemSource(SampleSource):
    name = "system"
    nested = False

    def __init__(self, table: str, seed: int | None = None):
        self.table, self.seed = table, seed   # a fixed seed overrides the request's
        self._sql: dict[tuple, str] = {}

    def describe(self) -> str:
        return f"TABLESAMPLE SYSTEM on {self.table} (2048-row blocks)"

    def next_fraction(self, current: float, wanted: float) -> float:
        if wanted <= current:
            return current
        step = max(wanted, current * GROWTH)
        return 1.0 if step >= 0.5 else step  # past half the table a sample costs about as much as exact

    def increment_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float,
                      value_terms: list[int], value_cap: int, *, seed: int = 0, group=None) -> SampleSQL:
        seed = self.seed if self.seed is not None else seed
        key = tuple(value_terms)   # one template per set of value terms; percent and seed filled in
        if key not in self._sql:
            self._sql[key] = self._build(plan, layout, value_terms)
        sql = self._sql[key].replace("{percent}", f"{100.0 * hi:.10g}").replace("{seed}", str(int(seed)))
        return SampleSQL(sql, {}, clustered=True)

    def _build(self, plan: AggregatePlan, layout: MomentLayout, value_terms: list[int]) -> str:
        cols = layout.columns
        inner = [f"rowid // {BLOCK_ROWS} AS __block"] + [f"{c.sum_sql()} AS __c{i}" for i, c in enumerate(cols)]
        for t in value_terms:
            term = plan.terms[t]
            inner.append(f"COALESCE(list(({term.arg.sql('duckdb')})::DOUBLE) FILTER (WHERE {value_condition(term)}), "
                         f"[]::DOUBLE[]) AS __v{t}")  # a block without a value gives [], not NULL
        outer = ["COUNT(*)"] + [f"SUM(__c{i})" for i in range(len(cols))]
        outer += [f"SUM(__c{i} * __c{j})" for i, j in layout.block_pairs()]
        for t in value_terms:
            outer.append(f"flatten(list(__v{t} ORDER BY __block))")
            outer.append(f"list(len(__v{t}) ORDER BY __block)")
        where = f" WHERE {plan.where.sql('duckdb')}" if plan.where is not None else ""
        return (f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {quote(self.table)} "
                f"AS {quote(plan.alias)} TABLESAMPLE SYSTEM ({{percent}} PERCENT) REPEATABLE ({{seed}}){where} GROUP BY 1)")
