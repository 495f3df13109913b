"""``profile``: replay requests, measure every stage and statement, fit the cost model, answer the
what-ifs. The measuring lives in ``replay``, ``peak`` and ``layout``; the arithmetic in
``costmodel``, ``stages`` and ``whatif``; this module only puts them together."""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import OptionError
from ..sampling import sampler
from . import costmodel, layout, peak, replay, stages, whatif
from .report import FractionCheck, LatencySummary, Profile, QueryProfile, ScaleOut

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
ROW_PATH_MAX = getattr(sampler, "ROW_PATH_MAX", None)   # reads of at most this many rows fetch rows
NODES = (1, 2, 4, 8)


def profile(pipe, requests: Sequence[Mapping[str, Any]] | pa.Table, *, slo_ms: float | None = None,
            tau: float | None = None, delta: float | None = None, seed: int = 0,
            fractions: Sequence[float] = FRACTIONS, sweep_requests: int = 20, layout_requests: int = 10,
            repeats: int = 3, warmup: int = 5, nodes: Sequence[int] = NODES, bandwidth_gbps: float = 10.0,
            hop_ms: float = 0.1, layouts: bool = True, progress: bool = False) -> Profile:
    """Replay ``requests`` through ``pipe`` and explain its latency.

    Each request is served as the pipeline serves it (``predict``) and exactly, interleaved; the
    first ``sweep_requests`` are also read at each of ``fractions`` twice (``policy="fixed"``) to fit
    each feature query's cost ``overhead + rows x per-row``. Then: stage shares, each query's rows/s
    against its full-scan peak, the latency at peak rates, the largest fraction within ``slo_ms``
    (median latency) or, without one, the median fraction requests stopped at; the exact
    latency on other data layouts (``layouts=False`` skips them); and a scale-out model over
    ``nodes``. The pipeline's learned costs and warm start are left as they were; profile a pipeline
    that is not serving other threads meanwhile (they would share, and disturb, every timing)."""
    reqs = requests.to_pylist() if isinstance(requests, (pa.Table, pa.RecordBatch)) else list(requests)
    _check(reqs, slo_ms, fractions, sweep_requests, layout_requests, repeats, nodes, bandwidth_gbps, hop_ms)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31 - 40_000 - len(reqs):
        raise OptionError(f"seed must be an integer in [0, 2^31 - 40000 - requests), got {seed!r}")
    tau = pipe.spec.tau if tau is None else tau
    delta = pipe.spec.delta if delta is None else delta
    first = _first_valid(pipe, reqs)
    peak.warm(pipe, first)       # measure a server whose data is in memory, each layout alike
    peaks = {q.name: peak.measure(pipe, q, first, repeats) for q in pipe.spec.aggregate_queries}
    plans = pipe.sampling_plans()
    saved = pipe.costs.snapshot()
    k = min(sweep_requests, len(reqs))
    bar = _bar(progress, min(warmup, len(reqs)) + len(reqs) + 2 * k * len(fractions), pipe.name)
    try:
        replay.serve(pipe, reqs[:warmup], seed=seed + 10_000, tau=tau, delta=delta, bar=bar)   # warm caches, untimed
        served, exact, failed = replay.serve(pipe, reqs, seed=seed, tau=tau, delta=delta, bar=bar)
        typical = {q: pipe.costs.typical_matching(q) for q in plans}   # what the sweep's reads choose their statement by
        swept = replay.sweep(pipe, reqs[:k], sorted(fractions), seed=seed, tau=tau, delta=delta, bar=bar)
    finally:
        pipe.costs = saved
        if bar is not None:
            bar.close()
    if not served:
        raise OptionError("no request could be profiled: " + "; ".join(failed[:3]))
    ok = [i for i, _ in served]
    counts = dict(zip(ok, replay.row_counts(pipe, [reqs[i] for i in ok])))   # request -> query -> (matching, range)
    matching = {i: {q: m for q, (m, _) in c.items()} for i, c in counts.items()}
    scanned = {i: {q: s for q, (_, s) in c.items()} for i, c in counts.items()}
    sampled = [q for q, c in plans.items() if c.sampled]

    # the cost model: sampled statements from the sweep (a query whose sweep reads all had to be
    # exact counts as a constant); the exact statement from the exact runs plus its zero-row anchor
    live = {r["query"] for _, _, p in swept for r in p.reads if r["query"] in sampled and not r["exact"]}
    clean = [(i, f, p) for i, f, p in swept if i in matching
             and all(not r["exact"] for r in p.reads if r["query"] in live)]
    fits, small_fits = {}, {}
    for q in live:
        nested = bool(getattr(plans[q].source, "nested", False))
        points = [(f, _small_read(plans[q], typical[q], r), (r["rows"], _span(r, nested) * scanned[i][q], r["ms"]))
                  for i, f, p in clean for r in p.reads if r["query"] == q and r["rows"] is not None]
        kind = {flag: [pt for _, is_small, pt in points if is_small == flag] for flag in (False, True)}
        seen = {flag: {f for f, is_small, _ in points if is_small == flag} for flag in (False, True)}
        if len(seen[True]) >= 2 and len(seen[False]) >= 2:   # one line per statement, each seen at 2+ fractions
            fits[q], small_fits[q] = costmodel.fit_scan(kind[False]), costmodel.fit_scan(kind[True])
        elif points:
            fits[q] = costmodel.fit_scan(pt for _, _, pt in points)
    anchor = statistics.median(replay.empty_exact_ms(pipe, first, max(repeats, 5)))
    total_m = {i: sum(matching[i].values()) for i, _ in exact}
    exact_fit = costmodel.fit([(total_m[i], e.stages_ms.get("queries", 0.0)) for i, e in exact], overhead_ms=anchor)
    fixed_ms = _median([p.latency_ms - sum(r["ms"] for r in p.reads if r["query"] in fits) for _, _, p in clean])
    costs = _costs(fits, small_fits, matching, scanned, ok) if fixed_ms is not None else {}
    checks = _checks(clean, fixed_ms, fits, small_fits, matching, scanned)

    # what actually happened: stages, rates, where requests stopped
    served_preds = [p for _, p in served]
    exact_ms = statistics.median(e.latency_ms for _, e in exact)

    def overhead_of(read):
        if read["query"] == "*":
            return exact_fit.overhead_ms if exact_fit else 0.0
        fit = fits.get(read["query"])
        return fit.overhead_ms if fit and not read["exact"] else (exact_fit.overhead_ms if exact_fit else 0.0)

    splits = [stages.split(p, overhead_of) for p in served_preds]
    known = [replay.final_fraction(p) for p in served_preds if not replay.started_exact(p)]
    rec = whatif.recommend(slo_ms=slo_ms, exact_ms=exact_ms, fixed_ms=fixed_ms or 0.0, queries=costs,
                           final_fractions=known, cap=max(fractions))
    reads = [_annotate(p, matching[i]) for i, p in served]
    flat = [r for rs in reads for r in rs]
    sweep_reads = [r for _, _, p in clean for r in p.reads]
    queries = []
    for q in pipe.spec.aggregate_queries:
        c = plans[q.name]
        measured = stages.rate(flat, q.name) or stages.rate(sweep_reads, q.name)
        pk = peaks[q.name]
        queries.append(QueryProfile(
            q.name, q.tables[0] if len(q.tables) == 1 else ", ".join(q.tables), c.sampled,
            c.describe().split(": ", 1)[1], _median([m[q.name] for m in matching.values()]) or 0.0, fits.get(q.name),
            None if measured is None else measured * 1e3, None if pk is None else pk.rows_per_ms * 1e3,
            None if pk is None else pk.rows, None if pk is None else pk.ms,
            _median([m[q.name] for m in scanned.values()]) or 0.0, small_fits.get(q.name),
            ROW_PATH_MAX if q.name in small_fits else None))
    peak_ms = _peak_latency(served_preds, reads, [matching[i] for i in ok], peaks)

    lay = []
    if layouts:
        for q in pipe.spec.aggregate_queries:
            res = layout.measure(pipe, q, [reqs[i] for i, _ in served[:layout_requests]], repeats)
            if res is not None:
                lay.append(res)

    exact_queries_ms = statistics.median(e.stages_ms.get("queries", 0.0) for _, e in exact)
    scale = _scale_out(nodes, bandwidth_gbps, hop_ms, plans, exact_ms, max(exact_queries_ms - anchor, 0.0),
                       fixed_ms, costs, rec.fraction, slo_ms)
    notes = list(failed)
    for q in sampled:
        if q not in live:
            why = next((p.notes[q] for _, _, p in swept if p.notes.get(q)), plans[q].describe())
            notes.append(f"{q} is set up for sampling, but every read of the sweep was computed exactly: {why}")
    return Profile(
        pipeline=pipe.name, n_requests=len(served), failed=tuple(failed), tau=tau, delta=delta, slo_ms=slo_ms,
        served=LatencySummary.of([p.latency_ms for p in served_preds]),
        exact=LatencySummary.of([e.latency_ms for _, e in exact]),
        stages=tuple(stages.shares(splits)), queries=tuple(queries), exact_fit=exact_fit,
        exact_matching=_median(list(total_m.values())) or 0.0, fixed_ms=fixed_ms, sweep=tuple(checks),
        final_fractions=tuple(known), started_exact=len(served_preds) - len(known), recommendation=rec,
        peak_ms=peak_ms, layout=tuple(lay), scaleout=scale, notes=tuple(notes), exact_queries_ms=exact_queries_ms,
        rows_read=float(np.mean([sum(r.get("rows") or 0 for r in rs) for rs in reads])))


