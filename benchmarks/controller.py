"""approxql's controller against the Biathlon policy and exact, on the same requests.

    python benchmarks/controller.py [--rows N] [--requests R] [--db PATH] [--model gbdt|linear|mlp] [--out DIR]

Generates ``events`` (entity, ts, a, b, c, d) deterministically in DuckDB: 16 entities of different
sizes and levels over 180 days, in arrival order, prepared by entity. Writes a pipeline of three
aggregate queries (a 30-day window per entity, two over the whole entity; the model ignores the
last) plus a request-only feature, trains a model on exact features of 2,000 requests, sets delta
to half its held-out MAE, then runs exact, approxql and biathlon on the same R requests,
interleaved and warm, each policy on its own pipeline object.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb
import matplotlib
import numpy as np
import pyarrow as pa
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import approxql
from approxql.engines import DuckDBEngine
from approxql.pipeline import exact_feature_table
from approxql.pipeline_file import parse_pipeline
from approxql.sampling.catalog import lookup
from approxql.training import export_onnx, feature_matrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ENTITIES, DAYS, WINDOW, TRAIN = 16, 180, 30, 2000
# hash(i * 8 + k), not hash(i, k): DuckDB's two-argument hash is correlated across its second argument
U = "((hash(i * 8 + {k}) >> 11) * (1.0 / 9007199254740992))"
WHERES = [f"entity = $entity AND ts >= $ts - INTERVAL {WINDOW} DAY AND ts < $ts", "entity = $entity", "entity = $entity"]
SELECTS = ["AVG(a) AS avg_a, STDDEV(b) AS sd_b, COUNT(*) AS n_30d", "AVG(c) AS avg_c", "AVG(d) AS avg_d"]
INPUTS = ["avg_a", "sd_b", "n_30d", "avg_c", "avg_d", "x"]
IGNORED = INPUTS.index("avg_d")
HEADER = ("-- name: controller_bench\n-- model: {model}\n-- task: regression\n"
          "-- params: entity INTEGER, ts TIMESTAMP, x DOUBLE\n-- inputs: {inputs}\n")
SYSTEMS = ("exact", "approxql", "biathlon")
MODELS = {
    "gbdt": lambda: GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, random_state=0),
    "linear": lambda: LinearRegression(),
    "mlp": lambda: make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=1000, random_state=0)),
}


def generate(con, rows: int) -> None:
    """``events``: entity sizes skewed (u^1.5), levels and seasonality per entity, ts in row order."""
    u = [U.format(k=k) for k in range(5)]
    con.execute(f"""CREATE OR REPLACE TABLE events AS
        WITH s AS (SELECT i, floor({ENTITIES} * pow({u[0]}, 1.5))::INTEGER AS e, {DAYS} * pow(i / {rows}.0, 0.8) AS t,
                          {u[1]} AS u1, {u[2]} AS u2, {u[3]} AS u3, {u[4]} AS u4 FROM range({rows}) r(i))
        SELECT e AS entity, TIMESTAMP '2024-01-01' + to_microseconds((t * 86400e6)::BIGINT) AS ts,
               0.5 * e + (1 + (e % 4) * 0.5) * sin(2 * pi() * t / (40 + 5 * e)) + 3 * (u1 - 0.5) AS a,
               (1 + e % 5) * (1 + 0.5 * sin(t / 15 + e)) * u2 AS b, (e % 5) + 2 * u3 AS c, 10 * u4 AS d
        FROM s ORDER BY i""")


def setup(con, rows: int) -> dict[str, float]:
    """Generate and prepare unless the database already holds them at this size; seconds per step."""
    took = {}
    have = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'events'").fetchall()[0][0]
    ready = have and con.execute("SELECT count(*) FROM events").fetchall()[0][0] == rows
    for step, run in (("generate", lambda: generate(con, rows)),
                      ("prepare", lambda: approxql.prepare(con, "events", by=["entity"]))):
        p = lookup(con.cursor(), "events")
        done = ready if step == "generate" else (p is not None and p.source_rows == rows and p.by == ("entity",))
        t0 = time.perf_counter()
        if not done:
            run()
            con.execute("CHECKPOINT")
            ready = True
        took[step] = time.perf_counter() - t0 if not done else 0.0
    return took


def make_requests(n: int, seed: int) -> list[dict]:
    """Uniform entity, ts with a full 30-day window behind it, x ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2024, 1, 1)
    mins = rng.integers((WINDOW + 5) * 1440, DAYS * 1440, n)
    return [{"entity": int(e), "ts": start + dt.timedelta(minutes=int(m)), "x": float(x)}
            for e, m, x in zip(rng.integers(0, ENTITIES, n), mins, rng.normal(0, 1, n))]


