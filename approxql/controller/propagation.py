"""Propagating feature uncertainty through the model: the probability that the approximate
prediction is within delta of (or has the same label as) the exact one."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import norm, qmc

from ..model import ModelOutput, scalar


@dataclass(frozen=True)
class Propagation:
    probability: float       # share of draws within the bound
    value: object            # prediction at the point estimates


@lru_cache(maxsize=256)
def normal_draws(d: int, m: int, seed: int) -> np.ndarray:
    """m scrambled-Sobol points in d dimensions mapped to standard normals (cached: building a
    scrambled Sobol engine costs more than the model batch; the array is read-only)."""
    if d == 0:
        return np.zeros((m, 0))
    u = qmc.Sobol(d, scramble=True, seed=np.random.default_rng(seed)).random(m)
    z = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
    z.flags.writeable = False
    return z


def judge(out: ModelOutput, *, task: str, delta: float | None) -> Propagation:
    """Row 0 is the point prediction; the rest are draws."""
    y0, ys = out.values[0], out.values[1:]
    if task == "regression":
        return Propagation(float(np.mean(np.abs(ys - y0) <= delta)), scalar(y0))
    return Propagation(float(np.mean(ys == y0)), scalar(y0))


def label_probability(out: ModelOutput, label) -> np.ndarray:
    """Each row's probability of ``label``; its column found from the rows that predict it."""
    proba = out.probabilities
    if out.classes is not None and label in out.classes:
        return proba[:, list(out.classes).index(label)]
    rows = np.flatnonzero(out.values == label)
    col = int(np.bincount(np.argmax(proba[rows], axis=1)).argmax()) if len(rows) else int(np.argmax(proba[0]))
    return proba[:, col]
