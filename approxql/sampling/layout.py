"""Contribution columns: the per-row values whose totals determine every moment term.

For each moment term over argument x (with an optional FILTER f) the columns are the
indicator ``nn = [x IS NOT NULL AND f]``, the shifted value ``y = (x - c) * nn`` and, for
variances, ``y^2``. A fixed shift c (a rough center of x) keeps VAR = T[y2]/T[nn] - (T[y]/T[nn])^2
free of cancellation. Column 0 is the constant 1 (every matching row), whose sums are free.
The SQL asks for the sum of every column and of the products the covariance needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from ..estimators import Moments
from .terms import AggregatePlan, Term

FULL_COVARIANCE_MAX_COLUMNS = 8  # above this, only products within one term are summed


@dataclass(frozen=True)
class TermSlots:
    nn: int             # column of the non-null (and filter) indicator; 0 for plain COUNT(*)
    y: int | None       # column of the shifted value
    y2: int | None      # column of its square
    shift: float


@dataclass(frozen=True)
class MomentLayout:
    """The contribution columns of one aggregate plan and how terms read their totals."""

    columns: tuple[exp.Expression, ...]      # column 0 is the literal 1
    slots: tuple[TermSlots | None, ...]      # per plan term; None for quantile terms
    funcs: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]       # (i, j), 1 <= i <= j: products summed in SQL

    @classmethod
    def build(cls, plan: AggregatePlan, centers: dict[str, float]) -> "MomentLayout":
        columns: list[exp.Expression] = [exp.Literal.number(1)]
        seen: dict[str, int] = {"1": 0}
        owner: list[set[int]] = [set()]

        def column(e: exp.Expression, term: int) -> int:
            key = e.sql("duckdb")
            if key not in seen:
                seen[key] = len(columns)
                columns.append(e)
                owner.append(set())
            owner[seen[key]].add(term)
            return seen[key]

        slots: list[TermSlots | None] = []
        for t, term in enumerate(plan.terms):
            if term.is_quantile:
                slots.append(None)
                continue
            cond = _condition(term)
            nn = 0 if cond is None else column(_indicator(cond), t)
            y = y2 = None
            shift = 0.0
            if term.func not in ("count_star", "count"):
                shift = centers.get(term.arg.sql("duckdb"), 0.0)
                shifted = _shifted(term.arg, shift)
                y = column(_when(cond, shifted), t)
                if term.func.startswith(("var", "stddev")):
                    y2 = column(_when(cond, exp.Pow(this=exp.paren(shifted.copy()), expression=exp.Literal.number(2))), t)
            slots.append(TermSlots(nn, y, y2, shift))
        k = len(columns)
        if k - 1 <= FULL_COVARIANCE_MAX_COLUMNS:
            pairs = [(i, j) for i in range(1, k) for j in range(i, k)]
        else:
            pairs = [(i, j) for i in range(1, k) for j in range(i, k) if owner[i] & owner[j]]
        return cls(tuple(columns), tuple(slots), tuple(t.func for t in plan.terms), tuple(pairs))

    # -- SQL ----------------------------------------------------------------------------------
    def aggregates_sql(self, dialect: str = "duckdb") -> list[str]:
        """Select items: COUNT(*), then SUM of each column (1..k-1), then SUM of each product pair."""
        cols = [c.sql(dialect) for c in self.columns]
        items = ["COUNT(*)"]
        items += [f"SUM({c})" for c in cols[1:]]
        items += [f"SUM(({cols[i]}) * ({cols[j]}))" for i, j in self.pairs]
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
            pairs, products = self.pairs, row[k:]
        q = np.outer(sums, sums) / n   # products not summed are taken as uncorrelated
        if not clustered:
            q[0, :] = q[:, 0] = sums   # column 0 is 1 on every row
        for (i, j), v in zip(pairs, products):
            q[i, j] = q[j, i] = float(v or 0.0)
        mean = sums / n
        return Moments(n, mean, q - n * np.outer(mean, mean))

    def result_width(self, *, clustered: bool) -> int:
        """How many leading result values ``moments`` reads."""
        k = len(self.columns)
        return 1 + (k + len(self.block_pairs()) if clustered else k - 1 + len(self.pairs))

    def term_values(self, totals: np.ndarray) -> np.ndarray:
        """Every moment term from the column totals (nan where SQL gives NULL; quantiles nan)."""
        out = np.full(len(self.slots), np.nan)
        for t, (slot, func) in enumerate(zip(self.slots, self.funcs)):
            if slot is not None:
                out[t] = _term_value(func, slot, totals)
        return out


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


def _condition(term: Term) -> exp.Expression | None:
    parts = []
    if term.arg is not None and term.func != "count_star":
        parts.append(exp.Not(this=exp.Is(this=term.arg.copy(), expression=exp.Null())))
    if term.filter is not None:
        parts.append(exp.paren(term.filter.copy()))
    if not parts:
        return None
    return exp.and_(*parts) if len(parts) > 1 else parts[0]


def _indicator(cond: exp.Expression) -> exp.Expression:
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=exp.Literal.number(1))], default=exp.Literal.number(0))


def _when(cond: exp.Expression | None, value: exp.Expression) -> exp.Expression:
    if cond is None:
        return value
    return exp.Case(ifs=[exp.If(this=cond.copy(), true=value)], default=exp.Literal.number(0))


def _shifted(arg: exp.Expression, shift: float) -> exp.Expression:
    value = exp.Cast(this=exp.paren(arg.copy()), to=exp.DataType.build("DOUBLE"))
    if shift == 0.0:
        return value
    return exp.Sub(this=value, expression=exp.Literal.number(repr(float(shift))))