def pipeline_text(model: str, delta: float) -> str:
    body = "".join(f"SELECT {s}\nFROM events WHERE {w};\n" for s, w in zip(SELECTS, WHERES))
    return HEADER.format(model=model, inputs=", ".join(INPUTS)) + f"-- delta: {delta:.4g}\n" + body + "SELECT $x AS x;\n"


def target(X: np.ndarray, rng) -> np.ndarray:
    """The label: a nonlinear function of the features the model uses, plus noise (avg_d plays no part)."""
    a, sd, n, c, _, x = X.T
    return 2 * a + 1.5 * sd + n / 20_000 + 3 * c + 2 * x + 1.5 * np.tanh(a - 4) + rng.normal(0, 1.0, len(X))


def train(con, folder: Path, kind: str) -> tuple[Path, dict]:
    """Train on exact features from the pipeline itself; write the pipeline with delta = MAE / 2."""
    spec = parse_pipeline(pipeline_text("model.onnx", 1.0), folder / "train.sql")
    reqs = make_requests(TRAIN, seed=1)
    with tqdm(total=TRAIN, desc="training features", unit="req") as bar:
        X = feature_matrix(spec, DuckDBEngine(con), pa.Table.from_pylist(reqs), chunk=500, progress=bar)
    y = target(X, np.random.default_rng(2))
    Xs = X.copy()
    Xs[:, IGNORED] = 0.0                        # the model never sees avg_d vary ...
    cut = int(0.75 * TRAIN)
    model = MODELS[kind]().fit(Xs[:cut], y[:cut])
    last = model[-1] if hasattr(model, "steps") else model
    if hasattr(last, "coef_"):
        last.coef_[IGNORED] = 0.0               # ... and ignores it whatever its value
    if hasattr(last, "coefs_"):
        last.coefs_[0][IGNORED, :] = 0.0
    mae = float(np.mean(np.abs(model.predict(X[cut:]) - y[cut:])))
    base = float(np.mean(np.abs(np.mean(y[:cut]) - y[cut:])))
    delta = float(f"{mae / 2:.3g}")
    export_onnx(model, len(INPUTS), folder / "model.onnx", "regression")
    path = folder / "controller_bench.sql"
    path.write_text(pipeline_text("model.onnx", delta))
    return path, {"mae": mae, "baseline_mae": base, "delta": delta, "n_train": cut, "n_test": TRAIN - cut}


def matching_rows(con, reqs: list[dict], spec) -> list[dict[str, float]]:
    """Per request, each aggregate query's matching rows: COUNT(*) under the same WHERE."""
    text = HEADER.format(model="none.onnx", inputs=", ".join(f"m{i}" for i in range(len(WHERES))))
    text += "".join(f"SELECT COUNT(*) AS m{i} FROM events WHERE {w};\n" for i, w in enumerate(WHERES))
    counts = exact_feature_table(parse_pipeline(text), DuckDBEngine(con), reqs).to_pylist()
    names = [q.name for q in spec.aggregate_queries]
    return [{q: float(c[f"m{i}"]) for i, q in enumerate(names)} for c in counts]


