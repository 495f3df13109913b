"""Build a pipeline's data, layouts and model, then time every system on the same requests.

Systems, each on its own pipeline object, interleaved request by request (drift hits all alike),
in an order balanced over requests (see ``order_for``):
  exact          predict_exact on the generated table (the same table approxql samples)
  exact_fastest  predict_exact on a copy sorted by the pipeline's entity and time columns
  fixed          one sample at a fixed fraction, no guarantee (``policy="fixed"``)
  biathlon       the original Biathlon policy (``policy="biathlon"``)
  approxql       approxql's controller
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from sqlglot import exp

import approxql
from approxql.engines import DuckDBEngine
from approxql.pipeline_file import read_pipeline_file
from approxql.plan import QueryKind
from approxql.profiler.peak import warm_rows
from approxql.sampling.catalog import lookup
from approxql.training import feature_matrix, fit_and_export

from .spec import BenchPipeline

SYSTEMS = ("exact", "exact_fastest", "fixed", "biathlon", "approxql")
FIXED_FRACTION = 0.01
ORACLE_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
WARM = 30
# Of this machine's memory, for DuckDB's buffers: the generated database, then its sorted copy,
# open side by side. Each defaults to 80 %: on bearing at scale 10 (22 GB a database) the two
# together swapped a 24 GB machine.
MEMORY_SHARES = (0.55, 0.25)


@dataclass
class Outcome:
    value: object
    latency_ms: float
    rounds: int
    exact: bool
    rates: dict
    stages: dict


@dataclass
class PipelineRun:
    bench: BenchPipeline
    scale: float
    task: str
    delta: float | None
    model: dict                                   # training report: metric, score, baseline
    labels: list
    matching: list[dict[str, float]]              # per request, rows matching each aggregate query
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    oracle_ms: list[float] = field(default_factory=list)   # per oracle request: latency at its smallest good fraction
    setup_s: dict = field(default_factory=dict)


def run_pipeline(bp: BenchPipeline, *, scale: float, requests: int, data_dir: Path, seed: int = 0,
                 retrain: bool = False, oracle: int = 40, progress=None) -> PipelineRun:
    took = {}
    t0 = time.perf_counter()
    con, fast = _databases(bp, data_dir, scale, seed)
    took["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = _model(bp, con, scale, seed, retrain)
    took["model"] = time.perf_counter() - t0
    delta = trained.get("delta")
    reqs = con.sql(f"SELECT * FROM {bp.name}_requests").to_arrow_table().to_pylist()
    params = [p.name for p in read_pipeline_file(bp.sql_path).params]
    warm = [{k: r[k] for k in params} for r in reqs[:bp.train][:WARM]]
    serve = reqs[bp.train:bp.train + requests]
    if not serve:
        raise SystemExit(f"{bp.name}: no requests beyond the {bp.train} training ones")
    labels = [r["label"] for r in serve]
    serve = [{k: r[k] for k in params} for r in serve]
    pipes = {s: approxql.load_pipeline(bp.sql_path, con=fast if s == "exact_fastest" else con, warm=True)
             for s in SYSTEMS}
    calls = {
        "exact": lambda p, r, i: p.predict_exact(r),
        "exact_fastest": lambda p, r, i: p.predict_exact(r),
        "fixed": lambda p, r, i: p.predict(r, seed=i, policy="fixed", initial_fraction=FIXED_FRACTION, delta=delta),
        "biathlon": lambda p, r, i: p.predict(r, seed=i, policy="biathlon", delta=delta),
        "approxql": lambda p, r, i: p.predict(r, seed=i, delta=delta),
    }
    for s in ("exact", "exact_fastest"):        # the rows these requests read, in DuckDB's buffers: all
        warm_rows(pipes[s], warm + serve)        # systems are timed warm (one pass per database)
    for s in SYSTEMS:                           # warm caches and the learned costs, untimed
        for i, r in enumerate(warm):
            calls[s](pipes[s], r, 10_000 + i)
    out = {s: [] for s in SYSTEMS}
    t0 = time.perf_counter()
    for i, r in enumerate(serve):
        for s in order_for(i):
            p = calls[s](pipes[s], r, i)
            out[s].append(Outcome(p.value, p.latency_ms, p.rounds, p.exact, dict(p.rates), dict(p.stages_ms)))
        if progress is not None:
            progress.update(1)
    took["requests"] = time.perf_counter() - t0
    run = PipelineRun(bp, scale, bp.task, delta, trained, labels, matching_rows(pipes["exact"], serve), out,
                      setup_s=took)
    t0 = time.perf_counter()
    run.oracle_ms = _oracle(pipes["fixed"], serve[:oracle], [o.value for o in out["exact"][:oracle]], bp.task, delta)
    took["oracle"] = time.perf_counter() - t0
    return run


def order_for(i: int) -> tuple[str, ...]:
    """The systems in request ``i``'s order, from a Williams design: over each run of
    ``2 * len(SYSTEMS)`` requests, every system runs in every position, and right after every
    other system, equally often. Order matters: a system run right after another that computed
    the same request reads its rows with DuckDB's and the CPU's caches warm. In a fixed order on
    trips, where approxql and exact run the same exact statement, approxql's took 0.28 ms more than
    exact's when it ran last and 0.63 ms less right after exact; a mere rotation keeps who follows
    whom (exact then always followed approxql: its statement was 0.44 ms faster on turbofan)."""
    n = len(SYSTEMS)
    first = [0]
    for k in range(1, n):   # 0, 1, n-1, 2, n-2, ...
        first.append((k + 1) // 2 if k % 2 else n - k // 2)
    row = [(x + i // 2) % n for x in first]
    return tuple(SYSTEMS[x] for x in (row if i % 2 == 0 else row[::-1]))


def _databases(bp: BenchPipeline, data_dir: Path, scale: float, seed: int):
    """The generated database (prepared), and a copy with the table sorted for the exact path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{bp.name}_s{scale:g}_seed{seed}"
    path, fast_path = data_dir / f"{tag}.duckdb", data_dir / f"{tag}_fast.duckdb"
    main_limit, fast_limit = (_memory_limit(share) for share in MEMORY_SHARES)
    con = duckdb.connect(str(path), config=main_limit)
    ready = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '__bench_done'").fetchall()[0][0]
    if not ready:
        bp.generate(con, scale, seed)
        approxql.prepare(con, bp.table, by=list(bp.by), stratify=bp.stratify)
        con.execute("CREATE TABLE __bench_done AS SELECT 1 AS done")
        con.execute("CHECKPOINT")
        fast_path.unlink(missing_ok=True)
    else:
        with con.cursor() as cur:
            prepared = lookup(cur, bp.table)
        if (prepared is None or prepared.by != bp.by   # e.g. by changed
                or prepared.stratify != bp.stratify
                or (bp.by and not prepared.slices)):   # an older approxql's one-table copy
            approxql.prepare(con, bp.table, by=list(bp.by), stratify=bp.stratify)
    if not fast_path.exists():
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name NOT LIKE "
                                            "'%__approxql_sample%' AND table_name NOT IN ('approxql_catalog', "
                                            "'__bench_done')").fetchall()]
        con.close()
        build = duckdb.connect(str(fast_path), config=fast_limit)
        build.execute("ATTACH ? AS src (READ_ONLY)", [str(path)])
        for t in tables:
            order = f" ORDER BY {', '.join(bp.order)}" if t == bp.table else ""
            build.execute(f'CREATE TABLE "{t}" AS SELECT * FROM src."{t}"{order}')
        build.execute("DETACH src")
        build.close()
    else:
        con.close()
    # served read-only, like a replica: approxql then checks its copies once, not every request
    return (duckdb.connect(str(path), read_only=True, config=main_limit),
            duckdb.connect(str(fast_path), read_only=True, config=fast_limit))


