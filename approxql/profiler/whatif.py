"""What-if answers as pure arithmetic over measured numbers (no DuckDB), so each can be checked
by hand. Every function here is a formula the report prints next to its result."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

TURN_OFF = "turn approximation off for this pipeline"


@dataclass(frozen=True)
class QueryCost:
    """What one sampled feature query costs a request at fraction p:
    ``a + p (m b + s c)`` = ``overhead_ms + p * (matching * per_row_ms + scanned * per_scanned_ms)``.
    ``small`` is another statement's (a, b, c), used while a read holds at most ``small_rows``
    matching rows (the sampler reads few rows as rows instead of summing them in SQL)."""

    overhead_ms: float
    per_row_ms: float
    matching: float              # rows matching the query for a typical request (median)
    per_scanned_ms: float = 0.0
    scanned: float = 0.0         # rows of its scan range (the entity's rows on a prepared copy), median
    small: tuple[float, float, float] | None = None
    small_rows: float = 0.0

    @property
    def slope(self) -> float:
        """ms per unit of fraction of the large-read statement: m b + s c."""
        return self.matching * self.per_row_ms + self.scanned * self.per_scanned_ms

    @property
    def breakpoint(self) -> float | None:
        """The fraction up to which the small-read statement is used (None: there is none)."""
        return self.small_rows / self.matching if self.small is not None and self.matching > 0 else None

    def line(self, p: float) -> tuple[float, float]:
        """(overhead, ms per unit of fraction) of the statement a read at fraction p uses."""
        b = self.breakpoint
        if b is not None and p <= b:
            a, per_row, per_scanned = self.small
            return a, self.matching * per_row + self.scanned * per_scanned
        return self.overhead_ms, self.slope

    def ms(self, p: float) -> float:
        a, slope = self.line(p)
        return a + p * slope


@dataclass(frozen=True)
class Recommendation:
    fraction: float | None        # None: no fraction fits; 1.0: compute exactly
    predicted_ms: float | None    # latency the cost model predicts at ``fraction``
    share_within: float | None    # share of requests (whose need is known) that stopped at or below it
    exact_meets_slo: bool | None  # None without an SLO
    reason: str


def predicted_latency(p: float, fixed_ms: float, queries: Mapping[str, QueryCost]) -> float:
    """L(p) = C + sum_q (a_q + p (m_q b_q + s_q c_q)): one sample at fraction p of every sampled query."""
    return fixed_ms + sum(q.ms(p) for q in queries.values())


def largest_fraction(slo_ms: float, fixed_ms: float, queries: Mapping[str, QueryCost],
                     cap: float = math.inf) -> float | None:
    """The largest p <= cap with L(p) <= SLO. With one statement per query L is a line and
    p* = (SLO - C - sum_q a_q) / sum_q (m_q b_q + s_q c_q) (inf when nothing grows with p);
    with small-read statements, L is a line between breakpoints, solved piece by piece from the top.
    None when even p -> 0 misses the SLO."""
    breaks = sorted({b for q in queries.values() if (b := q.breakpoint) is not None and 0 < b < cap})
    edges = [0.0, *breaks, cap]
    for lo, hi in reversed(list(zip(edges, edges[1:]))):
        inside = (lo + hi) / 2 if math.isfinite(hi) else lo + 1.0
        lines = [q.line(inside) for q in queries.values()]
        base, slope = fixed_ms + sum(a for a, _ in lines), sum(b for _, b in lines)
        if math.isfinite(hi) and base + slope * hi <= slo_ms:
            return hi
        if slope <= 0:
            if base <= slo_ms:
                return hi
            continue
        p = (slo_ms - base) / slope
        if lo < p <= hi:
            return p
    return None


def share_within(final_fractions: Sequence[float], p: float) -> float | None:
    """Share of requests whose final fraction (the largest over their queries) is <= p."""
    if not final_fractions:
        return None
    return sum(1 for f in final_fractions if f <= p + 1e-12) / len(final_fractions)


def exact_meets_slo(exact_ms: float, slo_ms: float) -> bool:
    """Median exact latency <= SLO: sampling has nothing to win."""
    return exact_ms <= slo_ms


def peak_latency(latency_ms: float, reads: Sequence[tuple[float, float, float]]) -> float:
    """L_peak = L - sum t + sum n / R: each statement's measured time t replaced by its rows n at
    its query's peak rate R (rows per ms)."""
    return latency_ms - sum(t for t, _, _ in reads) + sum(n / r for _, n, r in reads)


def gather_ms(nodes: int, state_bytes: float, bandwidth_gbps: float, hop_ms: float) -> float:
    """G(P) = P x partial-state bytes / bandwidth + one hop's latency (0 on one node)."""
    if nodes <= 1:
        return 0.0
    bytes_per_ms = bandwidth_gbps * 1e9 / 8 / 1e3
    return nodes * state_bytes / bytes_per_ms + hop_ms


def scale_out(nodes: int, fixed_ms: float, scan_ms: float, state_bytes: float, bandwidth_gbps: float,
              hop_ms: float) -> float:
    """A model, not a measurement: T(P) = overhead + scan / P + G(P) — the scan split evenly over
    P nodes, each sending its partial aggregate state to one node that merges them."""
    return fixed_ms + scan_ms / nodes + gather_ms(nodes, state_bytes, bandwidth_gbps, hop_ms)


def recommend(*, slo_ms: float | None, exact_ms: float, fixed_ms: float, queries: Mapping[str, QueryCost],
              final_fractions: Sequence[float], cap: float = 1.0) -> Recommendation:
    """The largest fraction within the SLO, at most ``cap`` (the largest fraction the costs were
    measured at: beyond it the line is extrapolated); exact when exact already meets the SLO;
    without an SLO, the fraction most requests stopped at (the median of their final fractions)."""
    if not queries:
        return Recommendation(1.0, exact_ms, share_within(final_fractions, 1.0), None if slo_ms is None else
                              exact_meets_slo(exact_ms, slo_ms), "no feature query is sampled: every request is exact")
    if slo_ms is None:
        if not final_fractions:
            return Recommendation(None, None, None, None, "no SLO given and no request's need is known")
        p = statistics.median(final_fractions)
        return Recommendation(p, exact_ms if p >= 1 else predicted_latency(p, fixed_ms, queries),
                              share_within(final_fractions, p), None,
                              "no SLO given: the fraction most requests stopped at (median of final fractions)")
    if exact_meets_slo(exact_ms, slo_ms):
        return Recommendation(1.0, exact_ms, share_within(final_fractions, 1.0), True,
                              f"exact ({exact_ms:.2f} ms) already meets the SLO of {slo_ms:g} ms: {TURN_OFF}")
    p = largest_fraction(slo_ms, fixed_ms, queries, cap)
    if p is None:
        floor = predicted_latency(1e-12, fixed_ms, queries)
        return Recommendation(None, None, 0.0, False, f"no fraction fits: the fixed costs alone ({floor:.2f} ms) "
                                                      f"exceed the SLO of {slo_ms:g} ms")
    why = f"the largest fraction whose predicted latency fits the SLO of {slo_ms:g} ms"
    if p >= cap:
        beyond = largest_fraction(slo_ms, fixed_ms, queries)
        why = (f"every fraction up to {cap:g}, the largest measured, fits the SLO of {slo_ms:g} ms (the line puts "
               f"p* at {beyond:.3g}; exact, at 1, measured {exact_ms:.2f} ms): any of them; the larger, the closer to exact")
    return Recommendation(p, predicted_latency(p, fixed_ms, queries), share_within(final_fractions, p), False, why)
