"""The exact path: features equal the SQL run by hand, predictions equal the model run by hand."""
from __future__ import annotations

import datetime as dt
import shutil
import threading

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

import approxql
from approxql import ModelError, NullFeatureError, QueryError, RequestError

from conftest import BODY, HEADER

REQUEST = {"store": "north", "day": "2024-01-20 12:00", "price": 19.5}

HAND_SQL = """
SELECT AVG(amount), COUNT(*) FROM sales
WHERE store = 'north' AND day >= TIMESTAMP '2024-01-13 12:00' AND day < TIMESTAMP '2024-01-20 12:00'
"""


def test_exact_prediction_equals_sql_and_model_by_hand(write_pipeline, con, linear_model):
    pipe = approxql.load_pipeline(write_pipeline(), con=con)
    pred = pipe.predict_exact(REQUEST)

    avg, n = con.execute(HAND_SQL).fetchall()[0]
    assert n > 100  # the request really matches rows
    assert pred.features == {"avg_amount": pytest.approx(avg, rel=1e-12), "n_sales": n, "price": 19.5}

    session = ort.InferenceSession(str(pipe.spec.model_path), providers=["CPUExecutionProvider"])
    x = np.array([[avg, n, 19.5]], dtype=np.float32)
    by_hand = session.run(None, {"features": x})[0].ravel()[0]
    assert pred.value == pytest.approx(float(by_hand), rel=1e-6)
    assert pred.value == pytest.approx(linear_model.predict(x.astype(np.float64))[0], rel=1e-4)

    assert pred.exact and pred.probability == 1.0 and pred.met_bound
    assert pred.rates == {"q1": 1.0} and pred.rounds == 1
    assert pred.latency_ms > 0 and pred.latency_ms >= pred.stages_ms["queries"]
    assert "exact" in pred.explain() and "avg_amount" in pred.explain()


def test_zero_matching_rows_follow_sql_and_fill(write_pipeline, con):
    request = {**REQUEST, "store": "nowhere"}
    pipe = approxql.load_pipeline(write_pipeline(), con=con)
    with pytest.raises(NullFeatureError, match=r"'avg_amount' \(query q1, line 6\) is NULL.*-- fill: avg_amount="):
        pipe.predict_exact(request)

    filled = approxql.load_pipeline(write_pipeline(header=HEADER + "-- fill: avg_amount=42\n"), con=con)
    pred = filled.predict_exact(request)
    assert pred.features["avg_amount"] == 42.0  # AVG over no rows is NULL, then filled
    assert pred.features["n_sales"] == 0        # COUNT over no rows is 0, as in SQL


def test_sql_text_in_a_parameter_stays_a_value(write_pipeline, con):
    pipe = approxql.load_pipeline(write_pipeline(header=HEADER + "-- fill: avg_amount=0\n"), con=con)
    for hostile in ["north' OR '1'='1", "'; DROP TABLE sales; --", "north\"; SELECT 1; --"]:
        pred = pipe.predict_exact({**REQUEST, "store": hostile})
        assert pred.features["n_sales"] == 0  # matched nothing: the text was compared as a value
    assert con.execute("SELECT count(*) FROM sales").fetchall()[0][0] == 20000


@pytest.mark.parametrize("request_, message", [
    ({"store": "north", "day": "2024-01-20"}, "missing 'price'"),
    ({**REQUEST, "prize": 3}, "unknown 'prize' (did you mean 'price'?)"),
    ({**REQUEST, "price": "cheap"}, "parameter 'price' expects DOUBLE, got 'cheap'"),
    ({**REQUEST, "price": float("nan")}, "not a finite number"),
    ({**REQUEST, "price": True}, "expects DOUBLE"),
    ({**REQUEST, "day": "yesterday"}, "parameter 'day' expects TIMESTAMP"),
    ({**REQUEST, "store": 7}, "parameter 'store' expects TEXT, got 7"),
    ({**REQUEST, "store": None}, "parameter 'store' is NULL"),
    (["north"], "a request must be a mapping"),
])
def test_bad_requests_raise_request_error(write_pipeline, con, request_, message):
    pipe = approxql.load_pipeline(write_pipeline(), con=con)
    with pytest.raises(RequestError) as info:
        pipe.predict_exact(request_)
    assert message in str(info.value)


