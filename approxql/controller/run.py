"""One request's approximate prediction, as a sequence of decisions and the work they need.

start fractions -> sample every aggregate query -> estimates and their joint error ->
(approxql) secant sensitivity, then propagation through the model -> stop, or plan the
fractions that should meet the bound -> repeat.

``RequestRun`` makes the decisions; the work (read samples to these fractions, compute these
features exactly, run the model on these rows) is handed to a driver as an operation, and the
result comes back. ``predict`` serves one run's operations as they come; ``predict_many`` serves
the operations of many runs together, one statement per query and one model batch per step.
Both drive the same decisions, so the same seeds give the same predictions.
"""
from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generator, Mapping

import numpy as np

from ..model import ModelOutput, scalar
from ..prediction import Prediction
from ..sampling import QuerySampler
from . import biathlon
from .costs import CostBook, CostLog
from .features import FeatureState, build_state
from .options import DEFAULT_START, START_ROWS, WARM_CAP, Options
from .planner import MARGIN, QueryPlanInput, plan_fractions, target_sigma, variance_shares
from .propagation import judge, normal_draws
from .sensitivity import secant_rows, secant_sensitivity

if TYPE_CHECKING:
    from ..pipeline import Pipeline


# -- operations a run asks its driver for -----------------------------------------------------
@dataclass(frozen=True)
class Read:
    """Advance these samplers to these fractions (only queries that read more are listed)."""
    samplers: Mapping[str, QuerySampler]
    targets: Mapping[str, float]
    stage = "queries"


@dataclass(frozen=True)
class Fixed:
    """Compute the lookups and request-only features of ``bound``; answer with a dict."""
    bound: Mapping[str, Any]
    stage = "queries"


@dataclass(frozen=True)
class ExactAll:
    """Compute every feature of ``bound`` exactly; answer with (raw values, a note when a stale copy was skipped)."""
    bound: Mapping[str, Any]
    stage = "queries"


@dataclass(frozen=True)
class Infer:
    """Run the model on ``rows``; answer with its ModelOutput."""
    rows: np.ndarray
    stage = "model"