def stop_kind(reason: str) -> str:
    """A stop reason without its numbers (each request's own latencies and probabilities), so
    that reasons of one kind count together."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


def summarize(preds, exact, delta: float, matching) -> dict:
    lat = np.array([p.latency_ms for p in preds])
    queries = list(matching[0])
    return {
        "held": np.mean([abs(p.value - e) <= delta for p, e in zip(preds, exact)]),
        "met": np.mean([p.met_bound for p in preds]),
        "median": np.median(lat), "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99), "lat": lat,
        "rounds": np.mean([p.rounds for p in preds]), "max_rounds": max(p.rounds for p in preds),
        "rows": np.mean([sum(p.rates[q] * m[q] for q in queries) for p, m in zip(preds, matching)]),
        "fractions": {q: np.mean([p.rates[q] for p in preds]) for q in queries},
        "approximate": np.mean([not p.exact for p in preds]),
        "stop": Counter(stop_kind(p.stop_reason) for p in preds),
        "round_hist": Counter(p.rounds for p in preds),
    }


def report_lines(stats: dict, exact_median: float) -> list[str]:
    queries = list(stats["exact"]["fractions"])
    head = ["system", "guarantee held", "met bound", "median ms", "p95 ms", "p99 ms", "median speedup vs exact",
            "mean rounds", "max rounds", "mean rows read (est.)", *[f"mean fraction {q}" for q in queries],
            "approximate share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, st in stats.items():
        cells = [s, f"{st['held']:.3f}", f"{st['met']:.3f}", f"{st['median']:.2f}", f"{st['p95']:.2f}", f"{st['p99']:.2f}",
                 f"{exact_median / st['median']:.2f}x", f"{st['rounds']:.2f}", str(st["max_rounds"]), f"{st['rows']:,.0f}",
                 *[f"{100 * st['fractions'][q]:.2f} %" for q in queries], f"{st['approximate']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stage_lines(preds_by: dict) -> list[str]:
    stages = sorted({k for preds in preds_by.values() for p in preds for k in p.stages_ms})
    lines = ["| system | " + " | ".join(f"{k} ms" for k in stages) + " | total ms |", "|" + "---|" * (len(stages) + 2)]
    for s, preds in preds_by.items():
        means = [np.mean([p.stages_ms.get(k, 0.0) for p in preds]) for k in stages]
        lines.append(f"| {s} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {sum(means):.3f} |")
    return lines


def plot(stats: dict, path: Path, title: str) -> None:
    """ECDF of latency per system, log x axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for s, st in stats.items():
        lat = np.sort(st["lat"])
        ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label=f"{s} (median {st['median']:.1f} ms)")
    ax.set(xscale="log", xlabel="latency per request (ms, log scale)", ylabel="share of requests", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def data_arguments(*, requests: int) -> argparse.ArgumentParser:
    """The options of scripts on this data: size, requests, database file, model."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8_000_000, help=f"rows in events ({ENTITIES} entities)")
    ap.add_argument("--requests", type=int, default=requests, help="requests run by every system")
    ap.add_argument("--db", default=None, help="DuckDB file (default /tmp/approxql_controller_<rows>.duckdb)")
    ap.add_argument("--model", choices=list(MODELS), default="gbdt")
    return ap


def main() -> None:
    ap = data_arguments(requests=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of the report and plot")
    args = ap.parse_args()
    t_start = time.perf_counter()
    db = args.db or f"/tmp/approxql_controller_{args.rows}.duckdb"
    con = duckdb.connect(db)
    took = setup(con, args.rows)
    with tempfile.TemporaryDirectory(prefix="approxql_controller_") as tmp:  # pipeline file and model
        t0 = time.perf_counter()
        path, fit = train(con, Path(tmp), args.model)
        took["train"] = time.perf_counter() - t0
        pipes = {s: approxql.load_pipeline(path, con=con, warm=True) for s in SYSTEMS}
        pipeline = path.read_text().rstrip()
    calls = {"exact": lambda p, r, i: p.predict_exact(r), "approxql": lambda p, r, i: p.predict(r, seed=i),
             "biathlon": lambda p, r, i: p.predict(r, seed=i, policy="biathlon")}
    reqs = make_requests(args.requests + 1, seed=3)
    warm, reqs = reqs[0], reqs[1:]
    matching = matching_rows(con, reqs, pipes["exact"].spec)
    for s in SYSTEMS:                                  # one untimed warm-up call each
        calls[s](pipes[s], warm, args.requests)
    preds = {s: [] for s in SYSTEMS}
    t0 = time.perf_counter()
    for i, r in enumerate(tqdm(reqs, desc="requests", unit="req")):
        for s in SYSTEMS:                              # interleaved: drift hits every system alike
            preds[s].append(calls[s](pipes[s], r, i))
    took["requests"] = time.perf_counter() - t0
    exact = [p.value for p in preds["exact"]]
    delta, tau = fit["delta"], pipes["approxql"].spec.tau
    stats = {s: summarize(preds[s], exact, delta, matching) for s in SYSTEMS}
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    mean_match = {q: np.mean([m[q] for m in matching]) for q in matching[0]}
    a, b = stats["approxql"], stats["biathlon"]
    verdicts = [f"{'PASS' if a['held'] >= tau else 'FAIL'}: approxql guarantee held {a['held']:.3f} >= tau {tau}",
                f"{'PASS' if a['rounds'] < b['rounds'] else 'FAIL'}: approxql mean rounds {a['rounds']:.2f} "
                f"< biathlon {b['rounds']:.2f}",
                f"{'PASS' if a['median'] < b['median'] else 'FAIL'}: approxql median latency {a['median']:.2f} ms "
                f"< biathlon {b['median']:.2f} ms"]
    took["total"] = time.perf_counter() - t_start
    report = [
        "# Controller: approxql vs Biathlon vs exact", "",
        f"nproc {os.cpu_count()}, DuckDB {duckdb.__version__} (threads {threads}); {args.rows:,} rows in {ENTITIES} "
        f"entities over {DAYS} days, db {db}; {args.requests} requests (seeds 0..{args.requests - 1}), warm.",
        f"Model {args.model}: trained on exact features of {fit['n_train']} requests, held-out MAE {fit['mae']:.3f} "
        f"(constant baseline {fit['baseline_mae']:.3f}) on {fit['n_test']}; **delta = {delta}** (MAE / 2), tau = {tau}.",
        "Mean matching rows per request: " + ", ".join(f"{q} {v:,.0f}" for q, v in mean_match.items()) + ".", "",
        *report_lines(stats, stats["exact"]["median"]), "",
        "`guarantee held`: share with |y - y_exact| <= delta. `mean rows read (est.)`: sum over aggregate queries "
        "of fraction used x that query's matching rows (COUNT(*) under its WHERE); exact counts every matching row. "
        "`approximate share`: requests answered without computing every feature exactly.", "",
        "Mean time per stage (ms):", "", *stage_lines({s: preds[s] for s in ("approxql", "biathlon")}), "",
        *[f"{s} stop reasons: " + "; ".join(f"{k} ({v})" for k, v in stats[s]["stop"].most_common()) +
          "; rounds histogram: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats[s]["round_hist"].items()))
          for s in ("approxql", "biathlon")], "",
        *[f"**{v}**" for v in verdicts], "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" + (" (reused)" if v == 0 else "") for k, v in took.items()), "",
        "Pipeline:", "", "```sql", pipeline, "```",
    ]
    print("\n".join(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "controller.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    plot(stats, out / "controller_latency.png",
         f"{args.requests} requests, {args.rows:,} rows, {args.model}, delta {delta}, tau {tau}")
    print(f"\nwritten to {out / 'controller.md'} and {out / 'controller_latency.png'}")


if __name__ == "__main__":
    main()
