"""A feature query's cost as ``time = overhead + rows x per-row cost``, with how well that line fits.

The one-term fit is the controller's ``LinearCost`` (least squares, overhead and slope kept >= 0),
so the profiler judges the model the planner plans with. A sampled statement on a prepared copy
reads the rows of its entity's key range, not only the rows its WHERE keeps (a time window inside
the entity is not pruned by the sample order), so ``fit_scan`` adds that second term:
``time = overhead + matching rows x b + scanned rows x c`` (non-negative least squares). The fit
error tells whether a what-if built on the line can be trusted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy.optimize import nnls

from ..controller.costs import LinearCost


@dataclass(frozen=True)
class CostFit:
    """One statement's fitted cost. ``rel_rmse`` is the RMSE of the fit over the mean time (the
    typical error of a prediction, relative); ``r2`` is NaN when the rows did not vary."""

    overhead_ms: float
    per_row_ms: float                 # per matching row read
    n: int
    rel_rmse: float
    r2: float
    rows_range: tuple[float, float]
    per_scanned_ms: float = 0.0       # per row of the scan range read (``fit_scan``)

    def predict(self, rows: float, scanned: float = 0.0) -> float:
        return self.overhead_ms + self.per_row_ms * rows + self.per_scanned_ms * scanned

    @property
    def marginal_rows_per_s(self) -> float | None:
        """Matching rows per second of the per-row part alone (None when the slope is 0)."""
        return 1e3 / self.per_row_ms if self.per_row_ms > 0 else None


def fit(points: Iterable[tuple[float, float]], *, overhead_ms: float | None = None) -> CostFit | None:
    """Least-squares line through (rows, ms) points; None without points. With ``overhead_ms``
    (measured directly) only the slope is fitted, through that intercept."""
    pts = [(float(r), float(ms)) for r, ms in points if r is not None and ms is not None]
    if not pts:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if overhead_ms is None:
        line = LinearCost(prior_overhead=0.0, prior_slope=0.0)   # one size only: the mean as overhead, no slope
        for rows, ms in pts:
            line.add(rows, ms)
        overhead, slope = line.fit()
    else:
        overhead = overhead_ms
        slope = max(float(np.sum(x * (y - overhead)) / np.sum(x * x)), 0.0) if np.any(x > 0) else 0.0
    return _judged(x, y, overhead, slope, 0.0, overhead + slope * x)


def fit_scan(points: Iterable[tuple[float, float, float]]) -> CostFit | None:
    """Non-negative least squares of ms on (1, matching rows, scanned rows) over (rows, scanned, ms)
    points; the one-term line when the two row counts move together (one carries no news)."""
    pts = [(float(r), float(s), float(ms)) for r, s, ms in points if r is not None and s is not None]
    if not pts:
        return None
    a = np.array(pts)
    x, s, y = a[:, 0], a[:, 1], a[:, 2]
    if len(pts) < 3 or np.ptp(s / np.maximum(x, 1.0)) <= 1e-9 * max(np.max(s / np.maximum(x, 1.0)), 1.0):
        return fit(zip(x, y))
    scale = np.array([1.0, max(x.max(), 1.0), max(s.max(), 1.0)])      # comparable columns for nnls
    coef, _ = nnls(np.column_stack([np.ones_like(x), x, s]) / scale, y)
    overhead, per_row, per_scan = coef / scale
    return _judged(x, y, overhead, per_row, per_scan, overhead + per_row * x + per_scan * s)


def _judged(x, y, overhead, per_row, per_scan, predicted) -> CostFit:
    resid = y - predicted
    rel = float(math.sqrt(np.mean(resid ** 2)) / np.mean(y)) if np.mean(y) > 0 else float("nan")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 and np.ptp(x) > 0 else float("nan")
    return CostFit(float(overhead), float(per_row), len(y), rel, r2, (float(x.min()), float(x.max())), float(per_scan))
