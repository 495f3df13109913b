"""The control loop of one approximate prediction.

start fractions -> sample every aggregate query -> estimates and their joint error ->
(approxql) secant sensitivity, then propagation through the model -> stop, or plan the
fractions that should meet the bound -> repeat. Every stage is timed.
"""
from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..params import bind_request
from ..prediction import Prediction
from ..sampling import QuerySampler
from . import biathlon
from .costs import CostLog
from .features import build_state
from .options import DEFAULT_START, WARM_CAP, Options
from .planner import QueryPlanInput, plan_fractions, target_sigma, variance_shares
from .propagation import propagate
from .sensitivity import secant_sensitivity

if TYPE_CHECKING:
    from ..pipeline import Pipeline


def predict(pipe: "Pipeline", request: Mapping[str, Any], opts: Options) -> Prediction:
    t_start = time.perf_counter()
    stages: dict[str, float] = defaultdict(float)
    clock = _Clock(stages)
    bound = bind_request(list(pipe.params), request)
    plans = pipe.sampling_plans(strategy=opts.strategy)
    seed = request_seed(bound, opts.seed)   # requests must not share a sample: their errors would be one
    samplers = {q: QuerySampler(c, pipe.engine, bound, seed=seed) for q, c in plans.items()}
    book, log = pipe.costs.snapshot(), CostLog()   # plan from the state at the start; learn at the end
    targets = _start(book, samplers, opts)
    clock.lap("planning")
    if all(p >= 1.0 for p in targets.values()):
        return _exact_at_once(pipe, bound, samplers, t_start, stages, opts)
    fixed = pipe.fixed_features(bound)
    clock.lap("queries")
    history: list[dict] = []
    stop_reason, probability, value = "", 0.0, None
    with pipe.engine.cursor() as cur:
        for round_no in range(1, opts.max_rounds + 1):
            if round_no == opts.max_rounds and opts.policy == "approxql":
                targets = {q: 1.0 for q in targets}          # the last allowed round is exact
            _advance(book, log, samplers, targets, cur, clock)
            results = {q: s.result() for q, s in samplers.items()}
            pipe.check_nulls(results, fixed)
            state = build_state(pipe.inputs, results, fixed, pipe.spec.fill)
            clock.lap("estimation")
            entry = {"round": round_no, "fractions": {q: s.fraction for q, s in samplers.items()}}
            history.append(entry)
            waiting = any(r.feature_needed.get(f, 0.0) > r.fraction for r in results.values() for f in r.values)
            if all(r.exact for r in results.values()) or (len(state.approximate) == 0 and not waiting):
                value = pipe.model_value(state.x0)
                probability, stop_reason = 1.0, "every feature is exact"
                clock.lap("propagation")
                break
            step = _biathlon_round if opts.policy == "biathlon" else _approxql_round
            prop, plan_next = step(pipe, book, samplers, results, state, opts, round_no, history)
            clock.lap("propagation")
            entry["probability"] = None if prop is None else prop.probability   # None: not yet trusted
            if prop is not None:
                probability, value = prop.probability, prop.value
                if probability >= opts.tau:
                    stop_reason = f"probability {probability:.3f} >= tau {opts.tau}"
                    break
            targets = plan_next()
            if all(targets[q] <= s.fraction for q, s in samplers.items()):  # a plan that reads nothing more
                targets = {q: 1.0 for q in samplers}                          # cannot help: finish exactly
            clock.lap("planning")
            if opts.time_budget_ms is not None and (time.perf_counter() - t_start) * 1e3 >= opts.time_budget_ms:
                stop_reason = f"time budget of {opts.time_budget_ms} ms spent"
                value = pipe.model_value(state.x0)   # the prediction from this round's features
                break
        else:
            stop_reason = f"{opts.max_rounds} rounds (max_rounds) reached"
            value = pipe.model_value(state.x0)
    if opts.learn:
        seen = dict(log.matching)
        log.finished += [(q, s.fraction, _matching(results[q]) or seen.get(q), s.fell_back)
                         for q, s in samplers.items()]
        pipe.costs.merge(log)
    latency = (time.perf_counter() - t_start) * 1e3
    stages["other"] = max(latency - sum(stages.values()), 0.0)
    features = {n: float(state.x0[i]) for i, n in enumerate(pipe.inputs)}
    stderr = {n: float(state.stderr[i]) for i, n in enumerate(pipe.inputs)}
    exact = all(r.exact for r in results.values())
    return Prediction(value=value, probability=probability, exact=exact, features=features,
                      rates={q: s.fraction for q, s in samplers.items()}, rounds=len(history), latency_ms=latency,
                      met_bound=probability >= opts.tau, stages_ms=dict(stages), stderr=stderr,
                      stop_reason=stop_reason, history=tuple(history),
                      notes={q: s.note or c.describe() for (q, s), c in zip(samplers.items(), plans.values())})


