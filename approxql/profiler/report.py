"""The profile as data (``to_dict`` for JSON), as a terminal report with every formula written out
next to its numbers, and as a PNG of the stage breakdown."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .costmodel import CostFit
from .layout import LayoutResult
from .stages import StageShare
from .whatif import Recommendation

REST = "everything else (C)"
WITHIN = 0.25   # how close the cost model's predictions must be for the report to call them good


@dataclass(frozen=True)
class LatencySummary:
    median: float
    mean: float
    p95: float

    @classmethod
    def of(cls, ms) -> "LatencySummary":
        a = np.asarray(list(ms), dtype=float)
        return cls(float(np.median(a)), float(a.mean()), float(np.percentile(a, 95)))


@dataclass(frozen=True)
class QueryProfile:
    name: str
    table: str
    sampled: bool
    how: str                          # how the query is sampled, or why it is exact
    matching: float                   # median rows matching it per request
    fit: CostFit | None               # its sampled statement's cost
    rows_per_s: float | None          # what its statements achieved, all costs included
    peak_rows_per_s: float | None     # a full scan of its table computing its aggregates
    peak_rows: int | None
    peak_ms: float | None
    scanned: float = 0.0              # median rows of its scan range (its entity's rows on a prepared copy)
    small_fit: CostFit | None = None  # the statement of reads of at most ``small_rows`` rows (read as rows)
    small_rows: float | None = None

    @property
    def utilization(self) -> float | None:
        if self.rows_per_s is None or not self.peak_rows_per_s:
            return None
        return self.rows_per_s / self.peak_rows_per_s


@dataclass(frozen=True)
class FractionCheck:
    """At one swept fraction: measured median latency against the cost model's prediction."""
    fraction: float
    measured_ms: float
    predicted_ms: float
    n: int

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1.0


@dataclass(frozen=True)
class ScaleOut:
    """T(P) = overhead + scan / P + G(P), G(P) = P x state bytes / bandwidth + hop (a model)."""
    nodes: tuple[int, ...]
    bandwidth_gbps: float
    hop_ms: float
    state_bytes: float
    exact_overhead_ms: float
    exact_scan_ms: float
    exact_ms: tuple[float, ...]
    fraction: float | None
    sampled_overhead_ms: float | None
    sampled_scan_ms: float | None
    sampled_ms: tuple[float, ...] | None
    exact_fits_slo_at: int | None     # the fewest nodes at which exact meets the SLO, per the model


