"""Contribution columns: the per-row values whose totals determine every moment term.

For each moment term over argument x (with an optional FILTER f) the columns are the
indicator ``nn = [x IS NOT NULL AND f]``, the shifted value ``y = (x - c) * nn`` and, for
variances, ``y^2``. A fixed shift c (a rough center of x) keeps VAR = T[y2]/T[nn] - (T[y]/T[nn])^2
free of cancellation. Column 0 is the constant 1 (every matching row), whose sums are free.

The SQL is kept as lean as the exact query's: a value is NULL where it does not contribute, so
``COUNT(x)``, ``SUM(x - c)`` and ``SUM((x - c) * (x - c))`` need no CASE, and a FILTER stays a
FILTER. Products that a column sum already gives (nn*nn, nn*y, y*y) are not asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..estimators import Moments
from .terms import AggregatePlan

FULL_COVARIANCE_MAX_COLUMNS = 8  # above this, only products within one term are summed


@dataclass(frozen=True)
class TermSlots:
    nn: int             # column of the non-null (and filter) indicator; 0 for plain COUNT(*)
    y: int | None       # column of the shifted value
    y2: int | None      # column of its square
    shift: float


@dataclass(frozen=True)
class Column:
    """A contribution column: the constant 1 (``value`` and ``arg`` None), the indicator that
    ``arg`` is not NULL (``value`` None), or a numeric ``value`` that is NULL where it does not
    contribute; each counted only on rows passing ``filter``."""

    value: str | None = None
    arg: str | None = None
    filter: str | None = None

    def sum_sql(self) -> str:
        if self.value is not None:
            agg = f"SUM({self.value})"
        else:
            agg = f"COUNT({self.arg or '*'})"
        return agg + (f" FILTER (WHERE {self.filter})" if self.filter else "")

    def row_sql(self) -> str:
        if self.value is not None:
            return f"({self.value})"
        return "1" if self.arg is None else f"(CASE WHEN ({self.arg}) IS NOT NULL THEN 1 END)"

    def product_sql(self, other: "Column") -> str:
        filters = [f for f in dict.fromkeys((self.filter, other.filter)) if f]
        where = f" FILTER (WHERE {' AND '.join(f'({f})' for f in filters)})" if filters else ""
        return f"SUM({self.row_sql()} * {other.row_sql()}){where}"


@dataclass(frozen=True)
class MomentLayout:
    """The contribution columns of one aggregate plan and how terms read their totals."""

    columns: tuple[Column, ...]              # column 0 is the constant 1
    slots: tuple[TermSlots | None, ...]      # per plan term; None for quantile terms
    funcs: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]       # (i, j), 1 <= i <= j: products the covariance needs
    same_as: dict                            # (i, j) -> column whose row sum equals the product's

    @classmethod
    def build(cls, plan: AggregatePlan, centers: dict[str, float]) -> "MomentLayout":
        columns: list[Column] = [Column()]
        seen: dict[Column, int] = {Column(): 0}
        owner: list[set[int]] = [set()]
        same_as: dict[tuple[int, int], int] = {}  # row-level identities: nn*nn = nn, nn*y = y, y*y = y2

        def column(c: Column, term: int) -> int:
            if c not in seen:
                seen[c] = len(columns)
                columns.append(c)
                owner.append(set())
            owner[seen[c]].add(term)
            return seen[c]

        slots: list[TermSlots | None] = []
        for t, term in enumerate(plan.terms):
            if term.is_quantile:
                slots.append(None)
                continue
            arg = term.arg.sql("duckdb") if term.arg is not None and term.func != "count_star" else None
            filt = term.filter.sql("duckdb") if term.filter is not None else None
            nn = column(Column(None, arg, filt), t)
            same_as[(nn, nn)] = nn
            y = y2 = None
            shift = 0.0
            if term.func not in ("count_star", "count"):
                shift = centers.get(arg, 0.0)
                shifted = f"CAST(({arg}) AS DOUBLE)" + (f" - {float(shift)!r}" if shift else "")
                y = column(Column(shifted, arg, filt), t)
                same_as[(nn, y)] = y
                if term.func.startswith(("var", "stddev")):
                    y2 = column(Column(f"({shifted}) * ({shifted})", arg, filt), t)
                    same_as[(nn, y2)] = y2
                    same_as[(y, y)] = y2
            slots.append(TermSlots(nn, y, y2, shift))
        k = len(columns)
        # which features read each column: a feature's columns must be summed pairwise (a ratio's
        # numerator and denominator covary), whatever the number of columns
        feature_of = [{f for f, feat in enumerate(plan.features) if terms & set(feat.terms)} for terms in owner]
        if k - 1 <= FULL_COVARIANCE_MAX_COLUMNS:
            pairs = [(i, j) for i in range(1, k) for j in range(i, k)]
        else:
            pairs = [(i, j) for i in range(1, k) for j in range(i, k) if feature_of[i] & feature_of[j]]
        return cls(tuple(columns), tuple(slots), tuple(t.func for t in plan.terms), tuple(pairs), same_as)

    def summed_pairs(self) -> list[tuple[int, int]]:
        """Row-level products the SQL must sum: those no column sum already gives."""
        return [pair for pair in self.pairs if pair not in self.same_as]

    # -- SQL ----------------------------------------------------------------------------------
    def aggregates_sql(self) -> list[str]:
        """Select items: COUNT(*), then the sum of each column (1..k-1), then of each product."""
        items = ["COUNT(*)"] + [c.sum_sql() for c in self.columns[1:]]
        items += [self.columns[i].product_sql(self.columns[j]) for i, j in self.summed_pairs()]
        return items

    def block_pairs(self) -> list[tuple[int, int]]:
        """Products summed over blocks: per block, column 0 is the block's matching-row count."""
        return [(0, j) for j in range(len(self.columns))] + list(self.pairs)

    # -- numbers -------------------------------------------------------------------------------
    def moments(self, row, *, clustered: bool = False) -> Moments:
        """Moments of the contribution columns (per row, or per block when ``clustered``) from the
        leading values of one result row: the count, the column sums, then the product sums."""
        k = len(self.columns)
        n = int(row[0] or 0)
        if n == 0:
            return Moments.empty(k)
        if clustered:
            sums = np.array([float(v or 0.0) for v in row[1:k + 1]])
            pairs, products = self.block_pairs(), row[k + 1:]
        else:
            sums = np.array([n] + [float(v or 0.0) for v in row[1:k]], dtype=np.float64)
            pairs, products = self.summed_pairs(), row[k:]
        q = np.outer(sums, sums) / n   # products not summed are taken as uncorrelated
        if not clustered:
            q[0, :] = q[:, 0] = sums   # column 0 is 1 on every row
            for (i, j), c in self.same_as.items():
                q[i, j] = q[j, i] = sums[c]
        for (i, j), v in zip(pairs, products):
            q[i, j] = q[j, i] = float(v or 0.0)
        mean = sums / n
        return Moments(n, mean, q - n * np.outer(mean, mean))

    def result_width(self, *, clustered: bool) -> int:
        """How many leading result values ``moments`` reads."""
        k = len(self.columns)
        return 1 + (k + len(self.block_pairs()) if clustered else k - 1 + len(self.summed_pairs()))

    def term_values(self, totals: np.ndarray, terms=None) -> np.ndarray:
        """Moment terms (all, or just ``terms``) from the column totals; nan where SQL gives NULL."""
        out = np.full(len(self.slots), np.nan)
        for t in range(len(self.slots)) if terms is None else terms:
            if self.slots[t] is not None:
                out[t] = _term_value(self.funcs[t], self.slots[t], totals)
        return out

    def term_columns(self, t: int) -> set[int]:
        slot = self.slots[t]
        return set() if slot is None else {c for c in (slot.nn, slot.y, slot.y2) if c is not None}

    def feature_groups(self, features) -> list[tuple[list[int], list[int]]]:
        """Moment features grouped so that features sharing a column are estimated together:
        [(feature indexes, column indexes)]. With full covariance, one group."""
        cols = [set().union(*(self.term_columns(t) for t in terms)) for _, terms in features]
        groups: list[tuple[list[int], set[int]]] = []
        full = len(self.columns) - 1 <= FULL_COVARIANCE_MAX_COLUMNS
        for (i, _), c in zip(features, cols):
            hit = [g for g in groups if full or g[1] & c]
            merged = ([i], set(c))
            for g in hit:
                merged[0].extend(g[0])
                merged[1].update(g[1])
                groups.remove(g)
            groups.append(merged)
        return [(sorted(f), sorted(c)) for f, c in groups]


def _term_value(func: str, s: TermSlots, T: np.ndarray) -> float:
    nn = T[s.nn]
    if func in ("count_star", "count"):
        return nn
    if nn <= 0:
        return math.nan                  # SUM/AVG/VAR over no rows is NULL
    y = T[s.y]
    if func == "sum":
        return y + s.shift * nn
    if func == "avg":
        return y / nn + s.shift
    var_pop = max(T[s.y2] / nn - (y / nn) ** 2, 0.0)
    if func in ("var_pop", "stddev_pop"):
        v = var_pop
    else:
        if nn <= 1:
            return math.nan              # sample variance of one row is NULL
        v = var_pop * nn / (nn - 1)
    return math.sqrt(v) if func.startswith("stddev") else v