@dataclass
class RequestRun:
    """The decisions of one request. ``start()`` gives the first operation, ``send(result)`` the
    next one, or None once ``prediction`` is set."""

    pipe: "Pipeline"
    bound: Mapping[str, Any]
    opts: Options
    book: CostBook                     # the learned state this request plans from (a snapshot)
    t_start: float
    stages: dict = field(default_factory=lambda: defaultdict(float))
    log: CostLog = field(default_factory=CostLog)
    reads: list = field(default_factory=list)      # the serial driver's per-statement trace
    exact_at_once: bool = False                    # served by one exact statement, not sampled
    enough: dict = field(default_factory=dict)     # per query, the fraction this round shows would have sufficed
    prediction: Prediction | None = None

    def start(self):
        self._clock = _Clock(self.stages)
        self._steps = self._run()
        return self._next(None)

    def send(self, result):
        return self._next(result)

    def charge(self, stage: str, since: float) -> None:
        """The driver reports the time an operation took (shared with other runs in a batch)."""
        self.stages[stage] += (time.perf_counter() - since) * 1e3

    def _next(self, result):
        try:
            return self._steps.send(result)
        except StopIteration as done:
            self.prediction = done.value
            return None

    def _wait(self, op, stage: str):
        """Charge the time since the last lap to ``stage``, hand ``op`` to the driver, wait."""
        self._clock.lap(stage)
        result = yield op
        self._clock.reset()
        return result

    def _value(self, x: np.ndarray, stage: str):
        out = yield from self._wait(Infer(np.asarray(x, dtype=np.float64)[None, :]), stage)
        return scalar(out.values[0])

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> Generator[Any, Any, Prediction]:
        pipe, opts, book, clock = self.pipe, self.opts, self.book, self._clock
        plans = pipe.sampling_plans(strategy=opts.strategy)
        whole_exact, why = book.arms.exact_pays() if learns_arms(opts) else (False, "")
        if whole_exact:          # whole requests have been cheaper exact: no sampler is even built
            self.exact_at_once = True
            return (yield from self._exact_at_once(plans, why))
        targets, forced, self.log.started = _start(book, plans, opts, self.bound)
        if all(p >= 1.0 for p in targets.values()):
            self.exact_at_once = True
            return (yield from self._exact_at_once(plans, forced=forced))
        seed = request_seed(self.bound, opts.seed)   # requests must not share a sample: their errors would be one
        samplers = {q: QuerySampler(c, pipe.engine, self.bound, seed=seed) for q, c in plans.items()}
        fixed = yield from self._wait(Fixed(self.bound), "planning")
        history: list[dict] = []
        stop_reason, probability, value = "", 0.0, None
        enough: dict[str, float] = {}
        for round_no in range(1, opts.max_rounds + 1):
            if round_no == opts.max_rounds and opts.policy == "approxql":
                targets = {q: 1.0 for q in targets}          # the last allowed round is exact
            wanted = {q: s.next_fraction(targets[q]) for q, s in samplers.items()}
            wanted = {q: p for q, p in wanted.items() if p > samplers[q].fraction}
            if wanted:
                yield from self._wait(Read(samplers, wanted), "planning")
            results = {q: s.result() for q, s in samplers.items()}
            pipe.check_nulls(results, fixed)
            state = build_state(pipe.inputs, results, fixed, pipe.spec.fill)
            clock.lap("estimation")
            entry = {"round": round_no, "fractions": {q: s.fraction for q, s in samplers.items()}}
            history.append(entry)
            waiting = any(r.feature_needed.get(f, 0.0) > r.fraction for r in results.values() for f in r.values)
            if all(r.exact for r in results.values()) or (len(state.approximate) == 0 and not waiting):
                value = yield from self._value(state.x0, "estimation")
                probability, stop_reason = 1.0, "every feature is exact"
                break
            if opts.policy == "fixed":   # a baseline: one sample, no guarantee asked or given
                value = yield from self._value(state.x0, "estimation")
                stop_reason = f"one sample at fraction {opts.initial_fraction} (policy 'fixed': no guarantee)"
                break
            if opts.policy == "biathlon":
                prop, plan_next = self._biathlon_round(samplers, results, state, round_no)
            else:
                prop, plan_next = yield from self._approxql_round(samplers, results, state, round_no, history)
            clock.lap("propagation")
            entry["probability"] = None if prop is None else prop.probability   # None: not yet trusted
            if prop is not None:
                probability, value = prop.probability, prop.value
                if probability >= opts.tau:
                    stop_reason = f"probability {probability:.3f} >= tau {opts.tau}"
                    enough = self.enough          # this round's own measure of what sufficed
                    break
            targets = plan_next()
            if all(targets[q] <= s.fraction for q, s in samplers.items()):  # a plan that reads nothing more
                targets = {q: 1.0 for q in samplers}                          # cannot help: finish exactly
            clock.lap("planning")
            if opts.time_budget_ms is not None and (time.perf_counter() - self.t_start) * 1e3 >= opts.time_budget_ms:
                stop_reason = f"time budget of {opts.time_budget_ms} ms spent"
                value = yield from self._value(state.x0, "planning")   # the prediction from this round's features
                break
        else:
            stop_reason = f"{opts.max_rounds} rounds (max_rounds) reached"
            value = yield from self._value(state.x0, "planning")
        if opts.learn:
            seen = dict(self.log.matching)
            self.log.finished += [(q, min(s.fraction, enough.get(q, s.fraction)),
                                   estimated_matching(results[q]) or seen.get(q), s.fell_back)
                                  for q, s in samplers.items()]
            pipe.costs.merge(self.log)
        features = {n: float(state.x0[i]) for i, n in enumerate(pipe.inputs)}
        stderr = {n: float(state.stderr[i]) for i, n in enumerate(pipe.inputs)}
        exact = all(r.exact for r in results.values())
        return self._finish(Prediction(
            value=value, probability=probability, exact=exact, features=features,
            rates={q: s.fraction for q, s in samplers.items()}, rounds=len(history), latency_ms=0.0,
            met_bound=probability >= opts.tau, stderr=stderr, stop_reason=stop_reason, history=tuple(history),
            notes={q: s.note or s.c.describe() for q, s in samplers.items()}))

    def _finish(self, pred: Prediction) -> Prediction:
        self._clock.lap("other")
        latency = (time.perf_counter() - self.t_start) * 1e3
        stages = {k: v for k, v in self.stages.items() if k != "other"}
        stages["other"] = max(latency - sum(stages.values()), 0.0)
        return replace(pred, latency_ms=latency, stages_ms=stages, reads=tuple(self.reads))

    def _exact_at_once(self, plans, why: str = "", forced: dict | None = None):
        """Every query is predicted cheaper exact (``forced`` says which must stay so), or whole
        requests have been (``why``): one statement for all features. Only the first teaches the
        warm start: a choice made on whole requests says nothing of the fraction a query needs
        (and ``_start`` never makes every query exact on predicted cost)."""
        pipe, opts = self.pipe, self.opts
        raw, stale = yield from self._wait(ExactAll(self.bound), "planning")
        features = pipe.model_features(raw)
        value = yield from self._value([features[n] for n in pipe.inputs], "estimation")
        if opts.learn and forced is not None:
            pipe.costs.merge(CostLog(finished=[(q, 1.0, None, f) for q, f in forced.items()], started=self.log.started))
        reason = ("every feature is exact: initial_fraction=1" if opts.initial_fraction == 1 else
                  f"every feature is exact: {why}" if why else
                  "every feature is exact: each query was started exact (sampling it failed for recent "
                  "requests, or exact is predicted no dearer)") + (f"; {stale}" if stale else "")
        return self._finish(Prediction(
            value=value, probability=1.0, exact=True, features=features,
            rates={q.name: 1.0 for q in pipe.spec.aggregate_queries}, rounds=1, latency_ms=0.0,
            stop_reason=reason, notes={q: c.describe() for q, c in plans.items()}))

    def _biathlon_round(self, samplers, results, state, round_no: int):
        """Saltelli propagation (probability and Sobol indices per query), then the published step.
        The baseline runs its own model batch (it is not served in batches)."""
        pipe, opts, book = self.pipe, self.opts, self.book
        groups = {q: np.array([i for i, n in enumerate(pipe.inputs) if n in r.values and state.stderr[i] > 0])
                  for q, r in results.items() if not r.exact}
        prop, indices = biathlon.saltelli(pipe.model, state, {g: v for g, v in groups.items() if len(v)},
                                          task=pipe.task, delta=opts.delta, seed=opts.seed + round_no)
        slopes = {q: book.sampling_ms(q, 1.0) - book.sampling_ms(q, 0.0) for q in samplers}
        return prop, lambda: biathlon.biathlon_step({q: s.fraction for q, s in samplers.items()}, indices, slopes)

    def _approxql_round(self, samplers, results, state: FeatureState, round_no: int, history):
        """Secant sensitivity; minimum support first (no propagation while an interval is untrusted);
        else Sobol propagation. The plan aims at the bound; a plan that missed it was 'stalled'."""
        pipe, opts = self.pipe, self.opts
        secant = secant_rows(state)
        draw = lambda: state.draw(normal_draws(len(state.x0), opts.points, opts.seed + round_no))  # noqa: E731
        # every interval trusted already: propagation will run, so one model call serves both
        draws = draw() if all(r.needed_fraction <= samplers[q].fraction for q, r in results.items()) else None
        out = yield from self._wait(Infer(secant if draws is None else np.vstack([secant, draws])), "propagation")
        k = len(secant)
        head = out.take(slice(0, k))
        sens = secant_sensitivity(head, state, task=pipe.task)
        margin = _label_margin(head) if pipe.task == "classification" else None   # row 0 is the point estimate
        needs = _needed(results, sens, pipe.inputs)
        prop = None
        if all(needs[q] <= samplers[q].fraction for q in samplers):
            if draws is None:
                draws = draw()
                out = yield from self._wait(Infer(np.vstack([secant[:1], draws])), "propagation")
                k = 1
            prop = judge(out.take(np.r_[0, k:len(out.values)]), task=pipe.task, delta=opts.delta, centred=True)
        before = history[-2].get("probability") if len(history) > 1 else None
        stalled = prop is not None and before is not None
        self.enough = {} if prop is None else _enough(pipe, samplers, results, sens, needs, margin, opts)
        if stalled and prop.probability <= before:
            # a larger sample that did not raise the probability: the exact features sit where the
            # model steps (a split of its trees), and more rows will not settle it soon (battery
            # at 1e6 rows: 0.66, 0.71, 0.61, 0.65, 0.53, 0.52, 0.50 over seven rounds, then exact)
            return prop, lambda: {q: 1.0 for q in samplers}
        return prop, lambda: _plan(pipe, self.book, samplers, results, sens, needs, margin, opts, stalled)


