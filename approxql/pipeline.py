"""A pipeline: feature queries on an engine, then an ONNX model."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .engines import DuckDBEngine, Engine
from .errors import ApproxQLError, ModelError, NullFeatureError, OptionError, RequestError
from .controller.costs import CostBook
from .merge import merge_scans
from .model import OnnxModel, scalar
from .params import bind_request
from .pipeline_file import PipelineSpec, read_pipeline_file
from .plan import QueryKind, passthrough_params
from .prediction import Prediction

if TYPE_CHECKING:
    from .sampling import CompiledQuery


def load_pipeline(path: str | Path, con: duckdb.DuckDBPyConnection | None = None, *,
                  engine: Engine | None = None, warm: bool = False) -> "Pipeline":
    """Read a pipeline file, load its model and check its tables on ``con`` (or ``engine``).
    ``warm=True`` also builds the sampling plans now (they read each table's tail statistics
    once), so the first approximate request does not pay for it."""
    if (con is None) == (engine is None):
        raise TypeError("load_pipeline needs exactly one of con= (a DuckDB connection) or engine=")
    spec = read_pipeline_file(path)
    pipe = Pipeline(spec, engine or DuckDBEngine(con))
    if warm:
        pipe.sampling_plans()
    return pipe


class Pipeline:
    """A loaded pipeline. Safe to call from several threads: each call uses its own cursor."""

    def __init__(self, spec: PipelineSpec, engine: Engine):
        self.spec, self.engine = spec, engine
        try:
            self.model = OnnxModel(spec.model_path, spec.inputs, spec.task)
        except ModelError as e:
            raise ModelError(f"{spec.path}: {e}") from None
        engine.check_tables(spec.queries)
        self._merged = merge_scans(spec.queries, engine.dialect)   # what every exact plan runs
        self._exact = engine.compile_exact(self._merged)
        self._exact_batch = None
        self._served = None                      # the exact plan approxql serves with (on copies)
        self._sampling: dict[str, dict] = {}     # strategy -> query name -> CompiledQuery
        self._sampling_lock = threading.Lock()
        cheap = [q for q in spec.queries if q.kind is not QueryKind.AGGREGATE]
        passing = {q.name: passthrough_params(q, list(spec.params)) for q in cheap}
        self._passthrough = {f: p for m in passing.values() if m for f, p in m.items()}   # feature -> param
        self._fixed_queries = [q for q in cheap if not passing[q.name]]   # the rest need a statement
        self._fixed = engine.compile_exact(self._fixed_queries) if self._fixed_queries else None
        self._fixed_batch = None
        self.costs = CostBook()

    name = property(lambda self: self.spec.name)
    params = property(lambda self: self.spec.params)
    inputs = property(lambda self: self.spec.inputs)
    task = property(lambda self: self.spec.task)

    def __repr__(self) -> str:
        return (f"Pipeline({self.name!r}, task={self.task!r}, {len(self.spec.queries)} queries, "
                f"inputs={list(self.inputs)}, engine={self.engine.name})")

    # -- exact ---------------------------------------------------------------------------
    def predict_exact(self, request: Mapping[str, Any]) -> Prediction:
        """Predict from exactly computed features: the reference the approximate path is judged by."""
        t0 = time.perf_counter()
        raw = self.exact_raw(bind_request(list(self.params), request))
        t1 = time.perf_counter()
        features = self.model_features(raw)
        out = self.model.run(np.array([[features[name] for name in self.inputs]], dtype=np.float64))
        t2 = time.perf_counter()
        rates = {q.name: 1.0 for q in self.spec.aggregate_queries}
        return Prediction(value=scalar(out.values[0]), probability=1.0, exact=True, features=features,
                          rates=rates, rounds=1, latency_ms=(t2 - t0) * 1e3, met_bound=True,
                          stages_ms={"queries": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3})

    def exact_raw(self, bound: Mapping[str, Any], cur=None) -> dict[str, Any]:
        """Every feature of a bound request, exactly, in one statement (NULL stays None)."""
        return self.engine.exact_features(self._exact, bound, cur)

    def served_exact_raw(self, bound: Mapping[str, Any], cur=None) -> tuple[dict[str, Any], str, float]:
        """``exact_raw`` as approxql serves it when it decides to compute exactly: on prepared
        copies where their order finds the rows (see ``sampling.exact_plan``); a note when a
        stale copy sent it to the sources; and the ms of a read that only timed which is faster."""
        if self._served is None:
            from .sampling.exact_plan import ExactPlan, exact_plan
            con = getattr(self.engine, "con", None)
            if con is None:
                plan = ExactPlan(None, self._exact)
            else:
                with con.cursor() as own:
                    plan = exact_plan(self.engine, own, self._merged, self._exact)
            with self._sampling_lock:
                self._served = self._served or plan
        return self._served.run(self.engine, bound, cur)

    def exact_raw_many(self, bounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``exact_raw`` of many bound requests: one lateral statement (one each when few)."""
        return self._raw_many(self._exact, self._exact_many(), bounds)

    def exact_features_many(self, requests: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
        """Exact feature values for many requests in one statement (fills applied), in request order."""
        return exact_feature_table(self.spec, self.engine, requests, self._exact_many())

    def _exact_many(self):
        if self._exact_batch is None:
            self._exact_batch = self.engine.compile_exact(self._merged, batch=True)
        return self._exact_batch

    def predict_exact_many(self, requests: Sequence[Mapping[str, Any]] | pa.Table | pa.RecordBatch, *,
                           errors: str = "raise"):
        """``predict_exact`` for many requests: one statement for every feature of every request,
        one model batch. Returns what ``predict_many`` returns (a list, or an Arrow table)."""
        _check_errors(errors)
        t0 = time.perf_counter()
        bounds, failed = self._bind_many(requests, errors)
        ok = [i for i in range(len(bounds)) if i not in failed]
        raws = self.exact_raw_many([bounds[i] for i in ok])
        results: list = [failed.get(i) for i in range(len(bounds))]
        rows = {}
        for i, raw in zip(ok, raws):
            try:
                f = self.model_features(raw)
                rows[i] = f
            except ApproxQLError as e:
                if errors == "raise":
                    from .controller.batch import describe
                    raise type(e)(f"request {i} ({describe(bounds[i])}): {e}") from None
                results[i] = e
        if rows:
            X = np.array([[f[n] for n in self.inputs] for f in rows.values()], dtype=np.float64)
            out = self.model.run(X)
            ms = (time.perf_counter() - t0) * 1e3
            rates = {q.name: 1.0 for q in self.spec.aggregate_queries}
            for (i, f), v in zip(rows.items(), out.values):
                results[i] = Prediction(value=scalar(v), probability=1.0, exact=True, features=f, rates=rates,
                                        rounds=1, latency_ms=ms, stop_reason="computed exactly (batch)")
        return _as_output(requests, results)

    # -- approximate --------------------------------------------------------------------------
    def predict(self, request: Mapping[str, Any], *, tau: float | None = None, delta: float | None = None,
                seed: int | None = None, policy: str = "approxql", initial_fraction: float | None = None,
                max_rounds: int | None = None, points: int | None = None, time_budget_ms: float | None = None,
                strategy: str = "auto", learn: bool = True) -> Prediction:
        """Predict from sampled features, stopping once Pr(|y - y_exact| <= delta) >= tau
        (classification: the same label), every feature is exact, or the time budget is spent.

        ``policy="biathlon"`` reproduces the original system's choices (the baseline).
        ``seed`` fixes every random choice, and a request plans from the pipeline's learned costs
        and warm start as they were when it began: the same request, seed and pipeline state make
        the same decisions (fractions, rounds, stop) and the same values, up to the last bits that
        DuckDB's parallel summation order may change. ``learn=False`` leaves that state as it was."""
        from .controller import check_options, predict as run
        opts = check_options(task=self.task, tau=tau, delta=delta, seed=seed, policy=policy,
                             initial_fraction=initial_fraction, max_rounds=max_rounds, points=points,
                             time_budget_ms=time_budget_ms, strategy=strategy, learn=learn,
                             default_tau=self.spec.tau, default_delta=self.spec.delta)
        if self.task == "regression" and opts.delta == 0:
            return self.predict_exact(request)  # no sampling error is within a bound of 0
        return run(self, request, opts)

    def predict_many(self, requests: Sequence[Mapping[str, Any]] | pa.Table | pa.RecordBatch, *,
                     tau: float | None = None, delta: float | None = None, seed: int | None = None,
                     policy: str = "approxql", initial_fraction: float | None = None, max_rounds: int | None = None,
                     points: int | None = None, time_budget_ms: float | None = None, strategy: str = "auto",
                     learn: bool = True, errors: str = "raise"):
        """``predict`` for many requests at once, with the same options and the same guarantee each.

        Requests are a list of dicts or an Arrow table/record batch with one column per parameter.
        Their work is shared: each round runs one statement per feature query for all requests
        still going, and one model batch. Every request plans from the pipeline's state as it was
        when the batch began, so it makes the decisions ``predict`` makes for it with that state
        and seed. ``time_budget_ms`` counts from the start of the batch.

        Returns a list of Predictions for a list, or an Arrow table (value, probability, exact,
        met_bound, rounds, latency_ms, stop_reason, error) in request order for Arrow input.
        ``errors="null"`` turns a request's own failure (a bad value, a NULL feature without a
        fill) into None (or a row with ``error`` set) instead of raising; failures of the database
        or the model still raise."""
        from .controller import check_options, predict_many as run_many
        _check_errors(errors)
        opts = check_options(task=self.task, tau=tau, delta=delta, seed=seed, policy=policy,
                             initial_fraction=initial_fraction, max_rounds=max_rounds, points=points,
                             time_budget_ms=time_budget_ms, strategy=strategy, learn=learn,
                             default_tau=self.spec.tau, default_delta=self.spec.delta)
        if self.task == "regression" and opts.delta == 0:
            return self.predict_exact_many(requests, errors=errors)  # no sampling error is within a bound of 0
        bounds, failed = self._bind_many(requests, errors)
        ok = [i for i in range(len(bounds)) if i not in failed]
        done = run_many(self, [bounds[i] for i in ok], opts, raise_errors=errors == "raise", index=ok)
        results: list = [failed.get(i) for i in range(len(bounds))]
        for i, r in zip(ok, done):
            results[i] = r
        return _as_output(requests, results)

    def fixed_features(self, bound: Mapping[str, Any], cur=None) -> dict[str, Any]:
        """Lookups and request-only features: exact, in one statement; features that are a bare
        parameter are the request's own values, without one."""
        out = {f: bound[p] for f, p in self._passthrough.items()}
        if self._fixed is not None:
            out.update(self.engine.exact_features(self._fixed, bound, cur))
        return out

    def fixed_features_many(self, bounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``fixed_features`` of many bound requests."""
        out = [{f: b[p] for f, p in self._passthrough.items()} for b in bounds]
        if self._fixed is None:
            return out
        if self._fixed_batch is None:
            self._fixed_batch = self.engine.compile_exact(self._fixed_queries, batch=True)
        for row, raw in zip(out, self._raw_many(self._fixed, self._fixed_batch, bounds)):
            row.update(raw)
        return out

    def _raw_many(self, one, many, bounds) -> list[dict[str, Any]]:
        from .sampling.batch import exact_many
        return exact_many(self.engine, one, many, bounds, {p.name: p.arrow_type for p in self.params})

    def _bind_many(self, requests, errors: str) -> tuple[list[dict], dict[int, ApproxQLError]]:
        """Bound requests in order; with errors="null", failures by index (their slot holds {})."""
        bounds, failed = [], {}
        for i, r in enumerate(_rows(requests)):
            try:
                bounds.append(bind_request(list(self.params), r))
            except RequestError as e:
                if errors == "raise":
                    raise RequestError(f"request {i}: {e}") from None
                bounds.append({})
                failed[i] = e
        return bounds, failed

    def check_nulls(self, results, fixed: Mapping[str, Any]) -> None:
        """Raise as predict_exact does for an exactly known input that is NULL without a fill
        value, or not a number (sampled features are checked once they are exact)."""
        known = dict(fixed)
        for r in results.values():
            known.update({n: v for n, v in r.values.items() if r.exact or n in r.reasons})
        self.model_features({n: (known[n] if n in known else 0.0) for n in self.inputs})

    # -- sampling ---------------------------------------------------------------------------
    def sampling_plans(self, *, strategy: str = "auto") -> dict[str, "CompiledQuery"]:
        """How each aggregate query is sampled (built once: it reads each table's tail statistics)."""
        from .sampling import compile_query
        with self._sampling_lock:
            if strategy not in self._sampling:
                con = getattr(self.engine, "con", None)
                self._sampling[strategy] = {q.name: compile_query(self.engine, con, q, strategy=strategy)
                                            for q in self.spec.aggregate_queries}
            return self._sampling[strategy]

    def explain_sampling(self) -> str:
        """Which feature queries are sampled and how, and which features are computed exactly and why."""
        lines = [f"pipeline {self.name}:"]
        lines += ["  " + c.describe() for c in self.sampling_plans().values()]
        others = [q for q in self.spec.queries if q.kind is not QueryKind.AGGREGATE]
        lines += [f"  {q.name} (line {q.line}): {q.kind.value} query, exact and cheap" for q in others]
        return "\n".join(lines)

    # -- helpers --------------------------------------------------------------------------
    def model_features(self, raw: Mapping[str, Any]) -> dict[str, float]:
        """Apply fill values and check every model input is a number."""
        features: dict[str, float] = {}
        for name in self.inputs:
            value = raw[name]
            if value is None:
                if name not in self.spec.fill:
                    q = self.spec.query_of(name)
                    raise NullFeatureError(
                        f"feature {name!r} (query {q.name}, line {q.line}) is NULL for this request, e.g. no "
                        f"matching rows; declare a value with '-- fill: {name}=...' in {self.spec.path.name}")
                value = self.spec.fill[name]
            try:
                features[name] = float(value)
            except (TypeError, ValueError):
                raise ApproxQLError(f"feature {name!r} is {value!r} ({type(value).__name__}); "
                                    f"model inputs must be numbers") from None
        return features



def exact_feature_table(spec: PipelineSpec, engine: Engine, requests, compiled=None) -> pa.Table:
    """Exact features of many requests with fill values applied; needs no model, so training
    scripts use it to build their feature matrix the same way predictions do."""
    table = requests_table(spec, requests)
    compiled = compiled or engine.compile_exact(merge_scans(spec.queries, engine.dialect), batch=True)
    out = engine.exact_features_many(compiled, table)
    for name, value in spec.fill.items():
        i = out.column_names.index(name)
        out = out.set_column(i, name, pc.fill_null(out.column(name).cast(pa.float64()), value))
    return out


def requests_table(spec: PipelineSpec, requests) -> pa.Table:
    """Validate requests (a list of dicts or an Arrow table) into an Arrow table of bound values."""
    bound = []
    for i, r in enumerate(_rows(requests)):
        try:
            bound.append(bind_request(list(spec.params), r))
        except RequestError as e:
            raise RequestError(f"request {i}: {e}") from None
    return pa.Table.from_pylist(bound, schema=pa.schema([(p.name, p.arrow_type) for p in spec.params]))


def _rows(requests) -> list:
    if isinstance(requests, pa.RecordBatch):
        requests = pa.Table.from_batches([requests])
    if isinstance(requests, pa.Table):
        try:
            return requests.to_pylist()
        except (OverflowError, ValueError):   # a value Python cannot hold (a timestamp after year 9999)
            columns = {name: [_py(v) for v in requests.column(name)] for name in requests.column_names}
            return [{k: columns[k][i] for k in columns} for i in range(requests.num_rows)]
    if isinstance(requests, (str, bytes, Mapping)) or not hasattr(requests, "__iter__"):
        raise RequestError(f"requests must be a list of dicts or an Arrow table, got {type(requests).__name__}")
    return list(requests)


class Unreadable:
    """An Arrow value Python cannot represent; binding refuses it with a RequestError."""

    def __init__(self, scalar):
        self.text = f"{scalar.type} value out of Python's range"

    def __repr__(self) -> str:
        return f"<{self.text}>"


def _py(scalar):
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        return Unreadable(scalar)


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "null"):
        raise OptionError(f"errors must be 'raise' or 'null', got {errors!r}")


OUTPUT_COLUMNS = ("value", "probability", "exact", "met_bound", "rounds", "latency_ms", "stop_reason", "error")


def _as_output(requests, results: list):
    """A list (None for a failed request) for list input; an Arrow table for Arrow input."""
    if not isinstance(requests, (pa.Table, pa.RecordBatch)):
        return [r if isinstance(r, Prediction) else None for r in results]
    ok = [r if isinstance(r, Prediction) else None for r in results]
    return pa.table({
        "value": pa.array([r.value if r else None for r in ok]),
        "probability": pa.array([r.probability if r else None for r in ok], pa.float64()),
        "exact": pa.array([r.exact if r else None for r in ok], pa.bool_()),
        "met_bound": pa.array([r.met_bound if r else None for r in ok], pa.bool_()),
        "rounds": pa.array([r.rounds if r else None for r in ok], pa.int32()),
        "latency_ms": pa.array([r.latency_ms if r else None for r in ok], pa.float64()),
        "stop_reason": pa.array([r.stop_reason if r else None for r in ok], pa.string()),
        "error": pa.array([None if r else str(e) for r, e in zip(ok, results)], pa.string()),
    })