def _check(reqs, slo_ms, fractions, sweep_requests, layout_requests, repeats, nodes, bandwidth_gbps, hop_ms) -> None:
    if not reqs:
        raise OptionError("profile needs at least one request")
    if slo_ms is not None and not (_num(slo_ms) and slo_ms > 0):
        raise OptionError(f"slo_ms must be a number > 0 (milliseconds), got {slo_ms!r}")
    if not fractions or not all(_num(f) and 0 < f < 1 for f in fractions) or len(set(fractions)) < 2:
        raise OptionError(f"fractions must be at least two distinct numbers in (0, 1), got {list(fractions)!r}")
    for name, v in (("sweep_requests", sweep_requests), ("layout_requests", layout_requests), ("repeats", repeats)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise OptionError(f"{name} must be an integer >= 1, got {v!r}")
    if not nodes or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in nodes):
        raise OptionError(f"nodes must be integers >= 1, got {list(nodes)!r}")
    if not (_num(bandwidth_gbps) and bandwidth_gbps > 0) or not (_num(hop_ms) and hop_ms >= 0):
        raise OptionError(f"bandwidth_gbps must be > 0 and hop_ms >= 0, got {bandwidth_gbps!r} and {hop_ms!r}")


def _first_valid(pipe, reqs):
    """The first request that binds: the full scans bind its values (a select list may read one)."""
    from ..errors import RequestError
    from ..params import bind_request
    for r in reqs:
        try:
            bind_request(list(pipe.params), r)
            return r
        except RequestError as e:
            last = e
    raise RequestError(f"no request could be profiled: {last}")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _bar(progress: bool, total: int, name: str):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"profile {name}", unit="req")


