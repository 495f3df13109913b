"""How many sampled rows an interval needs before it can be trusted.

The normal interval of an estimator is good once the estimator itself is nearly symmetric.
Cochran's rule for a sample mean, n > 25 G1^2 (G1 the population skewness), says exactly that:
the skewness of the estimator, G1 / sqrt(n), is below 0.2. The same rule is applied to the
variable each aggregate linearises to: x itself for SUM (uncentered), x - mean for AVG, and
(x - mean)^2 for VAR and STDDEV. The skewness is measured once on the whole table, never on the
sample: a sample that missed the tail also underestimates its skewness, so a sample-based rule
would trust exactly the samples that are wrong.
"""
from __future__ import annotations

import math

import duckdb
import numpy as np
from sqlglot import exp

from .base import quote
from .layout import _condition
from .terms import AggregatePlan

MIN_SUPPORT = 30
COCHRAN = 25.0
MAX_POWER = 6
_PARAM_NODES = (exp.Placeholder, exp.Parameter)


def tail_support(cur: duckdb.DuckDBPyConnection, plan: AggregatePlan, table: str,
                 centers: dict[str, float]) -> dict[int, int]:
    """Minimum sampled rows per moment term, from power sums of its argument over ``table``.
    Terms whose argument cannot be evaluated without a request (it reads a parameter) get the
    plain minimum."""
    need = {t: MIN_SUPPORT for t, term in enumerate(plan.terms) if not term.is_quantile}
    items, owners = [], []
    for t, term in enumerate(plan.terms):
        if term.is_quantile or term.func in ("count", "count_star") or term.arg is None:
            continue
        if any(term.arg.find_all(*_PARAM_NODES)) or (term.filter is not None and any(term.filter.find_all(*_PARAM_NODES))):
            continue
        cond = _condition(term).sql("duckdb")
        c = centers.get(term.arg.sql("duckdb"), 0.0)
        y = f"(TRY_CAST(({term.arg.sql('duckdb')}) AS DOUBLE) - {c!r})"
        items.append(f"COUNT(*) FILTER (WHERE {cond})")
        items += [f"SUM({' * '.join([y] * k)}) FILTER (WHERE {cond})" for k in range(1, MAX_POWER + 1)]
        owners.append(t)
    if not items:
        return need
    try:
        row = cur.execute(f"SELECT {', '.join(items)} FROM {quote(table)}").fetchall()[0]
    except duckdb.Error:
        return need
    width = MAX_POWER + 1
    for i, t in enumerate(owners):
        n, *sums = row[i * width:(i + 1) * width]
        if not n:
            continue
        raw = np.array([1.0] + [float(s or 0.0) / n for s in sums])  # E[y^k], k = 0..6
        g = _skewness(plan.terms[t].func, raw, centers.get(plan.terms[t].arg.sql("duckdb"), 0.0))
        if math.isfinite(g):
            need[t] = max(MIN_SUPPORT, int(math.ceil(COCHRAN * g * g)))
    return need


def _skewness(func: str, raw: np.ndarray, shift: float) -> float:
    """Skewness of the variable the aggregate linearises to, from raw moments of y = x - shift."""
    central = _central(raw)
    m2 = central[2]
    if m2 <= 0:
        return 0.0                       # a constant column: no sampling error at all
    if func == "sum":                    # HT total: uncentered x = y + shift
        x_raw = _shift_raw(raw, shift)
        return x_raw[3] / x_raw[2] ** 1.5 if x_raw[2] > 0 else 0.0
    if func == "avg":
        return central[3] / m2 ** 1.5
    var_u = central[4] - m2 ** 2       # u = (x - mean)^2
    if var_u <= 0:
        return 0.0
    return (central[6] - 3 * central[4] * m2 + 2 * m2 ** 3) / var_u ** 1.5


def _central(raw: np.ndarray) -> np.ndarray:
    """Central moments E[(y - E y)^k] from raw moments E[y^k]."""
    mu = raw[1]
    return np.array([sum(math.comb(k, j) * raw[j] * (-mu) ** (k - j) for j in range(k + 1)) for k in range(len(raw))])


def _shift_raw(raw: np.ndarray, shift: float) -> np.ndarray:
    """Raw moments of y + shift from raw moments of y."""
    return np.array([sum(math.comb(k, j) * raw[j] * shift ** (k - j) for j in range(k + 1)) for k in range(len(raw))])
