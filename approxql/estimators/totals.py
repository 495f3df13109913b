"""Horvitz-Thompson totals and the delta method for smooth functions of them.

Every aggregate is g(T) for a vector T of population totals.  Under Bernoulli(p)
sampling of clusters, T_hat = S / p is unbiased and Cov(T_hat) is estimated by
(1-p)/p^2 * sum z z^T; the delta method carries that to g(T_hat) through one
Jacobian, so features of one query get a full covariance matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np

from .moments import Moments

# Central differences: truncation ~ h^2, rounding ~ eps/h; balanced at h ~ eps^(1/3).
_DEFAULT_REL_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)
# 5-point stencil: truncation ~ h^4, rounding ~ eps/h; balanced at h ~ eps^(1/5).
_DIR_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 5.0)


@dataclass(frozen=True)
class ConfidenceInterval:
    low: float
    high: float


def _check_level(level: float) -> float:
    if not isinstance(level, (int, float, np.floating)) or not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    return float(level)


def z_value(level: float) -> float:
    """Two-sided standard-normal critical value for a confidence level (1.959964 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + _check_level(level) / 2.0)   # scipy's norm.ppf: 200x the time


@dataclass(frozen=True)
class Estimate:
    """One feature's estimate from a sample."""

    value: float
    stderr: float  # 0.0 when exact
    exact: bool
    support: int  # number of sampled matching rows (or clusters) behind it

    def __post_init__(self):
        if self.stderr < 0:
            raise ValueError(f"stderr must be >= 0 (or nan), got {self.stderr!r}")

    def interval(self, level: float = 0.95) -> ConfidenceInterval:
        """Normal interval value +/- z * stderr; a single point when stderr is 0."""
        z = z_value(level)
        if self.stderr == 0.0:
            return ConfidenceInterval(self.value, self.value)
        half = z * self.stderr
        return ConfidenceInterval(self.value - half, self.value + half)


def check_p(p: float) -> float:
    """Validate a Bernoulli sampling rate, which must lie in (0, 1]."""
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"sampling rate p must be a number in (0, 1], got {p!r}") from None
    if not 0.0 < pf <= 1.0:  # also rejects nan
        raise ValueError(f"sampling rate p must be in (0, 1], got {p!r}")
    return pf


def estimate_totals(moments: Moments, p: float) -> tuple[np.ndarray, np.ndarray]:
    """HT totals T_hat = S/p and their covariance (1-p)/p^2 * sum z z^T (zero matrix at p == 1)."""
    p = check_p(p)
    t_hat = moments.total / p
    if p == 1.0:
        return t_hat, np.zeros((moments.k, moments.k))
    szz = moments.comoment + moments.n * np.outer(moments.mean, moments.mean)
    return t_hat, (1.0 - p) / (p * p) * szz


def _eval(g: Callable, t: np.ndarray, m: int | None = None) -> np.ndarray | None:
    """g(t) as a float vector; None if g raised on a division by zero (numpy gives nan instead)."""
    try:
        with np.errstate(all="ignore"):
            out = np.atleast_1d(np.asarray(g(t.copy()), dtype=np.float64))
    except (ZeroDivisionError, FloatingPointError, OverflowError):
        return None if m is None else np.full(m, np.nan)
    if out.ndim != 1 or (m is not None and out.shape != (m,)):
        raise ValueError(f"g must return a vector of shape (m,), got shape {out.shape}")
    return out


def _steps(t: np.ndarray, scale: np.ndarray | None, rel: float) -> np.ndarray:
    """Per-coordinate steps relative to |T_i| (or a scale hint when T_i ~ 0), exactly representable."""
    s = np.abs(t)
    if scale is not None:
        s = np.maximum(s, np.abs(scale))
    s = np.where(s > 0, s, 1.0)
    h = rel * s
    return (t + h) - t


def _jacobian(g: Callable, t: np.ndarray, rel: float, scale=None) -> tuple[np.ndarray, np.ndarray]:
    values = _eval(g, t)
    if values is None:  # feature count unknown; report one undefined feature
        return np.full(1, np.nan), np.full((1, t.shape[0]), np.nan)
    m, k = values.shape[0], t.shape[0]
    J = np.empty((m, k))
    h = _steps(t, scale, rel)
    finite = np.isfinite(values)
    for i in range(k):
        hi = h[i]
        for _ in range(4):
            tp, tm = t.copy(), t.copy()
            tp[i] += hi
            tm[i] -= hi
            with np.errstate(all="ignore"):
                col = (_eval(g, tp, m) - _eval(g, tm, m)) / (tp[i] - tm[i])
            # A step can leave g's domain (e.g. sqrt of a variance near 0); retry smaller.
            if np.all(np.isfinite(col) | ~finite):
                break
            hi = (t[i] + hi * 1e-3) - t[i]
            if hi == 0.0:
                break
        J[:, i] = col
    return values, J


