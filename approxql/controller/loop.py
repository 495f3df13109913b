"""Serving one request: run its decisions (``run.RequestRun``) with one statement per query and
one model call at a time, timing each statement so the pipeline learns what sampling costs."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from ..params import bind_request
from ..prediction import Prediction
from .options import Options
from .run import ExactAll, Fixed, Infer, Read, RequestRun, estimated_matching, learns_arms

if TYPE_CHECKING:
    from ..pipeline import Pipeline


def predict(pipe: "Pipeline", request: Mapping[str, Any], opts: Options) -> Prediction:
    t_start = time.perf_counter()
    bound = bind_request(list(pipe.params), request)
    run = RequestRun(pipe, bound, opts, pipe.costs.snapshot(), t_start)  # plan from the state at the start
    timing_only = 0.0   # ms of reads that only timed the exact plan's race
    with pipe.engine.cursor() as cur:
        op = run.start()
        while op is not None:
            t0 = time.perf_counter()
            if isinstance(op, Read):
                _advance(run, op, cur)
                result = None
            elif isinstance(op, Infer):
                result = pipe.model.run(op.rows)
            elif isinstance(op, Fixed):
                result = pipe.fixed_features(op.bound, cur)
            elif isinstance(op, ExactAll):
                raw, note, ms = pipe.served_exact_raw(op.bound, cur)
                result, timing_only = (raw, note), timing_only + ms
                run.reads.append({"query": "*", "fraction": (0.0, 1.0), "rows": None,
                                  "ms": (time.perf_counter() - t0) * 1e3, "exact": True})
            else:
                raise AssertionError(f"unknown operation {op!r}")
            run.charge(op.stage, t0)
            op = run.send(result)
    pred = run.prediction
    if opts.learn and learns_arms(opts):   # batches share their statements: no lone latency to learn
        pipe.costs.record_request(run.exact_at_once, pred.latency_ms - timing_only)
    return pred


def _advance(run: RequestRun, op: Read, cur) -> None:
    """Run each query's increment, and log what it cost (rows against milliseconds)."""
    book, log = run.book, run.log
    for q, p in op.targets.items():
        s = op.samplers[q]
        before = s.fraction
        known = estimated_matching(s.result()) if 0 < before < 1 else None   # this request's estimate so far
        t0 = time.perf_counter()
        s.advance(cur, p, matching=known or s.matching_hint or book.typical_matching(q))
        ms = (time.perf_counter() - t0) * 1e3
        known = known or s.matching_hint   # set by a sample that then had to give way to exact
        r = s.result() if s.fraction < 1.0 else None
        rows = None
        if r is not None and r.support:
            # rows the statement read per unit of fraction: every row of the query's range, not
            # the fewest behind one term (a sparse column's, e.g. a filtered or mostly-NULL
            # one), which made each row look ten times dearer on the game logs
            matching = r.matching or r.support / s.fraction
            rows = matching * ((s.fraction - before) if s.c.source.nested else s.fraction)
            log.sampling.append((q, rows, ms))
        elif s.fraction >= 1.0:
            matching = known or book.typical_matching(q)
            if matching is not None:
                rows = matching
                log.exact.append((q, matching, ms))
                log.matching.append((q, matching))
        run.reads.append({"query": q, "fraction": (before, s.fraction), "rows": rows, "ms": ms,
                          "exact": s.fraction >= 1.0})