def test_request_values_are_converted_to_declared_types(write_pipeline, con):
    pipe = approxql.load_pipeline(write_pipeline(), con=con)
    base = pipe.predict_exact(REQUEST).value
    for day in [dt.datetime(2024, 1, 20, 12), "2024-01-20T12:00:00", "2024-01-20T17:00:00+05:00"]:
        assert pipe.predict_exact({**REQUEST, "day": day}).value == base
    assert pipe.predict_exact({**REQUEST, "price": "19.5"}).value == base
    assert pipe.predict_exact({**REQUEST, "price": np.float32(19.5)}).value == base


def test_lookup_features(tmp_path, con):
    from sklearn.linear_model import LinearRegression
    from approxql.training import export_onnx
    X = np.random.default_rng(3).normal(size=(50, 4))
    export_onnx(LinearRegression().fit(X, X @ [1.0, 0.0, 0.0, 10.0]), 4, tmp_path / "model.onnx", "regression")
    path = tmp_path / "p.sql"
    path.write_text(HEADER.replace("price\n", "price, factor\n") + "-- fill: factor=1\n" + BODY
                    + "SELECT factor FROM prices WHERE store = $store;\n")
    pipe = approxql.load_pipeline(path, con=con)
    assert pipe.spec.queries[2].kind.value == "lookup"
    assert pipe.predict_exact(REQUEST).features["factor"] == 1.5                     # north has a row
    assert pipe.predict_exact({**REQUEST, "store": "east"}).features["factor"] == 1.0  # no row: filled
    # a model whose width does not match the inputs is refused at load
    export_onnx(LinearRegression().fit(X[:, :3], X[:, 0]), 3, tmp_path / "model.onnx", "regression")
    with pytest.raises(ModelError, match="takes 3 features in input 'features', but the pipeline lists 4"):
        approxql.load_pipeline(path, con=con)


def test_lookup_returning_many_rows_is_an_error(tmp_path, con, linear_model):
    from approxql.training import export_onnx
    export_onnx(linear_model, 3, tmp_path / "model.onnx", "regression")
    path = tmp_path / "p.sql"
    path.write_text(HEADER.replace("avg_amount, n_sales", "amount, n_sales") +
                    "SELECT amount FROM sales WHERE store = $store;\n"
                    "SELECT 1 AS n_sales, $price AS price;\n")
    pipe = approxql.load_pipeline(path, con=con)
    with pytest.raises(QueryError, match=r"lookup query q1 \(line 6\) returned \d+ rows"):
        pipe.predict_exact(REQUEST)


def test_missing_table_is_reported_at_load(write_pipeline, con):
    path = write_pipeline(body=BODY.replace("FROM sales", "FROM sale"))
    with pytest.raises(QueryError, match="reads table 'sale', which does not exist"):
        approxql.load_pipeline(path, con=con)


def test_load_pipeline_needs_a_connection(write_pipeline):
    with pytest.raises(TypeError, match="exactly one of con="):
        approxql.load_pipeline(write_pipeline())


def test_model_errors(write_pipeline, con, tmp_path):
    path = write_pipeline(model=False)
    with pytest.raises(ModelError, match="model.onnx not found"):
        approxql.load_pipeline(path, con=con)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot be loaded by ONNX Runtime") as info:
        approxql.load_pipeline(path, con=con)
    assert str(path) in str(info.value)  # names the pipeline file


def test_model_with_one_input_per_feature(write_pipeline, con, named_inputs_model_path, tmp_path):
    matrix = approxql.load_pipeline(write_pipeline(), con=con).predict_exact(REQUEST).value
    shutil.copy(named_inputs_model_path, tmp_path / "model.onnx")
    named = approxql.load_pipeline(tmp_path / "pipe.sql", con=con).predict_exact(REQUEST).value
    assert named == pytest.approx(matrix, rel=1e-6)
    # the same model with pipeline inputs it does not have is refused
    (tmp_path / "pipe.sql").write_text(HEADER.replace("inputs: avg_amount, n_sales, price",
                                                      "inputs: avg_amount, price, n_sales") + BODY)
    assert approxql.load_pipeline(tmp_path / "pipe.sql", con=con).predict_exact(REQUEST).value == named
    (tmp_path / "pipe.sql").write_text(HEADER.replace("price\n", "price, avg2\n") +
                                       BODY.replace("COUNT(*) AS n_sales", "COUNT(*) AS n_sales, 1.0 AS avg2"))
    with pytest.raises(ModelError, match="expected one 2-D float input, or one input per feature"):
        approxql.load_pipeline(tmp_path / "pipe.sql", con=con)