def _directional(g: Callable, t: np.ndarray, m: int) -> np.ndarray:
    """d/ds g(t (1 + s)) at s = 0 by the 5-point stencil (error O(s^4), so a larger step).

    Along t itself the step never leaves g's domain in practice (it rescales all
    totals together) and ratios such as AVG do not change at all, so their
    derivative comes out as ~0 instead of as a cancellation of large terms.
    """
    s = (1.0 + _DIR_STEP) - 1.0
    f = [_eval(g, t * (1.0 + c * s), m) for c in (2.0, 1.0, -1.0, -2.0)]
    with np.errstate(all="ignore"):
        return (-f[0] + 8.0 * f[1] - 8.0 * f[2] + f[3]) / (12.0 * s)


def _check_rel(eps) -> float:
    if eps is None:
        return _DEFAULT_REL_STEP
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"relative step eps must be in (0, 1), got {eps!r}")
    return float(eps)


def _nan_result(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Propagate non-finite feature values as nan rows/columns of the covariance."""
    bad = ~np.isfinite(values)
    return np.where(bad, np.nan, values), bad


def delta_method(g: Callable, T_hat, cov_T, *, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values g(T_hat) (shape (m,)) and covariance J cov J^T of m features.

    g: callable mapping a totals vector (k,) to feature values (m,); use numpy
    operations so that 0/0 yields nan.  J by central finite differences with a
    relative step per coordinate.  Prefer feature_covariance when Moments are at hand.
    """
    rel = _check_rel(eps)
    t = np.asarray(T_hat, dtype=np.float64)
    cov = np.asarray(cov_T, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"T_hat must be a vector of shape (k,), got shape {t.shape}")
    k = t.shape[0]
    if cov.shape != (k, k):
        raise ValueError(f"cov_T must have shape ({k}, {k}) to match T_hat, got shape {cov.shape}")
    scale = np.sqrt(np.abs(np.diag(cov)))
    values, J = _jacobian(g, t, rel, scale)
    values, bad = _nan_result(values)
    with np.errstate(all="ignore"):
        out = J @ cov @ J.T
    out = 0.5 * (out + out.T)
    out[bad, :] = np.nan
    out[:, bad] = np.nan
    return values, out


def feature_covariance(
    g: Callable, moments: Moments, p: float, *, eps: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values and covariance of g(T_hat) using J, then (1-p)/p^2 * moments.quad(J). Use this in preference.

    J @ mean is taken as a directional derivative of g along T_hat (T_hat is
    parallel to the mean), which is exactly ~0 for ratios such as AVG instead of
    a difference of two large finite-difference terms.  At p == 1 the covariance
    is exactly zero (no sampling error).
    """
    p = check_p(p)
    rel = _check_rel(eps)
    t = moments.total / p
    if p == 1.0:   # no Jacobian needed: the covariance is zero
        v = _eval(g, t)
        return covariance_from_jacobian(np.full(1, np.nan) if v is None else v, None, None, moments, p)
    # Scale hint per coordinate: root of sum z^2 / p, for totals that are ~0 by cancellation.
    szz_diag = np.diag(moments.comoment) + moments.n * moments.mean**2
    scale = np.sqrt(np.maximum(szz_diag, 0.0)) / p
    values, J = _jacobian(g, t, rel, scale)
    j_dir = _directional(g, t, values.shape[0]) if moments.n > 0 else None
    return covariance_from_jacobian(values, J, j_dir, moments, p)


def covariance_from_jacobian(values, J, j_dir, moments: Moments, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Values and covariance of g(T_hat) from g's Jacobian ``J`` (m, k) at T_hat and its derivative
    along T_hat itself ``j_dir`` (m,), both unused at p = 1 (zero covariance): the tail of
    ``feature_covariance``, and all of it for callers that know both in closed form (no 2k + 5
    evaluations of g by finite differences: about 1 ms a round for nine AVGs)."""
    p = check_p(p)
    values, bad = _nan_result(np.asarray(values, dtype=np.float64).reshape(-1))
    m = values.shape[0]
    if p == 1.0:
        cov = np.zeros((m, m))
    else:
        # t(1+s) = t + (s n / p) * mean, so d g / d(mean direction) = dg/ds * p / n.
        j_mean = np.asarray(j_dir, dtype=np.float64) * (p / moments.n) if moments.n > 0 else np.full(m, np.nan)
        with np.errstate(all="ignore"):
            cov = (1.0 - p) / (p * p) * moments.quad(np.asarray(J, dtype=np.float64), j_mean=j_mean)
    cov[bad, :] = np.nan
    cov[:, bad] = np.nan
    return values, cov


def make_estimates(values, cov, *, support: int, exact: bool) -> list[Estimate]:
    """One Estimate per feature from delta-method values and covariance (stderr = sqrt of the diagonal)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (values.shape[0], values.shape[0]):
        raise ValueError(
            f"cov must have shape ({values.shape[0]}, {values.shape[0]}) to match values, got {cov.shape}"
        )
    out = []
    for v, var in zip(values, np.diag(cov)):
        if exact and math.isfinite(v):
            se = 0.0
        elif math.isnan(var):
            se = math.nan
        else:
            se = math.sqrt(max(var, 0.0))  # tiny negatives are rounding in J M J^T
        out.append(Estimate(float(v), se, bool(exact), int(support)))
    return out
