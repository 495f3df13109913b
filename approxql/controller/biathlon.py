"""The original Biathlon policy, kept as the baseline approxql's planner must beat.

As published: every aggregate query starts at 5 %; each round a Saltelli design with 128 base
points (128 x (queries + 2) model rows) gives the probability that the prediction is within the
bound and each query's first-order Sobol index; the query with the highest index / (cost slope x
remaining fraction) receives the whole step of 1 % x number of queries.
"""
from __future__ import annotations

import numpy as np

from ..model import ModelOutput, OnnxModel
from .features import FeatureState
from .propagation import Propagation, judge, normal_draws

START = 0.05
STEP = 0.01
BASE_POINTS = 128


def saltelli(model: OnnxModel, state: FeatureState, groups: dict[str, np.ndarray], *, task: str,
             delta: float | None, seed: int) -> tuple[Propagation, dict[str, float]]:
    """Probability from the A sample, and the first-order Sobol index of each group of inputs
    (Saltelli 2010: S_g = mean(f(B) (f(A_B^g) - f(A))) / Var f)."""
    d = len(state.x0)
    z = normal_draws(2 * d, BASE_POINTS, seed)
    za, zb = z[:, :d], z[:, d:]
    names = list(groups)
    mats = [state.draw(za), state.draw(zb)]
    for g in names:
        zab = za.copy()
        zab[:, groups[g]] = zb[:, groups[g]]
        mats.append(state.draw(zab))
    out = model.run(np.vstack([state.x0[None, :], *mats]))
    m = BASE_POINTS
    y = out.values.astype(np.float64) if task == "regression" else (out.values == out.values[0]).astype(np.float64)
    ya, yb = y[1:1 + m], y[1 + m:1 + 2 * m]
    var = float(np.var(np.concatenate([ya, yb])))
    indices = {}
    for i, g in enumerate(names):
        yab = y[1 + (2 + i) * m:1 + (3 + i) * m]
        indices[g] = float(np.mean(yb * (yab - ya)) / var) if var > 0 else 0.0
    head = ModelOutput(out.values[:1 + m], None if out.probabilities is None else out.probabilities[:1 + m], out.classes)
    return judge(head, task=task, delta=delta), indices


def biathlon_step(fractions: dict[str, float], indices: dict[str, float], slopes: dict[str, float]) -> dict[str, float]:
    """Give the whole step to the query with the best index per cost of its remaining rows."""
    open_ = [q for q, p in fractions.items() if p < 1.0]
    if not open_:
        return dict(fractions)
    score = {q: max(indices.get(q, 0.0), 0.0) / (max(slopes[q], 1e-12) * (1.0 - fractions[q])) for q in open_}
    best = max(open_, key=lambda q: score[q])
    out = dict(fractions)
    out[best] = min(1.0, fractions[best] + STEP * len(fractions))
    return out