@dataclass(frozen=True)
class Profile:
    """What ``approxql.profile`` measured and concluded; ``str()`` is the terminal report."""

    pipeline: str
    n_requests: int
    failed: tuple[str, ...]
    tau: float
    delta: float | None
    slo_ms: float | None
    served: LatencySummary
    exact: LatencySummary
    stages: tuple[StageShare, ...]
    queries: tuple[QueryProfile, ...]
    exact_fit: CostFit | None
    exact_matching: float
    fixed_ms: float | None            # C: a one-sample request's time outside its sampled statements
    sweep: tuple[FractionCheck, ...]
    final_fractions: tuple[float, ...]
    started_exact: int
    recommendation: Recommendation
    peak_ms: float | None
    layout: tuple[LayoutResult, ...]
    scaleout: ScaleOut
    notes: tuple[str, ...] = ()
    rows_read: float = 0.0            # mean rows per served request over its statements (exact: matching)
    exact_queries_ms: float = 0.0     # median time of the exact statement (predict_exact's queries stage)

    # -- data ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything, JSON-ready (NaN and infinity become None), with the formulas as text."""
        d = dataclasses.asdict(self)
        for q, qd in zip(self.queries, d["queries"]):
            qd["utilization"] = q.utilization
        for lay, ld in zip(self.layout, d["layout"]):
            ld["prepared_gain"], ld["sorted_gain"] = lay.prepared_gain, lay.sorted_gain
        d["final_fractions"] = {"n": len(self.final_fractions), "started_exact": self.started_exact,
                                **_quantiles(self.final_fractions)}
        d["formulas"] = dict(FORMULAS)
        return _clean(d)

    # -- text ---------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.text()

    def text(self) -> str:
        out = [self._head(), "", *self._stage_lines(), "", *self._query_lines(), "", *self._whatif_lines()]
        if self.layout:
            out += ["", *self._layout_lines()]
        out += ["", *self._scale_lines()]
        if self.notes:
            out += ["", "notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(out)

    def _head(self) -> str:
        slo = f", SLO {self.slo_ms:g} ms" if self.slo_ms is not None else ", no SLO"
        delta = "" if self.delta is None else f", delta {self.delta:g}"
        s, e = self.served, self.exact
        return (f"approxql profile: {self.pipeline} — {self.n_requests} requests (tau {self.tau:g}{delta}{slo})\n"
                f"latency ms (median / mean / p95): served {s.median:.2f} / {s.mean:.2f} / {s.p95:.2f}; "
                f"exact {e.median:.2f} / {e.mean:.2f} / {e.p95:.2f}")

    def _stage_lines(self) -> list[str]:
        lines = ["stages of the served requests (queries = overhead + scan + lookups & merge)",
                 f"  {'stage':<16}{'mean ms':>9}{'share':>8}"]
        for st in self.stages:
            lines.append(f"  {st.name:<16}{st.mean_ms:>9.3f}{100 * st.share:>7.1f}%")
        total = sum(st.mean_ms for st in self.stages)
        lines.append(f"  {'total':<16}{total:>9.3f}{100.0:>7.1f}%   (mean latency {self.served.mean:.3f} ms)")
        lines.append(f"  rows read per request: {self.rows_read:,.0f} (mean; sampled rows, or matching rows when exact)")
        return lines

    def _query_lines(self) -> list[str]:
        lines = ["feature queries: fitted cost t = a + n b + k c of a sampled statement reading n matching rows out of "
                 "k rows of its scan range (from two samples at each swept fraction); m, s: median matching and "
                 "scan-range rows per request; utilization = rows/s achieved / rows/s of a full scan of the table",
                 f"  {'query':<7}{'m':>10}{'s':>12}{'a ms':>8}{'b ns':>8}{'c ns':>8}{'rel.RMSE':>9}{'R^2':>6}{'n':>5}"
                 f"{'rows/s':>10}{'peak rows/s':>12}{'util.':>7}  how"]
        for q in self.queries:
            f = q.fit
            fit = (f"{f.overhead_ms:>8.3f}{1e6 * f.per_row_ms:>8.2f}{1e6 * f.per_scanned_ms:>8.2f}"
                   f"{100 * f.rel_rmse:>8.1f}%{_num(f.r2, '.2f'):>6}{f.n:>5}") if f else (
                f"{'-':>8}{'-':>8}{'-':>8}{'-':>9}{'-':>6}{'-':>5}")
            lines.append(f"  {q.name:<7}{q.matching:>10,.0f}{q.scanned:>12,.0f}{fit}{_rate(q.rows_per_s):>10}"
                         f"{_rate(q.peak_rows_per_s):>12}{_pct(q.utilization):>7}  {q.how}")
            if q.small_fit is not None:
                f = q.small_fit
                lines.append(f"  {'  rows':<7}{'':>10}{'':>12}{f.overhead_ms:>8.3f}{1e6 * f.per_row_ms:>8.2f}"
                             f"{1e6 * f.per_scanned_ms:>8.2f}{100 * f.rel_rmse:>8.1f}%{_num(f.r2, '.2f'):>6}{f.n:>5}"
                             f"  reads of at most {q.small_rows:,.0f} rows, which the sampler fetches as rows "
                             f"(a statement of its own: below p = {q.small_rows / q.matching:.3g} here)")
        f = self.exact_fit
        if f:
            lines.append(f"  {'exact':<7}{self.exact_matching:>10,.0f}{'-':>12}{f.overhead_ms:>8.3f}"
                         f"{1e6 * f.per_row_ms:>8.2f}{'-':>8}{100 * f.rel_rmse:>8.1f}%{_num(f.r2, '.2f'):>6}{f.n:>5}  "
                         f"the one exact statement of every query, vs its total matching rows; a measured with every "
                         f"WHERE false (no row read)")
        return lines

    def _whatif_lines(self) -> list[str]:
        rec, lines = self.recommendation, ["what-if"]
        s = self.served
        if self.peak_ms is not None:
            lines.append(f"  peak rate: L_peak = L - sum t + sum n/R = {self.peak_ms:.2f} ms against {s.mean:.2f} ms "
                         f"(mean; every statement's time t replaced by its rows n at its query's full-scan rate R)")
        costs = [(q, q.fit) for q in self.queries if q.fit is not None]
        if costs and self.fixed_ms is not None:
            terms = " + ".join(f"{f.overhead_ms:.2f} + p ({q.matching:,.0f} x {1e6 * f.per_row_ms:.2f} + "
                               f"{q.scanned:,.0f} x {1e6 * f.per_scanned_ms:.2f}) ns" for q, f in costs)
            lines.append(f"  latency at fraction p: L(p) = C + sum_q (a_q + p (m_q b_q + s_q c_q)) = {self.fixed_ms:.2f} + "
                         f"{terms}")
            lines.append("    C: median time of a one-sample request outside its sampled statements")
        if self.sweep:
            bad = [c for c in self.sweep if abs(c.error) > WITHIN]
            lines.append("    checked at the swept fractions (median latency, measured vs L(p)): " + ", ".join(
                f"{c.fraction:g}: {c.measured_ms:.2f} vs {c.predicted_ms:.2f}" for c in self.sweep)
                + ("" if not bad else f" — off by more than {100 * WITHIN:.0f} % at " +
                   ", ".join(f"{c.fraction:g}" for c in bad)))
        piecewise = any(q.small_fit is not None for q, _ in costs)
        if piecewise:
            lines.append("    a query read as rows below its break (see 'rows' above) takes that statement's a, b, c there: "
                         "L(p) is a line between breaks")
        if self.slo_ms is not None and costs and self.fixed_ms is not None and rec.exact_meets_slo is False:
            if piecewise:
                lines.append("  largest fraction within the SLO: the largest p with L(p) <= SLO, solved on each line "
                             "between breaks from the top")
            else:
                floor = self.fixed_ms + sum(f.overhead_ms for _, f in costs)
                slope = sum(q.matching * f.per_row_ms + q.scanned * f.per_scanned_ms for q, f in costs)
                p = (self.slo_ms - floor) / slope if slope > 0 else math.inf
                lines.append(f"  largest fraction within the SLO: p* = (SLO - C - sum a_q) / sum (m_q b_q + s_q c_q) = "
                             f"({self.slo_ms:g} - {floor:.2f}) / {slope:.3f} = "
                             + (f"{p:.4g}" if p > 0 else f"{p:.3g} <= 0: no fraction fits"))
        if self.slo_ms is not None:
            verdict = "meets" if self.exact.median <= self.slo_ms else "misses"
            lines.append(f"  exact: median {self.exact.median:.2f} ms {verdict} the SLO of {self.slo_ms:g} ms")
        frac = "none" if rec.fraction is None else ("exact" if rec.fraction >= 1 else f"{rec.fraction:.4g}")
        lines.append(f"  recommended fraction: {frac} — {rec.reason}")
        if rec.predicted_ms is not None:
            lines.append(f"    predicted median latency there: {rec.predicted_ms:.2f} ms")
        n, q = len(self.final_fractions), _quantiles(self.final_fractions)
        if n:
            within = ("" if rec.fraction is None else f"; at or below the recommended fraction: "
                      f"{_pct(rec.share_within)} of the {n} whose need is known")
            lines.append(f"    requests stopped at fractions (median {q['median']:.3g}, p90 {q['p90']:.3g}){within}")
        if self.started_exact:
            lines.append(f"    {self.started_exact} request(s) were computed exactly at once (the controller found "
                         f"exact no dearer, or sampling kept failing): their need is not known")
        return lines

    def _layout_lines(self) -> list[str]:
        lines = ["data layout (exact, median ms per query): source, prepared sample-ordered copy, sorted copy"]
        for r in self.layout:
            prep = "-" if r.prepared_ms is None else f"{r.prepared_ms:.2f} ({r.prepared_gain:.2f}x)"
            srt = "-" if r.sorted_ms is None else f"{r.sorted_ms:.2f} ({r.sorted_gain:.2f}x)"
            by = f" by {', '.join(r.sorted_by)}" if r.sorted_by else ""
            lines.append(f"  {r.query} on {r.table}: source {r.source_ms:.2f}; prepared {prep}; sorted{by} {srt}"
                         + (f" — {r.note}" if r.note else ""))
        e, q = self.exact.median, self.exact_queries_ms
        source = sum(r.source_ms for r in self.layout)
        for name, attr in (("prepared", "prepared_ms"), ("sorted", "sorted_ms")):
            if source > 0 and all(getattr(r, attr) is not None for r in self.layout):
                ratio = sum(getattr(r, attr) for r in self.layout) / source
                t = e - q * (1 - ratio)
                fits = "" if self.slo_ms is None else (" — meets the SLO" if t <= self.slo_ms else " — misses the SLO")
                lines.append(f"  exact on the {name} layout: L_exact - Q_exact (1 - sum t_{name} / sum t_source) = "
                             f"{e:.2f} - {q:.2f} x (1 - {ratio:.3f}) = {t:.2f} ms{fits}")
        return lines

    def _scale_lines(self) -> list[str]:
        s = self.scaleout
        lines = [f"scale-out across P nodes — a MODEL, not a measurement: T(P) = overhead + scan/P + G(P), "
                 f"G(P) = P x {s.state_bytes:,.0f} B partial state / {s.bandwidth_gbps:g} Gbps + {s.hop_ms:g} ms "
                 f"(0 for P = 1)",
                 "  " + f"{'P':<22}" + "".join(f"{n:>9}" for n in s.nodes),
                 f"  {'exact':<22}" + "".join(f"{t:>9.2f}" for t in s.exact_ms)
                 + f"   (overhead {s.exact_overhead_ms:.2f} + scan {s.exact_scan_ms:.2f} ms)"]
        if s.sampled_ms is not None:
            lines.append(f"  {f'fraction {s.fraction:.3g}':<22}" + "".join(f"{t:>9.2f}" for t in s.sampled_ms)
                         + f"   (overhead {s.sampled_overhead_ms:.2f} + scan {s.sampled_scan_ms:.2f} ms)")
        if self.slo_ms is not None:
            lines.append("  exact meets the SLO " + (f"from P = {s.exact_fits_slo_at} (model)" if s.exact_fits_slo_at
                                                     else "at none of these P (model)"))
        return lines

    # -- picture --------------------------------------------------------------------------------------
    def save_png(self, path: str | Path) -> Path:
        """A stacked bar per case: the served requests' stages (measured), exact (measured, split by
        its cost fit) and one sample at the recommended fraction (predicted)."""
        try:
            import matplotlib
        except ImportError:
            from ..errors import OptionError
            raise OptionError("the stage plot needs matplotlib: pip install matplotlib") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        bars = {"served (measured)": {s.name: s.mean_ms for s in self.stages}}
        e, f = self.exact.mean, self.exact_fit
        over = min(f.overhead_ms, e) if f else 0.0
        scan = min(self.scaleout.exact_scan_ms, e - over)
        bars["exact (measured)"] = {"query overhead": over, "scan": scan, "other": e - over - scan}
        rec = self.recommendation
        if self.fixed_ms is not None and rec.fraction is not None and rec.fraction < 1 and rec.predicted_ms:
            over = sum(q.fit.overhead_ms for q in self.queries if q.fit)
            bars[f"fraction {rec.fraction:.3g} (predicted)"] = {
                "query overhead": over, "scan": rec.predicted_ms - over - self.fixed_ms, REST: self.fixed_ms}
        names = [s.name for s in self.stages] + [REST]
        colors = dict(zip(names, plt.get_cmap("tab10").colors + plt.get_cmap("Set2").colors))
        fig, ax = plt.subplots(figsize=(9, 1.6 + 0.6 * len(bars)))
        seen = set()
        for y, parts in enumerate(bars.values()):
            left = 0.0
            for name in names:
                w = parts.get(name, 0.0)
                if w > 0:
                    ax.barh(y, w, left=left, color=colors[name], label=None if name in seen else name)
                    seen.add(name)
                    left += w
        ax.set_yticks(range(len(bars)), list(bars))
        ax.invert_yaxis()
        if self.slo_ms is not None:
            ax.axvline(self.slo_ms, color="black", linestyle="--", linewidth=1, label=f"SLO {self.slo_ms:g} ms")
        ax.set_xlabel("mean latency per request (ms)")
        ax.set_title(f"{self.pipeline}: where the time goes")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=5, fontsize=8, frameon=False)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path


