"""Strategy 3: exact. The fraction is always 1: the same code path, with variance 0."""
from __future__ import annotations

from .base import SampleSource, SampleSQL
from .layout import MomentLayout
from .terms import AggregatePlan


class ExactSource(SampleSource):
    name = "exact"
    nested = True

    def next_fraction(self, current: float, wanted: float) -> float:
        return 1.0

    def increment_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float,
                      value_terms: list[int], value_cap: int, *, seed: int = 0, group=None) -> SampleSQL:
        raise AssertionError("the exact strategy never samples: QuerySampler computes fraction 1 exactly")
