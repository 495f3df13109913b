"""Strategy 1: a prepared sample order. Fraction p is the range ``key < p`` on the sample-ordered
copy; raising p to p2 reads only ``p <= key < p2``, and the partial sums merge."""
from __future__ import annotations

from .base import SampleSource, SampleSQL, quote, value_condition
from .catalog import KEY, PreparedTable
from .layout import MomentLayout
from .terms import AggregatePlan


class PreparedSource(SampleSource):
    name = "prepared"
    nested = True

    def __init__(self, prepared: PreparedTable):
        self.prepared = prepared
        self._sql: dict[tuple, str] = {}  # the text depends only on which terms fetch values

    def describe(self) -> str:
        return f"prepared sample order {self.prepared.copy} (by {', '.join(self.prepared.by)})"

    def increment_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float,
                      value_terms: list[int], value_cap: int, *, check_source: bool, seed: int = 0) -> SampleSQL:
        key = (tuple(value_terms), check_source)
        if key not in self._sql:
            self._sql[key] = self._build(plan, layout, value_terms, check_source)
        params = {"__lo": lo, "__hi": hi}
        if value_terms:
            params["__cap"] = value_cap
        return SampleSQL(self._sql[key], params, clustered=False)

    def _build(self, plan: AggregatePlan, layout: MomentLayout, value_terms: list[int], check_source: bool) -> str:
        items = layout.aggregates_sql()
        for t in value_terms:
            term = plan.terms[t]
            cond = value_condition(term)
            items.append(f"(list(({term.arg.sql('duckdb')})::DOUBLE ORDER BY {KEY}) FILTER (WHERE {cond}))[1:$__cap]")
            items.append(f"(list({KEY} ORDER BY {KEY}) FILTER (WHERE {cond}))[$__cap]")
        if check_source:
            items.append(f"(SELECT count(*) FROM {quote(self.prepared.source)})")
        where = f"({plan.where.sql('duckdb')}) AND " if plan.where is not None else ""
        return (f"SELECT {', '.join(items)} FROM {quote(self.prepared.copy)} "
                f"WHERE {where}{KEY} >= $__lo AND {KEY} < $__hi")