def _annotate(pred, matching: Mapping[str, float]) -> list[dict]:
    """The prediction's statements, with the rows of exact ones taken from the counted matching rows."""
    out = []
    for r in stages.statements(pred):
        r = dict(r)
        if r["exact"]:
            r["rows"] = sum(matching.values()) if r["query"] == "*" else matching.get(r["query"], r["rows"])
        out.append(r)
    return out


def _peak_latency(preds, reads, matching, peaks) -> float | None:
    """Mean latency with every statement at its query's peak rate; the exact statement of all
    queries takes sum_q m_q / R_q."""
    per_ms = {q: p.rows_per_ms for q, p in peaks.items() if p is not None}
    if not per_ms or len(per_ms) < len(peaks):
        return None
    out = []
    for pred, rs, m in zip(preds, reads, matching):
        items = []
        for r in rs:
            if not r.get("rows"):
                continue
            if r["query"] == "*":
                at_peak = sum(m[q] / per_ms[q] for q in per_ms)
                items.append((r["ms"], r["rows"], r["rows"] / at_peak if at_peak > 0 else float("inf")))
            elif r["query"] in per_ms:
                items.append((r["ms"], r["rows"], per_ms[r["query"]]))
        out.append(whatif.peak_latency(pred.latency_ms, items))
    return float(np.mean(out))


