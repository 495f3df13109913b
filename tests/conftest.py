"""Shared fixtures: a small synthetic DuckDB database and real ONNX models trained on it."""
from __future__ import annotations

import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LinearRegression
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from approxql.training import export_onnx

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
