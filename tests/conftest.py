"""Shared fixtures: a small synthetic DuckDB database and real ONNX models trained on it."""
from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

import approxql
from approxql.training import export_onnx, feature_matrix

HEADER = """\
-- name: sales
-- model: model.onnx
-- task: regression
-- params: store VARCHAR, day TIMESTAMP, price DOUBLE
-- inputs: avg_amount, n_sales, price
"""
BODY = """\
SELECT AVG(amount) AS avg_amount, COUNT(*) AS n_sales
FROM sales
WHERE store = $store AND day >= $day - INTERVAL 7 DAY AND day < $day;

SELECT $price AS price;
"""


@pytest.fixture(autouse=True)
def _no_timing_choices(request, monkeypatch):
    """Whether a request is served exactly at once follows whole-request latencies measured on this
    machine, so a test of the sampling path would pass or fail with the machine's speed. Tests keep
    that choice off unless marked ``timing_choices``; tests/test_costs.py checks it on constructed
    latencies."""
    if request.node.get_closest_marker("timing_choices") is None:
        monkeypatch.setattr("approxql.controller.costs.Arms.exact_pays", lambda self: (False, ""))


@pytest.fixture(scope="session")
def db_path(tmp_path_factory) -> Path:
    """sales(store, day, amount): 3 stores x 60 days, deterministic."""
    path = tmp_path_factory.mktemp("db") / "sales.duckdb"
    con = duckdb.connect(str(path))
    con.execute("""
        CREATE TABLE sales AS
        SELECT ['north', 'south', 'east'][1 + (i % 3)] AS store,
               TIMESTAMP '2024-01-01' + to_hours((i * 7) % (60 * 24)) AS day,
               ((i * 7919) % 1000) / 10.0 AS amount
        FROM range(20000) t(i)""")
    con.execute("CREATE TABLE prices AS SELECT 'north' AS store, 1.5 AS factor UNION ALL SELECT 'south', 2.0")
    con.close()
    return path


@pytest.fixture()
def con(db_path):
    c = duckdb.connect(str(db_path), read_only=True)
    yield c
    c.close()


@pytest.fixture(scope="session")
def linear_model() -> LinearRegression:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * [20, 300, 10] + [50, 500, 20]
    y = X @ [0.5, 0.01, -2.0] + 3.0
    return LinearRegression().fit(X, y)


@pytest.fixture()
def write_pipeline(tmp_path, linear_model):
    """Write a pipeline file (and its model) into a fresh folder; returns the .sql path."""

    def write(text: str | None = None, *, header: str = HEADER, body: str = BODY, model: bool = True) -> Path:
        path = tmp_path / "pipe.sql"
        path.write_text(textwrap.dedent(text) if text is not None else header + body)
        if model:
            export_onnx(linear_model, 3, tmp_path / "model.onnx", "regression")
        return path

    return write