def learns_arms(opts: Options) -> bool:
    """Whether requests choose between sampling and exact at once from whole-request latencies
    (approxql's own policy, with no first fraction forced)."""
    return opts.policy == "approxql" and opts.initial_fraction is None


def request_seed(bound: Mapping[str, Any], seed: int) -> int:
    """A stable seed per (request, seed): the same request repeats its sample, different requests
    sample independently (Python's own hash of a str changes between processes)."""
    text = repr(sorted(bound.items())) + f"#{seed}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % 2**31


def _label_margin(out: ModelOutput) -> float | None:
    """How far row 0's predicted label's probability leads the runner-up's, halved."""
    if out.probabilities is None:
        return None
    p = np.sort(out.probabilities[0])[::-1]
    return float((p[0] - (p[1] if len(p) > 1 else 0.0)) / 2)


class _Clock:
    def __init__(self, stages):
        self.stages, self.t = stages, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] += (now - self.t) * 1e3
        self.t = now

    def reset(self) -> None:
        self.t = time.perf_counter()


def _start(book, plans, opts: Options, bound: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, bool], list]:
    """First fractions: 5 % for Biathlon; else the option, or the warm start or the default, raised
    to what the request's group needs for minimum support and, on a prepared copy, to START_ROWS
    of its typical matching rows; exact at once where exact is predicted no dearer than that
    first sample, unless that was so for the last ``EXPLORE`` requests (then the sample is read, to
    measure its cost again), and never every query on cost alone: exact at once is the arms'
    choice, made on whole requests. And per query, whether it is forced exact (not sampled, or
    sampling it kept failing): such queries stay marked so; and (query, started exact on cost)."""
    targets, forced, on_cost, first = {}, {}, {}, {}
    for q, c in plans.items():
        impossible = book.sampling_impossible(q)
        forced[q] = (not c.sampled) or impossible
        if not c.sampled:
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
            # enough rows for this request's group's minimum support, so the first round can be trusted
            p = max(p, c.start_for(bound) or 0.0)
            matching = book.typical_matching(q)
            if matching and c.source.nested:
                # a read of a few thousand rows of a prepared copy costs its statement's floor, so
                # reading fewer saves nothing, while more rows let more requests stop in one round
                # (turbofan at 8.4e4 rows, sampled: warm start at 0.1-0.5 % took 2.37 rounds and a
                # mean 5.9 ms; at >= 2,000 rows 1.04 rounds and 3.1 ms)
                p = max(p, min(START_ROWS / matching, WARM_CAP))
            first[q] = p
            on_cost[q] = (not impossible and matching is not None and not book.sampling_due(q)
                          and book.exact_ms(q, matching) <= book.sampling_ms(q, p * matching))
            targets[q] = 1.0 if impossible or on_cost[q] else p
    if on_cost and all(p >= 1.0 for p in targets.values()):
        # one statement's predicted cost said exact for every query; whole requests decide that
        # (measured: one early request that took four rounds fitted the sampling cost at 4-6 ms
        # against 2.4 measured later, and kept the vibration segments exact at once for good)
        targets.update({q: first[q] for q, yes in on_cost.items() if yes})
        on_cost = dict.fromkeys(on_cost, False)
    return targets, forced, list(on_cost.items())


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


