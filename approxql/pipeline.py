"""A pipeline: feature queries on an engine, then an ONNX model."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .engines import DuckDBEngine, Engine
from .errors import ApproxQLError, ModelError, NullFeatureError, RequestError
from .controller.costs import CostBook
from .model import OnnxModel, scalar
from .params import bind_request
from .pipeline_file import PipelineSpec, read_pipeline_file
from .plan import QueryKind
from .prediction import Prediction


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
        self._exact = engine.compile_exact(spec.queries)
        self._exact_batch = None
        self._sampling: dict[str, dict] = {}     # strategy -> query name -> CompiledQuery
        self._sampling_lock = threading.Lock()
        cheap = [q for q in spec.queries if q.kind is not QueryKind.AGGREGATE]
        self._fixed = engine.compile_exact(cheap) if cheap else None
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
        return self.predict_bound_exact(bind_request(list(self.params), request), t0)

    def predict_bound_exact(self, bound: Mapping[str, Any], t0: float) -> Prediction:
        """predict_exact for a request already bound (the controller's exact-at-once path)."""
        raw = self.engine.exact_features(self._exact, bound)
        t1 = time.perf_counter()
        features = self._model_features(raw)
        x = np.array([[features[name] for name in self.inputs]], dtype=np.float64)
        out = self.model.run(x)
        t2 = time.perf_counter()
        rates = {q.name: 1.0 for q in self.spec.aggregate_queries}
        return Prediction(value=scalar(out.values[0]), probability=1.0, exact=True, features=features,
                          rates=rates, rounds=1, latency_ms=(t2 - t0) * 1e3, met_bound=True,
                          stages_ms={"queries": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3})

    def exact_features_many(self, requests: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
        """Exact feature values for many requests in one statement (fills applied), in request order."""
        if self._exact_batch is None:
            self._exact_batch = self.engine.compile_exact(self.spec.queries, batch=True)
        return exact_feature_table(self.spec, self.engine, requests, self._exact_batch)

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

    def fixed_features(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        """Lookups and request-only features: exact, in one statement."""
        return self.engine.exact_features(self._fixed, bound) if self._fixed is not None else {}

    def check_nulls(self, results, fixed: Mapping[str, Any]) -> None:
        """Raise as predict_exact does for an exactly known input that is NULL without a fill
        value, or not a number (sampled features are checked once they are exact)."""
        known = dict(fixed)
        for r in results.values():
            known.update({n: v for n, v in r.values.items() if r.exact or n in r.reasons})
        self._model_features({n: (known[n] if n in known else 0.0) for n in self.inputs})

    def model_value(self, x: np.ndarray):
        return scalar(self.model.run(np.asarray(x, dtype=np.float64)[None, :]).values[0])

    def label_margin(self, x: np.ndarray) -> float | None:
        """How far the predicted label's probability leads the runner-up's, halved (None without probabilities)."""
        out = self.model.run(np.asarray(x, dtype=np.float64)[None, :])
        if out.probabilities is None:
            return None
        p = np.sort(out.probabilities[0])[::-1]
        return float((p[0] - (p[1] if len(p) > 1 else 0.0)) / 2)

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
    def _model_features(self, raw: Mapping[str, Any]) -> dict[str, float]:
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
    compiled = compiled or engine.compile_exact(spec.queries, batch=True)
    out = engine.exact_features_many(compiled, table)
    for name, value in spec.fill.items():
        i = out.column_names.index(name)
        out = out.set_column(i, name, pc.fill_null(out.column(name).cast(pa.float64()), value))
    return out


def requests_table(spec: PipelineSpec, requests) -> pa.Table:
    """Validate requests (a list of dicts or an Arrow table) into an Arrow table of bound values."""
    if isinstance(requests, pa.RecordBatch):
        requests = pa.Table.from_batches([requests])
    rows = requests.to_pylist() if isinstance(requests, pa.Table) else list(requests)
    bound = []
    for i, r in enumerate(rows):
        try:
            bound.append(bind_request(list(spec.params), r))
        except RequestError as e:
            raise RequestError(f"request {i}: {e}") from None
    return pa.Table.from_pylist(bound, schema=pa.schema([(p.name, p.arrow_type) for p in spec.params]))