@pytest.fixture(scope="session")
def classifier_model_path(tmp_path_factory) -> Path:
    """A gradient-boosted classifier on (avg_amount, n_sales, price) exported with probabilities."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)) * [20, 300, 10] + [50, 500, 20]
    y = (X[:, 0] + 0.05 * X[:, 1] > 75).astype(np.int64)
    clf = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(X, y)
    path = tmp_path_factory.mktemp("clf") / "clf.onnx"
    export_onnx(clf, 3, path, "classification")
    return path


@pytest.fixture(scope="session")
def named_inputs_model_path(tmp_path_factory, linear_model) -> Path:
    """The linear model wrapped so that it takes one [N, 1] input per feature, by name."""
    import onnx
    from onnx import helper, TensorProto

    base = to_onnx(linear_model, initial_types=[("features", FloatTensorType([None, 3]))], target_opset=17)
    graph = base.graph
    names = ["avg_amount", "n_sales", "price"]
    concat = helper.make_node("Concat", names, ["features"], axis=1)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in names]
    new_graph = helper.make_graph([concat, *graph.node], "named", inputs, list(graph.output), list(graph.initializer))
    model = helper.make_model(new_graph, opset_imports=base.opset_import)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("named") / "named.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def pytest_terminal_summary(terminalreporter, config):
    """Print the coverage table of tests/test_coverage.py when it ran."""
    stats = getattr(config, "_approxql_coverage", None)
    if not stats:
        return
    from test_coverage import AGGREGATES, FRACTIONS, SHAPES, STRATEGIES
    tr = terminalreporter
    tr.section("approxql interval coverage (nominal 95 %, 400 samples per cell)")
    tr.write_line("coverage among samples that stayed approximate [median fraction used]; "
                  "'exact' = minimum support needs half the table or more, so computed exactly")
    for strategy in STRATEGIES:
        tr.write_line(f"\n{strategy}: {'aggregate':<20}{'shape':<11}" + "".join(f"{f'asked {100 * p:g} %':>20}" for p in FRACTIONS))
        for shape in SHAPES:
            for agg in AGGREGATES:
                row = " " * (len(strategy) + 2) + f"{agg:<20}{shape:<11}"
                for p in FRACTIONS:
                    s = stats[(strategy, p, shape, agg)]
                    med = float(np.median(s["fractions"])) if s["fractions"] else float("nan")
                    text = "exact" if s["approx"] < len(s["fractions"]) // 2 else f"{s['hits'] / s['approx']:.3f} [{100 * med:.3g}%]"
                    row += f"{text:>20}"
                tr.write_line(row)


# -- the controller's synthetic world (shared by the controller and batch tests) ----------------
ENTITIES = 60
ROWS_PER_ENTITY = 20_000
INPUTS = ["avg_a", "sd_b", "n_recent", "avg_c", "avg_d", "x"]
PIPELINE = """-- name: synth
-- model: {model}
-- task: {task}
-- params: entity INTEGER, ts TIMESTAMP, x DOUBLE
-- inputs: avg_a, sd_b, n_recent, avg_c, avg_d, x
-- delta: {delta}
SELECT AVG(a) AS avg_a, STDDEV(b) AS sd_b, COUNT(*) AS n_recent
FROM events WHERE entity = $entity AND ts >= $ts - INTERVAL 20 DAY AND ts < $ts;
SELECT AVG(c) AS avg_c FROM events WHERE entity = $entity;
SELECT AVG(d) AS avg_d FROM events WHERE entity = $entity;
SELECT $x AS x;
"""


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """events: 60 entities x 20,000 rows over 60 days, each entity with its own levels; prepared."""
    root = tmp_path_factory.mktemp("controller")
    con = duckdb.connect(str(root / "events.duckdb"))
    con.execute(f"""
        CREATE TABLE events AS
        SELECT i % {ENTITIES} AS entity,
               TIMESTAMP '2024-01-01' + to_seconds(((hash(i * 8 + 1) % 5184000))::BIGINT) AS ts,
               (i % {ENTITIES}) * 0.5 + 3 * ((hash(i * 8 + 2) % 10000) / 10000.0 - 0.5) AS a,
               1 + (i % 7) + 4 * ((hash(i * 8 + 3) % 10000) / 10000.0) AS b,
               ((i % {ENTITIES}) % 5) + 2 * ((hash(i * 8 + 4) % 10000) / 10000.0) AS c,
               10 * ((hash(i * 8 + 5) % 10000) / 10000.0) AS d
        FROM range({ENTITIES * ROWS_PER_ENTITY}) t(i)""")
    approxql.prepare(con, "events", by=["entity"])
    rng = np.random.default_rng(7)
    n = 600
    requests = pa.table({
        "entity": rng.integers(0, ENTITIES, n).astype(np.int64),
        "ts": [dt.datetime(2024, 1, 25) + dt.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 30, n)],
        "x": rng.normal(0, 1, n),
    })
    spec = approxql.read_pipeline_file(_write(root, "train", "regression", 1.0))
    X = feature_matrix(spec, approxql.engines.DuckDBEngine(con), requests)
    return {"root": root, "con": con, "requests": requests, "X": X}


def _write(root, model_name, task, delta) -> str:
    path = root / f"{model_name}.sql"
    path.write_text(PIPELINE.format(model=f"{model_name}.onnx", task=task, delta=delta))
    return str(path)


def _target(X, task):
    score = 2.0 * X[:, 0] + 1.5 * X[:, 1] + 0.002 * X[:, 2] + 3.0 * X[:, 3] + 2.0 * X[:, 5]  # avg_d unused
    if task == "regression":
        return score
    return (score > np.median(score)).astype(np.int64)


MODELS = {
    "linear": ("regression", lambda: LinearRegression(), 1.0),
    "gbdt": ("regression", lambda: GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0), 1.5),
    "mlp": ("regression", lambda: MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=800, random_state=0), 1.5),
    "logistic": ("classification", lambda: LogisticRegression(max_iter=1000), None),
    "gbdt_clf": ("classification", lambda: GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0), None),
    "mlp_clf": ("classification", lambda: MLPClassifier(hidden_layer_sizes=(32, 32), max_iter=800, random_state=0), None),
}


def make_pipeline(world, name):
    task, factory, delta = MODELS[name]
    X = world["X"]
    model = factory()
    Xs = X.copy()
    Xs[:, 4] = 0.0                                    # the model never sees avg_d vary: it ignores it
    model.fit(Xs, _target(X, task))
    if hasattr(model, "coef_") and task == "regression":
        model.coef_[4] = 0.0
    export_onnx(model, X.shape[1], world["root"] / f"{name}.onnx", task)
    path = _write(world["root"], name, task, delta if delta is not None else 0)
    return approxql.load_pipeline(path, con=world["con"], warm=True)