def _plan(pipe, book, samplers, results, sens, needs, margin, opts: Options, stalled: bool) -> dict[str, float]:
    shares = variance_shares(sens, list(pipe.inputs), {q: list(r.values) for q, r in results.items()})
    inputs = []
    for q, s in samplers.items():
        r = results[q]
        matching = estimated_matching(r) or book.typical_matching(q) or 1e6
        overhead, per_row = book.sampling_fit(q)
        inputs.append(QueryPlanInput(q, s.fraction, s.c.source.nested if s.c.sampled else True,
                                     shares[q] if not r.exact else 0.0, needs[q], matching, max(per_row, 1e-9), overhead,
                                     book.exact_ms(q, matching)))
    sigma = target_sigma(pipe.task, opts.delta, opts.tau, margin)
    return plan_fractions(inputs, sigma, stalled=stalled)


def _enough(pipe, samplers, results, sens, needs, margin, opts: Options) -> dict[str, float]:
    """The fraction each query would have needed for this round's output variance to just meet
    the bound (variance shrinks like 1/p), never below its minimum support: what the warm start
    learns. Learning where requests stopped instead is a ratchet (no request stops below where it
    started), so a few hard requests raised every later start for good (measured: fraud at 6.6e5
    rows per request started every request at the 25 % cap)."""
    shares = variance_shares(sens, list(pipe.inputs), {q: list(r.values) for q, r in results.items()})
    spent = sum(v for q, v in shares.items() if not results[q].exact)
    ratio = spent / target_sigma(pipe.task, opts.delta, opts.tau, margin) ** 2
    return {q: max(needs[q], s.fraction * min(ratio, 1.0)) * MARGIN for q, s in samplers.items()
            if not results[q].exact}


def estimated_matching(r) -> float | None:
    """Rows matching the query, estimated from its sample (None once it is exact)."""
    return None if r.exact else r.matching
