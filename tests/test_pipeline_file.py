"""Pipeline files: parsing, and a clear error naming file and line for every mistake."""
from __future__ import annotations

import pytest

from approxql import PipelineError, read_pipeline_file
from approxql.pipeline_file import parse_pipeline
from approxql.plan import QueryKind

from conftest import BODY, HEADER


def test_parses_header_and_statements(tmp_path):
    text = HEADER + "-- delta: 2.5\n-- tau: 0.9\n-- fill: avg_amount=0\n" + BODY
    spec = parse_pipeline(text, tmp_path / "p.sql")
    assert spec.name == "sales" and spec.task == "regression"
    assert [p.name for p in spec.params] == ["store", "day", "price"]
    assert [p.type_sql for p in spec.params] == ["TEXT", "TIMESTAMP", "DOUBLE"]
    assert spec.inputs == ("avg_amount", "n_sales", "price")
    assert spec.delta == 2.5 and spec.tau == 0.9 and spec.fill == {"avg_amount": 0.0}
    assert spec.model_path == (tmp_path / "model.onnx").resolve()
    agg, req = spec.queries
    assert (agg.kind, agg.features, agg.params, agg.tables, agg.line) == (
        QueryKind.AGGREGATE, ("avg_amount", "n_sales"), ("store", "day"), ("sales",), 9)
    assert (req.kind, req.features, req.line) == (QueryKind.REQUEST, ("price",), 13)


def test_defaults_and_plain_comments(tmp_path):
    text = "-- Sales per store, a free comment without a key\n" + HEADER + BODY
    spec = parse_pipeline(text, tmp_path / "p.sql")
    assert spec.tau == 0.95 and spec.delta is None and spec.fill == {}


def test_parameters_are_cast_to_their_declared_type():
    spec = parse_pipeline(HEADER + BODY)
    sql = spec.queries[0].sql()
    assert "CAST($store AS TEXT)" in sql and "CAST($day AS TIMESTAMP)" in sql


def test_lookup_statement_kind():
    body = BODY + "SELECT factor AS f FROM prices WHERE store = $store;\n"
    spec = parse_pipeline(HEADER.replace("price\n", "price, f\n") + body)
    assert spec.queries[2].kind is QueryKind.LOOKUP


def test_file_errors(tmp_path):
    with pytest.raises(PipelineError, match="pipeline file not found"):
        read_pipeline_file(tmp_path / "nope.sql")
    bad = tmp_path / "bad.sql"
    bad.write_bytes(b"\xff\xfe-- name: x")
    with pytest.raises(PipelineError, match="cannot read"):
        read_pipeline_file(bad)


def _drop(line_start: str) -> str:
    return "".join(l for l in HEADER.splitlines(keepends=True) if not l.startswith(line_start))


# (pipeline text, a fragment of the message, the line the error must name)
CASES = {
    "missing key": (_drop("-- task") + BODY, "missing header key(s) task", None),
    "unknown key": (HEADER + "-- delat: 3\n" + BODY, "unknown header key 'delat' (did you mean 'delta'?)", 6),
    "duplicate key": (HEADER + "-- name: again\n" + BODY, "header key 'name' given twice", 6),
    "empty value": (HEADER + "-- delta:\n" + BODY, "header key 'delta' has no value", 6),
    "bad name": (HEADER.replace("name: sales", "name: my-sales") + BODY, "must be an identifier", 1),
    "bad task": (HEADER.replace("regression", "ranking") + BODY, "task must be one of regression, classification", 3),
    "bad param type": (HEADER.replace("price DOUBLE", "price MONEYZ") + BODY, "unknown type 'MONEYZ'", 4),
    "param without type": (HEADER.replace("price DOUBLE", "price") + BODY, "expected 'name TYPE'", 4),
    "duplicate param": (HEADER.replace("price DOUBLE", "store DOUBLE") + BODY, "'store' is declared twice", 4),
    "duplicate input": (HEADER.replace("inputs: avg_amount,", "inputs: price, avg_amount,") + BODY,
                        "price listed more than once", 5),
    "input not produced": (HEADER.replace("n_sales", "n_sale") + BODY,
                           "input 'n_sale' is not produced by any statement (did you mean 'n_sales'?)", 5),
    "bad delta": (HEADER + "-- delta: -1\n" + BODY, "delta must be a number >= 0", 6),
    "bad tau": (HEADER + "-- tau: 1.5\n" + BODY, "tau must be a number in (0, 1)", 6),
    "tau not a number": (HEADER + "-- tau: high\n" + BODY, "tau must be a number in (0, 1), got 'high'", 6),
    "fill unknown feature": (HEADER + "-- fill: avg_amout=0\n" + BODY, "'avg_amout' is not a feature (did you mean 'avg_amount'?)", 6),
    "fill not a number": (HEADER + "-- fill: avg_amount=zero\n" + BODY, "must be a finite number, got 'zero'", 6),
    "fill not finite": (HEADER + "-- fill: avg_amount=inf\n" + BODY, "must be a finite number, got 'inf'", 6),
    "fill without =": (HEADER + "-- fill: avg_amount\n" + BODY, "expected name=value", 6),
    "sequence": (HEADER + BODY.replace("SELECT $price AS price", "SELECT $price + nextval('s') AS price"), "NEXTVAL() (it changes a sequence)", 10),
    "no statements": (HEADER, "no SQL statements after the header", 6),
    "parse error": (HEADER + "SELECT AVG(amount) AS a\nFROM sales WHERE (store = ;\n", "SQL parse error", 7),
    "DDL refused": (HEADER + "DROP TABLE sales;\n" + BODY, "only SELECT statements are allowed", 6),
    "DML refused": (HEADER + BODY + "DELETE FROM sales;\n", "found DELETE", 11),
    "insert refused": (HEADER + "INSERT INTO sales VALUES ('x', now(), 1);\n" + BODY, "found INSERT", 6),
    "group by": (HEADER + "SELECT AVG(amount) AS avg_amount, COUNT(*) AS n_sales FROM sales GROUP BY store;\n"
                 "SELECT $price AS price;\n", "GROUP BY is not allowed", 6),
    "missing alias": (HEADER + "SELECT AVG(amount), COUNT(*) AS n_sales FROM sales;\nSELECT $price AS price;\n",
                      "select item 1 (AVG(amount)) needs a feature name", 6),
    "star": (HEADER + "SELECT * FROM sales;\n" + BODY, "SELECT * is not allowed", 6),
    "duplicate alias": (HEADER + "SELECT AVG(amount) AS a, SUM(amount) AS a FROM sales;\n" + BODY,
                        "feature 'a' is produced twice", 6),
    "feature in two statements": (HEADER + BODY + "SELECT 1.0 AS price;\n", "'price' is produced by two statements", 11),
    "unknown param": (HEADER + BODY.replace("$store", "$stor"), "unknown parameter $stor (did you mean $store?)", 6),
    "positional param": (HEADER + BODY.replace("$store", "?"), "positional parameter", 6),
    "numbered param": (HEADER + BODY.replace("$store", "$1"), "positional parameter", 6),
    "aggregate without FROM": (HEADER + "SELECT AVG($price) AS price;\n"
                               "SELECT 1 AS avg_amount, 2 AS n_sales;\n", "an aggregate needs a FROM clause", 6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validation_errors_name_file_and_line(case, tmp_path):
    text, fragment, line = CASES[case]
    path = tmp_path / "p.sql"
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, path)
    err = info.value
    assert fragment in str(err)
    assert str(err).startswith(str(path))
    assert err.line == line
    assert isinstance(err, ValueError)  # catchable generically