def test_classification_pipeline(tmp_path, con, classifier_model_path):
    shutil.copy(classifier_model_path, tmp_path / "model.onnx")
    path = tmp_path / "p.sql"
    path.write_text(HEADER.replace("regression", "classification") + BODY)
    pipe = approxql.load_pipeline(path, con=con)
    pred = pipe.predict_exact(REQUEST)
    assert pred.value in (0, 1) and isinstance(pred.value, int)
    x = np.array([[pred.features[n] for n in pipe.inputs]], dtype=np.float32)
    session = ort.InferenceSession(str(classifier_model_path), providers=["CPUExecutionProvider"])
    assert pred.value == int(session.run(None, {"features": x})[0][0])


def test_batch_features_equal_single_requests(write_pipeline, con):
    pipe = approxql.load_pipeline(write_pipeline(header=HEADER + "-- fill: avg_amount=-1\n"), con=con)
    requests = [{"store": s, "day": f"2024-02-{d:02d} 06:00", "price": 1.0 + d}
                for s in ("north", "south", "nowhere") for d in range(1, 28, 3)]
    table = pipe.exact_features_many(requests)
    assert table.num_rows == len(requests)
    for i, r in enumerate(requests):
        single = pipe.predict_exact(r).features
        assert table.column("n_sales")[i].as_py() == single["n_sales"]
        assert table.column("avg_amount")[i].as_py() == pytest.approx(single["avg_amount"], rel=1e-9)
    arrow = pipe.exact_features_many(pa.Table.from_pylist(requests))
    assert arrow.equals(table)
    with pytest.raises(RequestError, match="request 1: .*missing 'price'"):
        pipe.exact_features_many([requests[0], {"store": "north", "day": "2024-01-01"}])


def test_threads_share_one_pipeline(write_pipeline, con):
    pipe = approxql.load_pipeline(write_pipeline(header=HEADER + "-- fill: avg_amount=0\n"), con=con)
    requests = [{"store": ("north", "south", "east")[i % 3], "day": f"2024-02-{1 + i % 27:02d} 0{i % 10}:00",
                 "price": float(i)} for i in range(120)]
    expected = [pipe.predict_exact(r).value for r in requests]
    results: dict[int, float] = {}
    errors = []

    def work(offset):
        try:
            for i in range(offset, len(requests), 4):
                results[i] = pipe.predict_exact(requests[i]).value
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(len(requests))] == expected


def test_bare_parameters_are_taken_from_the_request_without_a_statement(tmp_path, con):
    """``SELECT $p AS f`` needs no round trip when the bound value is what DuckDB would return;
    a FLOAT or DECIMAL (DuckDB rounds them) or any expression still goes to DuckDB."""
    from sklearn.linear_model import LinearRegression
    from approxql.training import export_onnx
    params = "store VARCHAR, day TIMESTAMP, i BIGINT, d DOUBLE, b BOOLEAN, f FLOAT, m DECIMAL(6,2)"
    features = ["avg_amount", "i", "d", "b", "f", "m", "h"]
    X = np.random.default_rng(4).normal(size=(40, len(features)))
    export_onnx(LinearRegression().fit(X, X[:, 0]), len(features), tmp_path / "model.onnx", "regression")
    path = tmp_path / "p.sql"
    path.write_text(f"-- name: t\n-- model: model.onnx\n-- task: regression\n-- params: {params}\n"
                    f"-- inputs: {', '.join(features)}\n"
                    "SELECT AVG(amount) AS avg_amount FROM sales WHERE store = $store AND day < $day;\n"
                    "SELECT $i AS i, $d AS d, $b AS b;\n"
                    "SELECT $f AS f, $m AS m, hour($day) AS h;\n")
    pipe = approxql.load_pipeline(path, con=con)
    assert pipe._passthrough == {"i": "i", "d": "d", "b": "b"}
    assert [q.name for q in pipe._fixed_queries] == ["q3"]
    request = {"store": "north", "day": "2024-01-20 12:00", "i": 2**40 + 1, "d": 0.1, "b": True, "f": 0.1, "m": 1.005}
    bound = approxql.params.bind_request(list(pipe.params), request)
    fixed = pipe.fixed_features(bound)
    by_duckdb = pipe.exact_raw(bound)
    for name in ("i", "d", "b", "f", "m", "h"):
        assert fixed[name] == by_duckdb[name] and type(fixed[name]) is type(by_duckdb[name]), name
    assert fixed["f"] != 0.1                       # FLOAT: DuckDB's rounding, not the request's double
    assert pipe.fixed_features_many([bound, bound]) == [fixed, fixed]
    pred = pipe.predict(request, delta=1.0)
    assert (pred.features["i"], pred.features["d"], pred.features["b"]) == (2**40 + 1, 0.1, 1.0)