def _biathlon_round(pipe, book, samplers, results, state, opts: Options, round_no: int, history):
    """Saltelli propagation (probability and Sobol indices per query), then the published step."""
    groups = {q: np.array([i for i, n in enumerate(pipe.inputs) if n in r.values and state.stderr[i] > 0])
              for q, r in results.items() if not r.exact}
    prop, indices = biathlon.saltelli(pipe.model, state, {g: v for g, v in groups.items() if len(v)},
                                      task=pipe.task, delta=opts.delta, seed=opts.seed + round_no)
    slopes = {q: book.sampling_ms(q, 1.0) - book.sampling_ms(q, 0.0) for q in samplers}
    return prop, lambda: biathlon.biathlon_step({q: s.fraction for q, s in samplers.items()}, indices, slopes)


def _approxql_round(pipe, book, samplers, results, state, opts: Options, round_no: int, history):
    """Secant sensitivity; minimum support first (no propagation while an interval is untrusted);
    else Sobol propagation. The plan aims at the bound; a plan that missed it was 'stalled'."""
    sens = secant_sensitivity(pipe.model, state, task=pipe.task)
    needs = _needed(results, sens, pipe.inputs)
    prop = None
    if all(needs[q] <= samplers[q].fraction for q in samplers):
        prop = propagate(pipe.model, state, task=pipe.task, delta=opts.delta, points=opts.points,
                         seed=opts.seed + round_no)
    stalled = prop is not None and len(history) > 1 and history[-2].get("probability") is not None
    return prop, lambda: _plan(pipe, book, samplers, results, sens, needs, state, opts, stalled)


def _exact_at_once(pipe, bound, samplers, t_start, stages, opts: Options) -> Prediction:
    """Every query is predicted cheaper exact: one statement for all features, as predict_exact."""
    pred = pipe.predict_bound_exact(bound, time.perf_counter())
    latency = (time.perf_counter() - t_start) * 1e3
    stages = {**stages, "queries": stages.get("queries", 0.0) + pred.stages_ms["queries"],
              "propagation": pred.stages_ms["model"]}
    stages["other"] = max(latency - sum(stages.values()), 0.0)
    if opts.learn:
        log = CostLog(finished=[(q, 1.0, None, book_forced) for q, book_forced in
                                _forced_now(pipe, samplers).items()])
        pipe.costs.merge(log)
    reason = ("every feature is exact: initial_fraction=1" if opts.initial_fraction == 1 else
              "every feature is exact: each query was started exact (sampling it failed for recent "
              "requests, or exact is predicted no dearer)")
    return replace(pred, latency_ms=latency, stages_ms=stages, stop_reason=reason,
                   notes={q: s.c.describe() for q, s in samplers.items()})


def request_seed(bound: Mapping[str, Any], seed: int) -> int:
    """A stable seed per (request, seed): the same request repeats its sample, different requests
    sample independently (Python's own hash of a str changes between processes)."""
    text = repr(sorted(bound.items())) + f"#{seed}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % 2**31