FORMULAS = {
    "stages": "queries = query overhead + scan + lookups & merge; overhead = sum over statements of min(a_q, t)",
    "cost": "t = a + n b + k c (n matching rows, k scan-range rows read), least squares over two samples at each "
            "swept fraction",
    "utilization": "rows/s achieved (sum n / sum t over the query's statements) / rows/s of a full scan",
    "peak": "L_peak = L - sum t + sum n / R",
    "latency_at_p": "L(p) = C + sum_q (a_q + p (m_q b_q + s_q c_q))",
    "largest_fraction": "p* = (SLO - C - sum_q a_q) / sum_q (m_q b_q + s_q c_q), at most the largest swept fraction",
    "exact_meets_slo": "median exact latency <= SLO: turn approximation off for this pipeline",
    "scale_out": "T(P) = overhead + scan / P + P x state bytes / bandwidth + hop latency (a model); exact's scan = "
                 "its statement's time minus the same statement with every WHERE false",
    "layout": "L_layout = L_exact - Q_exact (1 - sum_q t_layout / sum_q t_source), Q_exact the exact statement's time",
}


def _quantiles(xs) -> dict:
    if not xs:
        return {"median": None, "p90": None}
    return {"median": float(np.median(xs)), "p90": float(np.percentile(xs, 90))}


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _rate(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _pct(x) -> str:
    return "-" if x is None else (f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.2g}%")
