"""Mergeable first and second moments of per-cluster contribution vectors.

The database returns, per sample increment, the cluster count, the mean vector
and the *centered* co-moment matrix of the contribution columns.  Keeping the
second moment centered (instead of raw sums of squares) is what keeps variances
accurate for columns like timestamps or money amounts around 1e9 with a small
spread; increments are combined with the parallel update of Chan et al.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_float_array(x, name: str) -> np.ndarray:
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {x!r}") from exc
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)  # eq on ndarray fields would raise; compare fields explicitly
class Moments:
    """Cluster count, mean vector and centered co-moment matrix of the contribution columns of a sample."""

    n: int
    mean: np.ndarray  # shape (k,)
    comoment: np.ndarray  # shape (k, k), sum of (z-mean)(z-mean)^T

    def __post_init__(self):
        n = self.n
        if isinstance(n, (float, np.floating)) and float(n).is_integer():
            n = int(n)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"Moments.n must be a non-negative integer, got {self.n!r}")
        mean = _as_float_array(self.mean, "Moments.mean")
        comoment = _as_float_array(self.comoment, "Moments.comoment")
        if mean.ndim != 1:
            raise ValueError(f"Moments.mean must be a vector of shape (k,), got shape {mean.shape}")
        k = mean.shape[0]
        if comoment.shape != (k, k):
            raise ValueError(
                f"Moments.comoment must have shape ({k}, {k}) to match mean of shape ({k},), "
                f"got shape {comoment.shape}"
            )
        object.__setattr__(self, "n", int(n))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "comoment", comoment)

    @property
    def k(self) -> int:
        """Number of contribution columns."""
        return self.mean.shape[0]

    @classmethod
    def empty(cls, k: int) -> "Moments":
        """Moments of a sample with no clusters; the identity for merge."""
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        return cls(0, np.zeros(k), np.zeros((k, k)))

    @classmethod
    def from_rows(cls, z: np.ndarray) -> "Moments":
        """Moments of explicit contribution rows z of shape (n, k) (two-pass, so centered and stable)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"z must have shape (n, k), got shape {z.shape}")
        n, k = z.shape
        if n == 0:
            return cls.empty(k)
        mean = z.mean(axis=0)
        d = z - mean
        # Second pass corrects the rounding error of the first mean (matters at 1e9 offsets).
        corr = d.mean(axis=0)
        mean = mean + corr
        d = d - corr
        return cls(n, mean, d.T @ d)

    @classmethod
    def from_covar_pop(cls, n: int, mean, covar_pop) -> "Moments":
        """Build from SQL avg() and covar_pop() results: comoment = n * covar_pop.

        With n == 0 the database returns NULLs; pass None (or NaN) and get empty moments.
        """
        if n == 0:
            k = np.asarray(mean, dtype=object).shape[0]
            return cls.empty(k)
        return cls(n, mean, np.asarray(covar_pop, dtype=np.float64) * n)

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of two disjoint samples (Chan et al. parallel update)."""
        if not isinstance(other, Moments):
            raise ValueError(f"can only merge Moments with Moments, got {type(other).__name__}")
        if other.k != self.k:
            raise ValueError(
                f"cannot merge Moments with {self.k} columns and Moments with {other.k} columns"
            )
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        comoment = self.comoment + other.comoment + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, comoment)

    def __add__(self, other: "Moments") -> "Moments":
        return self.merge(other)

    @property
    def total(self) -> np.ndarray:
        """Sum of z over the sample (n * mean)."""
        return self.n * self.mean

    def quad(self, J: np.ndarray, *, j_mean: np.ndarray | None = None) -> np.ndarray:
        """J (sum z z^T) J^T as J M J^T + n (J mean)(J mean)^T, without forming sum z z^T.

        J has shape (m, k) (a vector of shape (k,) is treated as one row); returns (m, m).
        j_mean, if given, replaces J @ mean: callers that can compute it more accurately
        (e.g. as a directional derivative, where it cancels to ~0 for ratios) should.
        """
        J = np.asarray(J, dtype=np.float64)
        if J.ndim == 1:
            J = J[np.newaxis, :]
        if J.ndim != 2 or J.shape[1] != self.k:
            raise ValueError(
                f"J must have shape (m, {self.k}) to match {self.k} contribution columns, "
                f"got shape {J.shape}"
            )
        if j_mean is None:
            j_mean = J @ self.mean
        else:
            j_mean = np.asarray(j_mean, dtype=np.float64).reshape(-1)
            if j_mean.shape != (J.shape[0],):
                raise ValueError(
                    f"j_mean must have shape ({J.shape[0]},) to match J, got shape {j_mean.shape}"
                )
        out = J @ self.comoment @ J.T + self.n * np.outer(j_mean, j_mean)
        return 0.5 * (out + out.T)