def _span(read, nested: bool) -> float:
    """The share of its scan range a read covered: the new key range (nested), or all of p."""
    before, after = read["fraction"]
    return after - before if nested else after


def _small_read(compiled, typical: float | None, read) -> bool:
    """Whether the sampler read this increment as rows rather than summing it in SQL: it does on
    a prepared copy, for a query without quantiles, when the rows it expects (the learned typical
    matching rows times the increment) are few. The sweep learns nothing, so that count is fixed."""
    if ROW_PATH_MAX is None or typical is None or getattr(compiled.source, "prepared", None) is None:
        return False
    if any(t.is_quantile for t in compiled.plan.terms):
        return False
    before, after = read["fraction"]
    return typical * (after - before) <= ROW_PATH_MAX


def _costs(fits, small_fits, matching, scanned, idx) -> dict[str, whatif.QueryCost]:
    """Each fitted query's cost for a typical request of ``idx`` (median matching and scan rows)."""
    out = {}
    for q, f in fits.items():
        small = small_fits.get(q)
        out[q] = whatif.QueryCost(f.overhead_ms, f.per_row_ms, _median([matching[i][q] for i in idx]),
                                  f.per_scanned_ms, _median([scanned[i][q] for i in idx]),
                                  None if small is None else (small.overhead_ms, small.per_row_ms, small.per_scanned_ms),
                                  ROW_PATH_MAX or 0.0)
    return out


def _checks(clean, fixed_ms, fits, small_fits, matching, scanned) -> list[FractionCheck]:
    """Measured median latency at each swept fraction against the cost model's prediction for the
    same requests (their own matching rows)."""
    if fixed_ms is None or not fits:
        return []
    out = []
    for f in sorted({f for _, f, _ in clean}):
        at = [(i, p) for i, g, p in clean if g == f]
        costs = _costs(fits, small_fits, matching, scanned, [i for i, _ in at])
        out.append(FractionCheck(f, statistics.median(p.latency_ms for _, p in at),
                                 whatif.predicted_latency(f, fixed_ms, costs), len(at)))
    return out


def _state_bytes(plans) -> float:
    """Bytes of partial aggregate state one node sends per request: the sampled statement's result
    row (8 bytes per moment sum), or two numbers per feature for a query that is not sampled."""
    total = 0.0
    for c in plans.values():
        width = c.layout.result_width(clustered=False) if c.layout is not None else 2 * len(c.query.features)
        total += 8.0 * width
    return total


def _scale_out(nodes, bandwidth_gbps, hop_ms, plans, exact_ms, scan_e, fixed_ms, costs, p, slo_ms):
    """Exact: its statement's time beyond the same statement reading no row is the scan (it reads
    every row it must, pruned or not); sampled at p: the cost model's p-proportional part."""
    state = _state_bytes(plans)
    scan_e = min(scan_e, exact_ms)
    ex = tuple(whatif.scale_out(n, exact_ms - scan_e, scan_e, state, bandwidth_gbps, hop_ms) for n in nodes)
    sampled = None
    over_s = scan_s = None
    if costs and fixed_ms is not None and p is not None and p < 1:
        over_s = fixed_ms + sum(c.overhead_ms for c in costs.values())
        scan_s = p * sum(c.slope for c in costs.values())
        sampled = tuple(whatif.scale_out(n, over_s, scan_s, state, bandwidth_gbps, hop_ms) for n in nodes)
    fits_slo = None if slo_ms is None else next((n for n, t in zip(nodes, ex) if t <= slo_ms), None)
    return ScaleOut(tuple(nodes), bandwidth_gbps, hop_ms, state, exact_ms - scan_e, scan_e, ex, p if sampled else None,
                    over_s, scan_s, sampled, fits_slo)
