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
from .terms import AggregatePlan, Term

MIN_SUPPORT = 30
COCHRAN = 25.0
# Block samples estimate the standard error from the blocks, far fewer than the rows: the
# studentised estimate is more skewed than the plain one. Measured: lognormal(1.5) AVG covered
# 0.948 with rows but 0.912 with 2048-row blocks at the same 25 G^2 rows; blocks need twice as many.
CLUSTER_FACTOR = 2.0
MAX_POWER = 6
UNMEASURED = 2 ** 62   # support no sample reaches
_PARAM_NODES = (exp.Placeholder, exp.Parameter)


def tail_support(cur: duckdb.DuckDBPyConnection, plan: AggregatePlan, table: str,
                 centers: dict[str, float]) -> dict[int, int]:
    """Minimum sampled rows per moment term, from power sums of its argument over ``table``
    (one pass; one set of sums per distinct argument and filter). Terms whose argument reads a
    request parameter get the plain minimum."""
    need = {t: MIN_SUPPORT for t, term in enumerate(plan.terms) if not term.is_quantile}
    variables: dict[tuple, list[int]] = {}     # (argument, condition) -> terms reading it
    # a SUM inside a ratio (or any formula of several terms) linearises to a centred variable
    in_formula = {t for f in plan.features if len(f.terms) > 1 for t in f.terms}
    for t, term in enumerate(plan.terms):
        if term.is_quantile or term.func in ("count", "count_star") or term.arg is None:
            continue
        if any(term.arg.find_all(*_PARAM_NODES)) or (term.filter is not None and any(term.filter.find_all(*_PARAM_NODES))):
            continue
        variables.setdefault((term.arg.sql("duckdb"), _condition(term).sql("duckdb")), []).append(t)
    if not variables:
        return need
    items, powers = [], []
    for (arg, cond), terms in variables.items():
        top = MAX_POWER if any(plan.terms[t].func.startswith(("var", "stddev")) for t in terms) else 3
        y = f"(TRY_CAST(({arg}) AS DOUBLE) - {centers.get(arg, 0.0)!r})"
        items.append(f"COUNT(*) FILTER (WHERE {cond})")
        items += [f"SUM({' * '.join([y] * k)}) FILTER (WHERE {cond})" for k in range(1, top + 1)]
        powers.append(top)
    try:
        row = cur.execute(f"SELECT {', '.join(items)} FROM {quote(table)}").fetchall()[0]
    except duckdb.Error:
        return need
    at = 0
    for ((arg, _), terms), top in zip(variables.items(), powers):
        n, *sums = row[at:at + top + 1]
        at += top + 1
        if not n:
            continue
        raw = np.array([1.0] + [float(v or 0.0) / n for v in sums] + [math.nan] * (MAX_POWER - top))
        for t in terms:
            func = "avg" if plan.terms[t].func == "sum" and t in in_formula else plan.terms[t].func
            try:
                with np.errstate(all="ignore"):
                    g = _skewness(func, raw, centers.get(arg, 0.0))
            except (OverflowError, ZeroDivisionError):
                g = math.inf
            # values too large for their power sums (about 1e51 and up): the tail cannot be
            # measured, so no sample is trusted and the term is computed exactly
            need[t] = max(MIN_SUPPORT, int(math.ceil(COCHRAN * g * g))) if math.isfinite(g) else UNMEASURED
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
    """Central moments E[(y - E y)^k] from raw moments E[y^k] (nan where a power was not summed)."""
    mu = raw[1]
    return np.array([sum(math.comb(k, j) * raw[j] * (-mu) ** (k - j) for j in range(k + 1)) for k in range(len(raw))])


def _shift_raw(raw: np.ndarray, shift: float) -> np.ndarray:
    """Raw moments of y + shift from raw moments of y."""
    return np.array([sum(math.comb(k, j) * raw[j] * shift ** (k - j) for j in range(k + 1)) for k in range(len(raw))])


def _condition(term: Term) -> exp.Expression | None:
    parts = []
    if term.arg is not None and term.func != "count_star":
        parts.append(exp.Not(this=exp.Is(this=term.arg.copy(), expression=exp.Null())))
    if term.filter is not None:
        parts.append(exp.paren(term.filter.copy()))
    if not parts:
        return None
    return exp.and_(*parts) if len(parts) > 1 else parts[0]