def _memory_limit(share: float) -> dict:
    """DuckDB's ``memory_limit`` at ``share`` of physical memory ({} where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return {}
    return {"memory_limit": f"{int(total * share) >> 20}MB"}


def _model(bp: BenchPipeline, con, scale: float, seed: int, retrain: bool) -> dict:
    """Train on exact features of the first ``bp.train`` requests (80 % fit, 20 % held out) unless
    a model for this scale and seed exists; delta (regression) is half the held-out MAE."""
    meta_path = bp.model_path.with_suffix(".json")
    want = {"scale": scale, "seed": seed}
    if not retrain and bp.model_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} == want:
            return meta
    spec = read_pipeline_file(bp.sql_path)
    table = con.sql(f"SELECT * FROM {bp.name}_requests LIMIT {bp.train}").to_arrow_table()
    X = feature_matrix(spec, DuckDBEngine(con), table.select([p.name for p in spec.params]))
    y = np.asarray(table.column("label").to_pylist())
    cut = int(0.8 * len(X))
    report = fit_and_export(spec, bp.make_model(), X[:cut], y[:cut], X[cut:], y[cut:])
    meta = {**want, "metric": report.metric, "score": report.model_score, "baseline": report.baseline_score,
            "n_train": report.n_train, "n_test": report.n_test,
            "delta": float(f"{report.model_score / 2:.3g}") if bp.task == "regression" else None}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def matching_rows(pipe, requests: list[dict]) -> list[dict[str, float]]:
    """Per request, COUNT(*) under each aggregate query's WHERE: the rows exact reads."""
    queries = []
    for q in pipe.spec.queries:
        if q.kind is not QueryKind.AGGREGATE:
            continue
        sel = q.select.copy()
        sel.set("expressions", [exp.alias_(exp.Count(this=exp.Star()), f"m_{q.name}")])
        sel.set("group", None)
        queries.append(replace(q, select=sel, features=(f"m_{q.name}",)))
    compiled = pipe.engine.compile_exact(queries, batch=True)
    names = [p.name for p in pipe.params]
    table = pa.Table.from_pylist([{k: r[k] for k in names} for r in requests],
                                 schema=pa.schema([(p.name, p.arrow_type) for p in pipe.params]))
    rows = pipe.engine.exact_features_many(compiled, table).to_pylist()
    return [{q.features[0][2:]: float(r[q.features[0]] or 0) for q in queries} for r in rows]


def _oracle(pipe, requests, exact_values, task: str, delta) -> list[float]:
    """Offline: per request, the latency of one sample at the smallest fraction whose prediction
    meets the bound (exact's latency when none does) — the floor any controller could reach."""
    out = []
    for i, (r, e) in enumerate(zip(requests, exact_values)):
        best = None
        for f in ORACLE_FRACTIONS:
            p = pipe.predict(r, seed=i, policy="fixed", initial_fraction=f, delta=delta)
            good = abs(p.value - e) <= delta if task == "regression" else p.value == e
            if good:
                best = p.latency_ms
                break
        out.append(best if best is not None else pipe.predict_exact(r).latency_ms)
    return out
