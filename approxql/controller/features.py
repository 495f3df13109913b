"""The model inputs of one round: point estimates, and the joint distribution of the sampled ones."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sampling import QueryResult


@dataclass(frozen=True)
class FeatureState:
    """Point estimates of every model input, in input order, and their sampling error.

    ``blocks`` are the groups of inputs whose errors are correlated (the features of one query),
    each with its covariance matrix; inputs in no block are exact.
    """

    names: tuple[str, ...]
    x0: np.ndarray
    stderr: np.ndarray
    blocks: tuple[tuple[np.ndarray, np.ndarray], ...]   # (input indexes, covariance)

    @property
    def approximate(self) -> np.ndarray:
        return np.flatnonzero(self.stderr > 0)

    def draw(self, normals: np.ndarray) -> np.ndarray:
        """Map standard-normal draws (m, d) to feature rows (m, d): x0 + L z within each block."""
        X = np.repeat(self.x0[None, :], len(normals), axis=0)
        for idx, cov in self.blocks:
            X[:, idx] += normals[:, idx] @ _cholesky(cov).T
        return X


def build_state(inputs, results: dict[str, QueryResult], fixed: dict[str, float], fill: dict[str, float]) -> FeatureState:
    """Assemble the model inputs from per-query results and exactly computed features."""
    index = {n: i for i, n in enumerate(inputs)}
    x0 = np.zeros(len(inputs))
    se = np.zeros(len(inputs))
    blocks = []
    for name in inputs:                  # lookups and request-only features, NULL checked before
        if name in fixed:
            x0[index[name]] = fill[name] if fixed[name] is None else float(fixed[name])
    for r in results.values():
        names = [n for n in r.values if n in index]
        for n in names:
            v = r.values[n]
            x0[index[n]] = fill.get(n, 0.0) if v is None else v
            se[index[n]] = 0.0 if v is None else r.stderr[n]
        order = list(r.values)
        idx = [index[n] for n in names if se[index[n]] > 0]
        if idx:
            pos = [order.index(inputs[i]) for i in idx]
            blocks.append((np.array(idx), r.cov[np.ix_(pos, pos)]))
    return FeatureState(tuple(inputs), x0, se, tuple(blocks))


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """A factor L with L L^T = cov, robust to the rounding that makes a covariance slightly indefinite."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh((cov + cov.T) / 2)
        return v * np.sqrt(np.clip(w, 0.0, None))
