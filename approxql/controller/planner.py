"""approxql's planner: predict the fraction each query needs, go there in one step.

An approximate feature's variance shrinks like (1 - p) / p. With the output change per standard
error s_j from the secants, the output variance is about sum_q V_q (1 - p_q) / p_q * p0_q / (1 - p0_q)
with V_q = sum of s_j^2 over the query's features. The cheapest fractions that bring it under
sigma*^2 (the variance at which a normal output stays within delta with probability tau) follow
from a Lagrangian: p_q proportional to sqrt(k_q / a_q), with a_q the query's cost per unit of
fraction, clipped to [p_now, 1]. A query is computed exactly when that is predicted no dearer
than sampling it further. Minimum support comes first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..estimators import z_value

MARGIN = 1.25          # go a little past the predicted fraction: one round beats two
EXACT_ABOVE = 0.5      # past half the rows, sampling costs about what exact costs


@dataclass(frozen=True)
class QueryPlanInput:
    name: str
    fraction: float
    nested: bool
    variance_share: float     # V_q: output variance per unit of the query's current error
    needed: float             # fraction its minimum support needs (0 when trusted or ignored)
    matching: float           # estimated matching rows
    sample_ms_per_row: float
    sample_overhead_ms: float
    exact_ms: float           # predicted cost of computing it exactly


_STANDARD = NormalDist()   # inv_cdf in 0.2 us; scipy's norm.ppf took 42 us, twice a round (one-sided here)


def target_sigma(task: str, delta: float | None, tau: float, margin: float | None = None) -> float:
    """Output standard deviation below which the bound holds for a normal output.
    For classification ``margin`` is the label's probability lead over the decision boundary."""
    if task == "regression":
        return delta / z_value(tau)
    return max(margin or 0.0, 1e-6) / _STANDARD.inv_cdf(tau)


def plan_fractions(queries: list[QueryPlanInput], sigma: float, *, stalled: bool) -> dict[str, float]:
    """Next fraction per query (1.0 = exact), asked for when the bound was missed. ``stalled``:
    the last plan did not reach the bound although it predicted it would (a non-normal output):
    then the most sensitive query doubles. So it does when the variance model says the bound is
    already met and the plan would read nothing more: the output is not normal here either (at
    1e6 rows per request, 12 of 80 turbofan requests went from a 0.1 % sample at probability
    0.84-0.95 straight to exact, its random forest's output far from normal)."""
    target = {q.name: q.fraction for q in queries}
    for q in queries:                       # minimum support first
        if q.needed > q.fraction:
            target[q.name] = max(target[q.name], q.needed * MARGIN)
    live = [q for q in queries if q.variance_share > 0 and q.fraction < 1.0]
    if live:
        k = {q.name: q.variance_share * q.fraction / max(1.0 - q.fraction, 1e-9) for q in live}
        a = {q.name: max(q.sample_ms_per_row * q.matching, 1e-9) for q in live}
        budget = sigma ** 2 + sum(k.values())
        fixed: dict[str, float] = {}
        while True:                          # water-filling: clip one side at a time, re-solve the rest
            free = [q for q in live if q.name not in fixed]
            if not free:
                break
            rest = budget - sum(k[n] / p for n, p in fixed.items())
            if rest <= 0:
                fixed.update({q.name: 1.0 for q in free})
                break
            scale = sum(math.sqrt(k[q.name] * a[q.name]) for q in free) / rest
            p = {q.name: math.sqrt(k[q.name] / a[q.name]) * scale for q in free}
            over = [q for q in free if p[q.name] >= 1.0]
            if over:                         # these go exact; the others must then carry more
                fixed.update({q.name: 1.0 for q in over})
                continue
            under = [q for q in free if p[q.name] <= q.fraction]
            if under:                        # already below what they have: keep what they have
                fixed.update({q.name: q.fraction for q in under})
                continue
            fixed.update(p)
            break
        for name, p in fixed.items():
            if p > target[name]:
                target[name] = p * MARGIN
        if stalled or all(min(target[q.name], 1.0) <= q.fraction for q in queries):
            top = max(live, key=lambda q: q.variance_share)
            target[top.name] = max(target[top.name], 2 * top.fraction)
    out = {}
    for q in queries:
        p = min(target[q.name], 1.0)
        if p > q.fraction:
            extra = (p - q.fraction) if q.nested else p
            if p >= EXACT_ABOVE or q.exact_ms <= q.sample_overhead_ms + q.sample_ms_per_row * q.matching * extra:
                p = 1.0
        out[q.name] = p
    return out


def predicted_variance(queries: list[QueryPlanInput], fractions: dict[str, float]) -> float:
    """Output variance the planner expects at ``fractions`` (variance shrinks like (1 - p) / p)."""
    total = 0.0
    for q in queries:
        p = fractions.get(q.name, q.fraction)
        if p < 1.0 and q.variance_share > 0:
            total += q.variance_share * (1 - p) / p * q.fraction / (1 - q.fraction)
    return total


def variance_shares(sensitivity: np.ndarray, inputs: list[str], query_features: dict[str, list[str]]) -> dict[str, float]:
    """V_q per query: the sum of squared output changes per standard error of its inputs."""
    index = {n: i for i, n in enumerate(inputs)}
    return {q: float(sum(sensitivity[index[f]] ** 2 for f in feats if f in index))
            for q, feats in query_features.items()}
