"""Replaying requests through a pipeline and keeping what each statement cost.

Everything here runs the pipeline serially (``Pipeline.predict`` records one entry per statement in
``Prediction.reads``; ``predict_many`` shares statements between requests and records none).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

from sqlglot import exp

from ..errors import ApproxQLError
from ..params import bind_request
from ..pipeline import requests_table
from ..plan import QueryKind
from ..prediction import Prediction
from .layout import scan_filter
from .peak import qualified


def serve(pipe, requests: Sequence[Mapping[str, Any]], *, seed: int, tau, delta, bar=None):
    """Each request as the pipeline serves it (``predict``), then exactly, interleaved request by
    request so that drift in the machine's speed hits both alike. Returns (served, exact, failed):
    two lists of (request index, Prediction) of the requests that succeeded, and the failures."""
    served, exact, failed = [], [], []
    for i, r in enumerate(requests):
        try:
            a = pipe.predict(r, seed=seed + i, tau=tau, delta=delta)
            e = pipe.predict_exact(r)
        except ApproxQLError as err:
            failed.append(f"request {i}: {err}")
            continue
        finally:
            _tick(bar)
        served.append((i, a))
        exact.append((i, e))
    return served, exact, failed


def sweep(pipe, requests: Sequence[Mapping[str, Any]], fractions: Sequence[float], *, seed: int, tau, delta,
          bar=None) -> list[tuple[int, float, Prediction]]:
    """One sample at each fraction (``policy="fixed"``, nothing learned) for each request, twice: the
    points the cost model is fitted on. Each fraction serves every request in a row, as a server at
    one fraction does (a large read in between would cool the caches the next small one finds), once
    from the smallest fraction up and once from the largest down, so drift in the machine's speed
    does not tilt the fitted slope."""
    up = [(f, i) for f in fractions for i in range(len(requests))]
    out = []
    for rnd, plan in enumerate((up, up[::-1])):
        for f, i in plan:
            try:
                out.append((i, f, pipe.predict(requests[i], seed=seed + i + 20_000 * rnd, tau=tau, delta=delta,
                                               policy="fixed", initial_fraction=f, learn=False)))
            except ApproxQLError:
                pass   # the same request failed in ``serve`` too, where it is reported
            _tick(bar)
    return out


def row_counts(pipe, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, tuple[float, float]]]:
    """Per request and aggregate query: (rows matching its WHERE, which exact reads; rows of its
    scan range, which a sample at fraction p reads p of). A prepared copy is sorted by its entity
    columns, so the scan range is the rows of the request's entity (the WHERE's equalities on
    them), however few of those the rest of the WHERE keeps (a time window inside the entity); a
    block sample reads p of the whole table."""
    plans = pipe.sampling_plans()
    counted, ranges = [], {}
    for q in pipe.spec.aggregate_queries:
        counted.append(_counting(q, "m", q.select.args.get("where")))
        prepared = getattr(plans[q.name].source, "prepared", None) if plans[q.name].sampled else None
        if not plans[q.name].sampled:
            ranges[q.name] = "m"
        elif prepared is None:
            ranges[q.name] = _table_rows(pipe, q)
        else:
            pruned = scan_filter(_where(q), prepared.by)
            counted.append(_counting(q, "s", exp.Where(this=pruned) if pruned is not None else None))
            ranges[q.name] = "s"
    if not counted or not requests:
        return [{} for _ in requests]
    compiled = pipe.engine.compile_exact(counted, batch=True)
    rows = pipe.engine.exact_features_many(compiled, requests_table(pipe.spec, requests)).to_pylist()
    out = []
    for r in rows:
        counts = {}
        for q in pipe.spec.aggregate_queries:
            m = float(r[f"__m_{q.name}"] or 0)
            rng = ranges[q.name]
            counts[q.name] = (m, m if rng == "m" else float(r[f"__s_{q.name}"] or 0) if rng == "s" else float(rng))
        out.append(counts)
    return out


def empty_exact_ms(pipe, request: Mapping[str, Any], repeats: int) -> list[float]:
    """The exact statement's time with every aggregate's WHERE made false: its fixed overhead
    (parse, plan, run, fetch) with no row read, the zero-row anchor of the exact cost fit."""
    queries = [replace(q, select=q.select.copy().where(exp.false(), append=True))
               if q.kind is QueryKind.AGGREGATE else q for q in pipe.spec.queries]
    compiled = pipe.engine.compile_exact(queries)
    bound = bind_request(list(pipe.params), request)
    pipe.engine.exact_features(compiled, bound)   # warm
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.engine.exact_features(compiled, bound)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def started_exact(pred: Prediction) -> bool:
    """Computed exactly at once (the controller predicted exact no dearer, or sampling kept failing):
    such a request tells how much exact costs, not what fraction it needed."""
    return pred.exact and not pred.history


def final_fraction(pred: Prediction) -> float:
    """The largest fraction any of the request's queries reached."""
    return max(pred.rates.values(), default=1.0)


def _where(q):
    w = q.select.args.get("where")
    return None if w is None else w.this


def _counting(q, tag: str, where):
    sel = q.select.copy()
    sel.set("expressions", [exp.alias_(exp.Count(this=exp.Star()), f"__{tag}_{q.name}")])
    sel.set("where", where.copy() if where is not None else None)
    used = {p.name for p in sel.find_all(exp.Placeholder)}
    return replace(q, select=sel, features=(f"__{tag}_{q.name}",), params=tuple(p for p in q.params if p in used))


def _table_rows(pipe, q) -> float:
    with pipe.engine.cursor() as cur:
        return float(cur.execute(f"SELECT count(*) FROM {qualified(q.tables[0])}").fetchall()[0][0])


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1)