def _forced_now(pipe, samplers) -> dict[str, bool]:
    """Queries started exact because sampling them keeps failing stay marked so."""
    book = pipe.costs
    return {q: (not s.c.sampled) or book.sampling_impossible(q) for q, s in samplers.items()}


class _Clock:
    def __init__(self, stages):
        self.stages, self.t = stages, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] += (now - self.t) * 1e3
        self.t = now


def _start(book, samplers, opts: Options) -> dict[str, float]:
    """First fractions: 5 % for Biathlon; else the option, the warm start, or the default; exact
    at once where exact is predicted no dearer than that first sample."""
    targets = {}
    for q, s in samplers.items():
        if not s.c.sampled:
            targets[q] = 1.0
        elif opts.policy == "biathlon":
            targets[q] = biathlon.START
        elif opts.initial_fraction is not None:
            targets[q] = opts.initial_fraction
        else:
            # near where recent requests finished, but never exact on that alone: a few requests
            # that needed exact must not lock a query out of sampling; exact is a cost decision
            warm = book.warm_fraction(q)
            p = min(max(warm, 0.001), WARM_CAP) if warm is not None else DEFAULT_START
            matching = book.typical_matching(q)
            if book.sampling_impossible(q) or (
                    matching is not None and book.exact_ms(q, matching) <= book.sampling_ms(q, p * matching)):
                p = 1.0
            targets[q] = p
    return targets


def _advance(book, log, samplers, targets, cur, clock) -> None:
    """Run each query's increment, and log what it cost."""
    for q, s in samplers.items():
        p = s.next_fraction(targets[q])
        if p <= s.fraction:
            continue
        before = s.fraction
        known = _matching(s.result()) if 0 < before < 1 else None   # this request's estimate so far
        t0 = time.perf_counter()
        s.advance(cur, p)
        ms = (time.perf_counter() - t0) * 1e3
        known = known or s.matching_hint   # set by a sample that then had to give way to exact
        r = s.result() if s.fraction < 1.0 else None
        if r is not None and r.support:
            matching = r.support / s.fraction
            rows = matching * ((s.fraction - before) if s.c.source.nested else s.fraction)
            log.sampling.append((q, rows, ms))
        elif s.fraction >= 1.0:
            matching = known or book.typical_matching(q)
            if matching is not None:
                log.exact.append((q, matching, ms))
                log.matching.append((q, matching))
    clock.lap("queries")


def _needed(results, sens: np.ndarray, inputs) -> dict[str, float]:
    """Fraction each query's minimum support needs, counting only features the model reacts to."""
    index = {n: i for i, n in enumerate(inputs)}
    out = {}
    for q, r in results.items():
        need = 0.0
        for f, p in r.feature_needed.items():
            if f in index and sens[index[f]] == 0.0 and np.isfinite(r.stderr.get(f, 0.0)) and r.stderr.get(f, 0.0) > 0:
                continue  # the model ignores it here: its interval need not be trusted
            need = max(need, p)
        out[q] = need
    return out


def _plan(pipe, book, samplers, results, sens, needs, state, opts: Options, stalled: bool) -> dict[str, float]:
    shares = variance_shares(sens, list(pipe.inputs), {q: list(r.values) for q, r in results.items()})
    inputs = []
    for q, s in samplers.items():
        r = results[q]
        matching = _matching(r) or book.typical_matching(q) or 1e6
        overhead, per_row = book.sampling_fit(q)
        inputs.append(QueryPlanInput(q, s.fraction, s.c.source.nested if s.c.sampled else True,
                                     shares[q] if not r.exact else 0.0, needs[q], matching, max(per_row, 1e-9), overhead,
                                     book.exact_ms(q, matching)))
    margin = None
    if pipe.task == "classification":
        margin = pipe.label_margin(state.x0)
    sigma = target_sigma(pipe.task, opts.delta, opts.tau, margin)
    return plan_fractions(inputs, sigma, stalled=stalled)


def _matching(r) -> float | None:
    return None if r.exact else r.matching
