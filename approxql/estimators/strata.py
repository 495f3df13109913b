"""Per-stratum moments of a stratified sample, and the totals and covariance they give.

A read by position of a copy prepared with ``stratify`` is a stratified simple random sample:
n_h of the N_h rows of stratum h (rows that fail the query's WHERE count as zero vectors).
T_hat = sum_h N_h * mean_h is unbiased, with covariance sum_h N_h^2 (1 - n_h / N_h) S_h / n_h,
S_h the stratum's sample covariance. Only the spread inside strata enters, so along a trend the
interval is as narrow as the sample really is, where the simple-random formula would charge the
whole trend to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import Moments


@dataclass(frozen=True, eq=False)
class StrataMoments:
    """Per stratum: rows sampled ``n`` (H,), rows returned ``r`` (H,) (the others did not match:
    zero vectors), and the mean (H, k) and centered co-moment (H, k, k) over all n_h rows.
    Increments merge stratum by stratum, so a request of many rounds costs each round only its
    own rows."""

    n: np.ndarray
    r: np.ndarray
    mean: np.ndarray
    comoment: np.ndarray

    @classmethod
    def from_rows(cls, z: np.ndarray, position: np.ndarray, ranges, strata: int) -> "StrataMoments":
        """Moments of a read of positions ``ranges`` ([a, b) pairs, disjoint) of a group laid out
        in ``strata`` strata (position q is in stratum q mod strata): ``z`` (r, k) holds the
        contribution rows of the positions ``position`` (r,) that matched; the others are zero
        vectors. The rows are scattered into a (stratum, slot) grid, zeros elsewhere, and summed
        stratum by stratum in one batched product (0.29 ms a read of 2,000 rows of 16 columns,
        against 0.51 ms for a loop over the strata), after centring on their mean: the sums are raw, and
        centring keeps them from cancelling where a trend spans the group."""
        h = strata
        position = np.asarray(position, dtype=np.int64)
        k = np.shape(z)[1]
        n = sampled_per_stratum(ranges, h)
        index = np.full(len(position), -1, dtype=np.int64)   # each row's cell in the (stratum, slot) grid
        width = 0
        for a, b in ranges:
            mine = (position >= a) & (position < b) if len(ranges) > 1 else slice(None)
            index[mine] = position[mine] // h - a // h + width
            width += (b - 1) // h - a // h + 1
        if len(position):
            if len(ranges) == 1:
                outside = position.min() < ranges[0][0] or position.max() >= ranges[0][1]
            else:
                outside = index.min() < 0
            if outside:
                raise ValueError("a returned row lies outside the positions read")
        z = np.asarray(z, dtype=np.float64)
        ref = z.mean(axis=0) if len(z) else np.zeros(k)
        rows = np.empty((len(z), k + 1))   # a leading 1: the products' first row gives the sums
        rows[:, 0] = 1.0
        np.subtract(z, ref, out=rows[:, 1:])
        grid = np.zeros((h * max(width, 1), k + 1))
        grid[(position % h) * max(width, 1) + index] = rows
        grid = grid.reshape(h, max(width, 1), k + 1)
        products = np.matmul(grid.transpose(0, 2, 1), grid)
        r = products[:, 0, 0].copy()                                    # rows that matched
        sums = products[:, 0, 1:] + r[:, None] * ref                    # of z over each stratum's rows
        products = products[:, 1:, 1:]                                  # of (z - ref)(z - ref)^T
        mean = np.divide(sums, n[:, None], out=np.zeros((h, k)), where=n[:, None] > 0)
        dev = mean - ref                                                 # a zero row is -ref from ref
        comoment = (products + (n - r)[:, None, None] * ref[None, :, None] * ref[None, None, :]
                    - n[:, None, None] * dev[:, :, None] * dev[:, None, :])
        return cls(n, r, mean, comoment)

    @classmethod
    def from_strata(cls, returned: dict[int, Moments], ranges, strata: int, k: int) -> "StrataMoments":
        """Moments of a read of positions ``ranges`` from the moments of each stratum's matching
        rows (summed by DuckDB, for a read too large to fetch): the other rows join as zeros."""
        n = sampled_per_stratum(ranges, strata)
        r, mean, comoment = np.zeros(strata), np.zeros((strata, k)), np.zeros((strata, k, k))
        for s, m in returned.items():
            if m.n > n[s]:
                raise ValueError("more rows returned in a stratum than were sampled from it")
            r[s] = m.n
            mean[s] = m.mean * (m.n / n[s])
            comoment[s] = m.comoment + (m.n * (n[s] - m.n) / n[s]) * np.outer(m.mean, m.mean)
        return cls(n, r, mean, comoment)

    def merge(self, other: "StrataMoments") -> "StrataMoments":
        """Moments of two disjoint samples, stratum by stratum (Chan et al.)."""
        n = self.n + other.n
        w = np.divide(other.n, n, out=np.zeros_like(n), where=n > 0)
        d = other.mean - self.mean
        cross = np.divide(self.n * other.n, n, out=np.zeros_like(n), where=n > 0)
        comoment = self.comoment + other.comoment + cross[:, None, None] * d[:, :, None] * d[:, None, :]
        return StrataMoments(n, self.r + other.r, self.mean + d * w[:, None], comoment)

    def moments(self, population: np.ndarray, p: float) -> Moments:
        """Moments that the simple-random formulas read as this stratified sample: total / p is
        T_hat and (1 - p) / p^2 * comoment its stratified covariance. (The Bernoulli term
        n (J mean)(J mean)^T that ``covariance_from_jacobian`` adds is 0 for a ratio such as AVG
        and only conservative for a COUNT or SUM.) A stratum's covariance needs two sampled
        rows: reads by position give each stratum two at least (``QuerySampler.reachable``)."""
        rows = int(self.r.sum())
        if rows == 0:
            return Moments.empty(self.mean.shape[1])
        n, big_n = self.n, np.asarray(population, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(n > 1, big_n ** 2 * (1.0 - n / big_n) / (n * (n - 1.0)), 0.0)
        cov = np.einsum("h,hij->ij", np.maximum(weight, 0.0), self.comoment)
        return Moments(rows, (big_n @ self.mean) * p / rows, cov * p * p / (1.0 - p))


def sampled_per_stratum(ranges, strata: int) -> np.ndarray:
    """How many of the positions ``ranges`` ([a, b) pairs) lie in each stratum (q mod strata)."""
    residue = np.arange(strata)
    n = np.zeros(strata)
    for a, b in ranges:
        n += (b - residue + strata - 1) // strata - (a - residue + strata - 1) // strata
    return n
