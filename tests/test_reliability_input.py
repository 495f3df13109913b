"""Reliability of inputs: hostile values and names stay data; bad files, requests and options are
refused with one approxql error that names the file, the parameter or the option.

Injection tests run on a writable copy of a database, so a value that reached the SQL text could
really drop or change a table: each one checks every table and its row count afterwards.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import textwrap

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import approxql
from approxql import ModelError, NullFeatureError, OptionError, PipelineError, RequestError
from approxql.cli import main
from approxql.engines.duckdb import quote
from approxql.sampling.batch import BATCH_MIN
from approxql.training import export_onnx

from conftest import BODY, HEADER

DAY = "2024-01-20 12:00"
REQUEST = {"store": "north", "day": DAY, "price": 19.5}

# NUL-free values that would change a query if they were pasted into its SQL text
HOSTILE = [
    "'; DROP TABLE sales; --",
    "x' OR '1'='1",
    "north' --",
    '"; DROP TABLE prices; --',
    "$store",
    "$1 ? :x",
    "\\'; SELECT 1; --",
    "%_%",
    "' UNION SELECT amount FROM sales --",
    "north'\nDROP TABLE sales;\n--",
    "Ωmega — 東京 🚀 \u202e",
    "",
]
STORES = ["north", "south", *HOSTILE]
ROWS_PER_STORE = 6000
HOSTILE_NAMES = ["sales; DROP TABLE sales", '"sales"', "sales' OR '1'='1", 'sa"les', "sales --", "main.sales; --"]


# -- databases ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_template(tmp_path_factory):
    """sales(store, day, amount) whose stores are the hostile values themselves (each with its own
    level of amount), a 'solo' store with 2 rows, prices; sales prepared by store."""
    path = tmp_path_factory.mktemp("hostile") / "template.duckdb"
    with duckdb.connect(str(path)) as con:
        con.register("store_list", pa.table({"j": list(range(len(STORES))), "store": STORES}))
        con.execute(f"""
            CREATE TABLE sales AS
            SELECT s.store, TIMESTAMP '2024-01-01' + to_hours((i * 7) % (60 * 24)) AS day,
                   s.j * 10 + ((i * 7919) % 1000) / 100.0 AS amount
            FROM store_list s, range({ROWS_PER_STORE}) t(i)""")
        con.execute("INSERT INTO sales VALUES ('solo', TIMESTAMP '2024-01-18', 1.0), ('solo', TIMESTAMP '2024-01-19', 3.0)")
        con.execute("CREATE TABLE prices AS SELECT 'north' AS store, 1.5 AS factor UNION ALL SELECT 'south', 2.0")
        approxql.prepare(con, "sales", by=["store"])
    return path


@pytest.fixture()
def rw_db(tmp_path, hostile_template):
    """A writable copy of the template for one test."""
    path = tmp_path / "rw.duckdb"
    shutil.copy(hostile_template, path)
    return path


@pytest.fixture()
def rw_con(rw_db):
    """A writable connection to that copy, closed after the test."""
    con = duckdb.connect(str(rw_db))
    yield con
    con.close()


@pytest.fixture()
def fresh_con(tmp_path):
    """An empty writable database file for one test."""
    con = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    yield con
    con.close()


def _state(con) -> dict:
    """Every table of the database with its columns and row count (what an injection would change)."""
    tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1").fetchall()
    out = {}
    for (t,) in tables:
        cols = tuple(r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [t]).fetchall())
        out[t] = (cols, con.execute(f"SELECT count(*) FROM {quote(t)}").fetchall()[0][0])
    return out


def _state_of(path) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        return _state(con)


def _truth(con, store: str, day: str = DAY) -> tuple[int, float | None]:
    """The request's matching rows counted by a bound-parameter query written by hand."""
    return tuple(con.execute(
        "SELECT count(*), avg(amount) FROM sales WHERE store = ? AND day >= CAST(? AS TIMESTAMP) - INTERVAL 7 DAY "
        "AND day < CAST(? AS TIMESTAMP)", [store, day, day]).fetchall()[0])


def _hostile_pipeline(write_pipeline):
    return write_pipeline(header=HEADER + "-- delta: 5\n-- fill: avg_amount=0\n")


# -- 1. hostile values are data in every entry point ----------------------------------------------
def test_hostile_values_are_data_in_predict_exact_and_predict(write_pipeline, rw_con):
    """Each hostile store value matches exactly its own rows, in the exact statement and in the
    sampled one (the first round is forced to sample 5 %, so the sampling SQL binds the value)."""
    con = rw_con
    before = _state(con)
    pipe = approxql.load_pipeline(_hostile_pipeline(write_pipeline), con=con)
    for value in HOSTILE:
        n, avg = _truth(con, value)
        assert n > 500, value
        exact = pipe.predict_exact({**REQUEST, "store": value})
        assert exact.features["n_sales"] == n and exact.features["avg_amount"] == pytest.approx(avg, rel=1e-9), value
        approx = pipe.predict({**REQUEST, "store": value}, seed=1, initial_fraction=0.05, learn=False)
        assert approx.history[0]["fractions"] == {"q1": 0.05}, value       # it really sampled
        assert abs(approx.features["n_sales"] - n) < 0.5 * n, value        # its own rows, not all rows
        assert abs(approx.value - exact.value) < 20, value                 # injection would move it by ~hundreds
    assert _state(con) == before


def test_hostile_values_are_data_in_batches(write_pipeline, rw_con):
    """predict_many and predict_exact_many, on lists and Arrow, above BATCH_MIN so the requests are
    joined to the prepared copy as a relation."""
    con = rw_con
    before = _state(con)
    pipe = approxql.load_pipeline(_hostile_pipeline(write_pipeline), con=con)
    days = ["2024-01-20 12:00", "2024-02-10 00:00", "2024-02-25 06:00"]
    requests = [{"store": v, "day": d, "price": 1.0 + i} for i, d in enumerate(days) for v in HOSTILE]
    assert len(requests) >= BATCH_MIN
    truths = [_truth(con, r["store"], r["day"]) for r in requests]
    exact = pipe.predict_exact_many(requests)
    assert [p.features["n_sales"] for p in exact] == [n for n, _ in truths]
    approx = pipe.predict_many(requests, seed=2, initial_fraction=0.05, learn=False)
    for r, a, e, (n, _) in zip(requests, approx, exact, truths):
        assert a.history[0]["fractions"] == {"q1": 0.05}, r
        assert abs(a.features["n_sales"] - n) < 0.5 * n and abs(a.value - e.value) < 20, r
    table = pa.Table.from_pylist(requests)
    arrow_exact = pipe.predict_exact_many(table)
    assert arrow_exact.column("value").to_pylist() == pytest.approx([p.value for p in exact], rel=1e-9)
    arrow = pipe.predict_many(table, seed=2, initial_fraction=0.05, learn=False)
    assert arrow.column("error").null_count == len(requests)
    assert np.all(np.abs(np.array(arrow.column("value").to_pylist()) - [p.value for p in exact]) < 20)
    assert _state(con) == before


def test_hostile_values_are_data_in_the_sql_function(write_pipeline, rw_con):
    """As bound parameters of the SQL function and as a column it reads; a hostile function name
    is refused."""
    con = rw_con
    before = _state(con)
    pipe = approxql.load_pipeline(_hostile_pipeline(write_pipeline), con=con)
    approxql.register(con, pipe, seed=3, learn=False)
    day = dt.datetime(2024, 1, 20, 12)
    for value in HOSTILE:
        got, ex = con.execute("SELECT sales($s, $d, $p) AS r, sales_exact($s, $d, $p) AS e",
                              {"s": value, "d": day, "p": 19.5}).fetchall()[0]
        expected = pipe.predict_exact({**REQUEST, "store": value}).value
        assert ex["value"] == pytest.approx(expected, rel=1e-9) and ex["exact"], value
        assert abs(got["value"] - expected) < 20, value
    con.register("reqs", pa.table({"store": HOSTILE, "day": [day] * len(HOSTILE), "price": [19.5] * len(HOSTILE)}))
    rows = con.execute("SELECT store, sales_exact(store, day, price).value FROM reqs").fetchall()
    assert [r[0] for r in rows] == HOSTILE
    assert [r[1] for r in rows] == pytest.approx([pipe.predict_exact({**REQUEST, "store": v}).value for v in HOSTILE])
    for name in ["sales; DROP TABLE sales", 'x"y', "x' OR '1'='1", "1abc", ""]:
        with pytest.raises(OptionError, match="name must be an identifier"):
            approxql.register(con, pipe, name=name)
    assert _state(con) == before


def test_hostile_values_are_data_on_the_command_line(write_pipeline, rw_db, capsys):
    """name=value pairs and --json: the value is compared as text, the database is unchanged."""
    path = _hostile_pipeline(write_pipeline)
    with duckdb.connect(str(rw_db), read_only=True) as con:
        before = _state(con)
        truths = {v: _truth(con, v)[0] for v in HOSTILE}
    for value in HOSTILE:
        assert main(["predict", str(path), "--db", str(rw_db), f"store={value}", f"day={DAY}", "price=1"]) == 0
        assert json.loads(capsys.readouterr().out)["features"]["n_sales"] == truths[value], value
        request = json.dumps({"store": value, "day": DAY, "price": 1})
        assert main(["predict", str(path), "--db", str(rw_db), "--json", request]) == 0
        assert json.loads(capsys.readouterr().out)["features"]["n_sales"] == truths[value], value
    assert _state_of(rw_db) == before


def test_undecodable_command_line_bytes_are_a_request_error(write_pipeline, rw_db, capsys):
    """Python turns undecodable argv bytes into lone surrogates; DuckDB cannot bind them."""
    path = _hostile_pipeline(write_pipeline)
    assert main(["predict", str(path), "--db", str(rw_db), "store=nor\udcffth", f"day={DAY}", "price=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("approxql: error: ") and "parameter 'store'" in err and "surrogate" in err
    assert main(["predict", str(path), "--db", str(rw_db), "--json", '{"store": "\\ud800", "day": "2024-01-20", '
                 '"price": 1}']) == 2
    assert "parameter 'store'" in capsys.readouterr().err


@pytest.mark.parametrize("table, by", [(t, ["store"]) for t in HOSTILE_NAMES] + [
    ("sales", ['store"; DROP TABLE sales; --']),
    ("sales", ["store", "x' OR '1'='1"]),
    ("sales", "store; DROP TABLE sales"),
    ("sales", ["store", '"day"']),
    ("", ["store"]),
    (None, ["store"]),
])
def test_prepare_refuses_hostile_identifiers(rw_con, table, by):
    """Names that are not a table or column of the database are refused before anything is written."""
    con = rw_con
    before = _state(con)
    catalog = con.execute("SELECT * FROM approxql_catalog ORDER BY source").fetchall()
    with pytest.raises(OptionError, match="prepare: ") as info:
        approxql.prepare(con, table, by=by)
    assert "Error" not in str(info.value)                   # approxql's message, not a DuckDB one
    assert _state(con) == before
    assert con.execute("SELECT * FROM approxql_catalog ORDER BY source").fetchall() == catalog


@pytest.mark.parametrize("by", [[None], [1]])
def test_prepare_refuses_non_text_column_names(rw_con, by):
    """A column name that is not text is the caller's mistake: an OptionError, not a TypeError."""
    with pytest.raises(OptionError):
        approxql.prepare(rw_con, "sales", by=by)


@pytest.mark.parametrize("args, message", [
    (["prepare", "sales; DROP TABLE sales", "--by", "store"], "no table 'sales; DROP TABLE sales'"),
    (["prepare", '"sales"', "--by", "store"], "no table '\"sales\"'"),
    (["prepare", "sales", "--by", 'store"; DROP TABLE sales; --'], "has no column"),
    (["prepare", "sales", "--by", "store,x' OR '1'='1"], "has no column"),
    (["prepare", "sales", "--by", "store", "--seed", "-1"], "seed must be an integer"),
])
def test_cli_prepare_refuses_hostile_identifiers(rw_db, capsys, args, message):
    """The CLI opens the database writable for prepare: a hostile name must still change nothing."""
    before = _state_of(rw_db)
    assert main([*args, "--db", str(rw_db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("approxql: error: ") and message in err
    assert _state_of(rw_db) == before


TABLE = 'my table'
WEIRD = 'we"ird'
EVIL_TABLE = 'ev"il\'; DROP TABLE keep; --'
EVIL_FEATURE = 'av"g\'; DROP TABLE keep; --'


@pytest.mark.parametrize("table", [TABLE, EVIL_TABLE])
def test_tables_and_columns_that_need_quoting_prepare_and_sample(tmp_path, fresh_con, table):
    """A real table whose name and columns need quoting (one of them spelled like an injection) is
    prepared without touching the source, its copy holds the same rows in sample order with a
    uniform key per entity, and a pipeline reading it (with a hostile feature name) samples it."""
    con = fresh_con
    con.execute("CREATE TABLE keep AS SELECT 1 AS a")
    con.execute(f"""CREATE TABLE {quote(table)} AS SELECT i % 4 AS {quote(WEIRD)}, (i * 37 % 101) / 10.0 AS "amo'unt"
                    FROM range(200000) t(i)""")
    source_rows = con.execute(f"SELECT * FROM {quote(table)} ORDER BY ALL").fetchall()
    prepared = approxql.prepare(con, table, by=[WEIRD])
    assert (prepared.source, prepared.by, prepared.source_rows) == (table, (WEIRD,), 200000)
    copy = quote(prepared.copy)
    assert con.execute(f"SELECT * FROM {quote(table)} ORDER BY ALL").fetchall() == source_rows  # source untouched
    assert con.execute(f"SELECT {quote(WEIRD)}, \"amo'unt\" FROM {copy} ORDER BY ALL").fetchall() == source_rows
    disorder = con.execute(f"""
        SELECT count(*) FROM (SELECT {quote(WEIRD)} AS w, __approxql_rnd AS k,
                                     lag({quote(WEIRD)}) OVER (ORDER BY rowid) AS pw,
                                     lag(__approxql_rnd) OVER (ORDER BY rowid) AS pk FROM {quote(prepared.table(0))})
        WHERE w < pw OR (w = pw AND k < pk)""").fetchall()[0][0]
    assert disorder == 0                                                # sorted by entity, then key
    shares = con.execute(f"SELECT {quote(WEIRD)}, avg((__approxql_rnd < 0.1)::INT) FROM {copy} GROUP BY 1").fetchall()
    assert len(shares) == 4 and all(abs(s - 0.1) < 0.01 for _, s in shares)   # 10 % of the key = 10 % of the rows
    assert con.execute("SELECT source, by_columns FROM approxql_catalog").fetchall() == [(table, [WEIRD])]

    X = np.random.default_rng(0).normal(size=(50, 2))
    from sklearn.linear_model import LinearRegression
    export_onnx(LinearRegression().fit(X, X[:, 0] * 2), 2, tmp_path / "m.onnx", "regression")
    sql = tmp_path / "q.sql"
    sql.write_text(textwrap.dedent(f"""\
        -- name: q
        -- model: m.onnx
        -- task: regression
        -- params: k INTEGER, x DOUBLE
        -- inputs: {EVIL_FEATURE}, x
        -- delta: 0.1
        SELECT AVG("amo'unt") AS {quote(EVIL_FEATURE)} FROM {quote(table)} WHERE {quote(WEIRD)} = $k;
        SELECT $x AS x;
        """))
    pipe = approxql.load_pipeline(sql, con=con, warm=True)
    assert "prepared sample order" in pipe.explain_sampling()
    by_hand = con.execute(f"SELECT avg(\"amo'unt\") FROM {quote(table)} WHERE {quote(WEIRD)} = 1").fetchall()[0][0]
    exact = pipe.predict_exact({"k": 1, "x": 0.0})
    assert exact.features[EVIL_FEATURE] == pytest.approx(by_hand, rel=1e-12)
    approx = pipe.predict({"k": 1, "x": 0.0}, seed=1, initial_fraction=0.05, learn=False)
    assert approx.history[0]["fractions"] == {"q1": 0.05}
    assert abs(approx.features[EVIL_FEATURE] - by_hand) < 0.5
    many = pipe.predict_many([{"k": i % 4, "x": 0.0} for i in range(BATCH_MIN + 4)], seed=1, initial_fraction=0.05,
                             learn=False)
    assert all(p.history[0]["fractions"] == {"q1": 0.05} for p in many)
    assert con.execute("SELECT count(*) FROM keep").fetchall() == [(1,)]


# -- 2. bad pipeline files ---------------------------------------------------------------------------
def _without(key: str) -> str:
    return "".join(l for l in HEADER.splitlines(keepends=True) if not l.startswith(f"-- {key}:"))


# Cases tests/test_pipeline_file.py does not have: (text, fragment of the message, line named)
FILE_CASES = {
    "missing name": (_without("name") + BODY, "missing header key(s) name", None),
    "missing model": (_without("model") + BODY, "missing header key(s) model", None),
    "missing params": (_without("params") + BODY, "missing header key(s) params", None),
    "missing inputs": (_without("inputs") + BODY, "missing header key(s) inputs", None),
    "no header at all": (BODY, "missing header key(s) name, model, task, params, inputs", None),
    "empty file": ("", "missing header key(s)", None),
    "hostile name": (HEADER.replace("name: sales", "name: sales; DROP TABLE sales") + BODY, "must be an identifier", 1),
    "hostile param name": (HEADER.replace("price DOUBLE", "price; DROP TABLE sales DOUBLE") + BODY,
                           "is not an identifier", 4),
    "empty inputs": (HEADER.replace("inputs: avg_amount, n_sales, price", "inputs: , ,") + BODY, "no model inputs", 5),
    "unknown param, other case": (HEADER + BODY.replace("$price", "$PRICE"), "unknown parameter $PRICE", 10),
    "unknown param in a window": (HEADER + BODY.replace("$day - INTERVAL", "$today - INTERVAL"),
                                  "unknown parameter $today", 6),
    "unterminated string": (HEADER + "SELECT 'abc AS price;\n" + BODY, "cannot tokenize SQL", 6),
    "garbage": (HEADER + "this is not sql at all;\n" + BODY, "SQL parse error", 6),
    "select into": (HEADER + BODY.replace("SELECT $price AS price;", "SELECT $price AS price INTO stolen;"),
                    "found SELECT ... INTO", 10),
    "select into temp": (HEADER + BODY.replace("FROM sales\n", "INTO TEMP stolen FROM sales\n"), "found SELECT ... INTO", 6),
    "data-modifying CTE": (HEADER + "WITH gone AS (DELETE FROM sales RETURNING amount)\n"
                           + BODY.replace("FROM sales\n", "FROM gone, sales\n"), "found DELETE inside the SELECT", 6),
    "CTE then INSERT": (HEADER + "WITH x AS (SELECT 1 AS a) INSERT INTO prices SELECT 'x', a FROM x;\n" + BODY,
                        "found INSERT", 6),
    "union": (HEADER + "SELECT 1 AS z UNION ALL SELECT 2;\n" + BODY, "found UNION", 6),
    "second statement on the line": (HEADER + BODY.replace("SELECT $price AS price;", "SELECT $price AS price; DROP TABLE sales;"),
                                     "found DROP", 10),
}
STATEMENTS = ["UPDATE sales SET amount = 0", "CREATE TABLE t AS SELECT 1", "CREATE OR REPLACE VIEW v AS SELECT 1",
              "CREATE MACRO m(x) AS x", "COPY sales TO 'out.csv'", "ATTACH 'other.duckdb' AS other", "DETACH other",
              "PRAGMA enable_profiling", "SET threads = 1", "RESET threads", "SET VARIABLE v = 1",
              "CALL pragma_version()", "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL httpfs", "EXPORT DATABASE 'out'",
              "CHECKPOINT", "VACUUM", "ALTER TABLE sales ADD COLUMN z INT", "TRUNCATE sales", "USE memory",
              "BEGIN TRANSACTION", "COMMIT", "DESCRIBE sales", "EXPLAIN SELECT 1", "PREPARE p AS SELECT 1",
              "MERGE INTO sales USING prices ON true WHEN MATCHED THEN DELETE", "DROP VIEW IF EXISTS v",
              "VALUES (1)", "PIVOT sales ON store USING sum(amount)"]
for _s in STATEMENTS:
    _word = _s.split()[0]
    FILE_CASES[f"statement {_s}"] = (HEADER + _s + ";\n" + BODY, "SQL parse error" if _word == "EXPORT" else f"found {_word}", 6)


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_pipeline_files_are_one_pipeline_error(case, tmp_path, rw_con):
    """From the file on disk and through load_pipeline on a writable database: one PipelineError
    naming the file (and line), raised before any SQL runs."""
    text, fragment, line = FILE_CASES[case]
    path = tmp_path / "bad.sql"
    path.write_text(text)
    with pytest.raises(PipelineError) as info:
        approxql.read_pipeline_file(path)
    err = info.value
    assert type(err) is PipelineError and err.path == str(path) and err.line == line
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")
    assert fragment in str(err)
    con = rw_con
    before = _state(con)
    with pytest.raises(PipelineError, match=re.escape(fragment)):
        approxql.load_pipeline(path, con=con)
    assert _state(con) == before


def test_a_pipeline_path_that_is_a_folder(tmp_path):
    with pytest.raises(PipelineError, match="cannot read pipeline file") as info:
        approxql.read_pipeline_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def _int_input_model(path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Cast", ["features"], ["variable"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "ints", [helper.make_tensor_value_info("features", TensorProto.INT64, [None, 3])],
                              [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 3])])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    onnx.checker.check_model(str(path))


def _wide_model(path):
    from sklearn.linear_model import LinearRegression
    X = np.random.default_rng(4).normal(size=(30, 4))
    export_onnx(LinearRegression().fit(X, X[:, 0]), 4, path, "regression")


MODEL_CASES = {
    "missing": (lambda p: p.unlink(), "not found"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "cannot be loaded by ONNX Runtime"),
    "empty file": (lambda p: p.write_bytes(b""), "cannot be loaded by ONNX Runtime"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "not found"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot be loaded by ONNX Runtime"),
    "wider input": (_wide_model, "takes 4 features in input 'features', but the pipeline lists 3 inputs"),
    "integer input": (_int_input_model, "input 'features' has type tensor(int64)"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_files_are_one_model_error(case, write_pipeline, con, tmp_path):
    """A missing, corrupt or mismatched model: one ModelError naming the pipeline file and the model."""
    path = write_pipeline()
    change, fragment = MODEL_CASES[case]
    change(tmp_path / "model.onnx")
    with pytest.raises(ModelError) as info:
        approxql.load_pipeline(path, con=con)
    assert type(info.value) is ModelError
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "model.onnx" in message and fragment in message


def test_model_input_names_that_do_not_match(write_pipeline, con, tmp_path, named_inputs_model_path):
    """A model with one input per feature whose names are not the pipeline's inputs."""
    shutil.copy(named_inputs_model_path, tmp_path / "model.onnx")
    path = write_pipeline(header=HEADER.replace("inputs: avg_amount, n_sales, price", "inputs: avg_amount, n_sales, cost"),
                          body=BODY.replace("$price AS price", "$price AS cost"), model=False)
    with pytest.raises(ModelError) as info:
        approxql.load_pipeline(path, con=con)
    assert str(info.value).startswith(f"{path}: ") and "'cost'" in str(info.value) and "model.onnx" in str(info.value)


def test_a_regression_model_in_a_classification_pipeline(write_pipeline, con):
    path = write_pipeline(header=HEADER.replace("regression", "classification"))
    with pytest.raises(ModelError, match="has no label output") as info:
        approxql.load_pipeline(path, con=con)
    assert str(info.value).startswith(f"{path}: ")


# -- 3. bad requests -----------------------------------------------------------------------------------
TYPED_HEADER = HEADER.replace(
    "price DOUBLE", "price DOUBLE, k INTEGER, s SMALLINT, big BIGINT, u UINTEGER, d DATE, b BOOLEAN, "
    "dec DECIMAL(6,2), r REAL, tz TIMESTAMPTZ") + "-- delta: 5\n-- fill: avg_amount=0\n"
TYPED_BODY = BODY.replace("SELECT $price AS price;", """SELECT CASE WHEN $k IS NULL OR $s IS NULL OR $big IS NULL OR $u IS NULL
    OR $d IS NULL OR $b IS NULL OR $dec IS NULL OR $r IS NULL OR $tz IS NULL THEN NULL ELSE $price END AS price;""")
GOOD = {"store": "north", "day": DAY, "price": 19.5, "k": 7, "s": -3, "big": 2 ** 40, "u": 4_000_000_000,
        "d": "2024-01-02", "b": True, "dec": 9999.99, "r": 1.5, "tz": "2024-01-20 12:00+02"}
MISSING = object()
NAN, INF = float("nan"), float("inf")

# (id, changed parameter, value, fragment of the message besides the parameter's name)
BAD_VALUES = [
    ("store bytes", "store", b"north", "expects TEXT"),
    ("store list", "store", ["north"], "expects TEXT"),
    ("store dict", "store", {"a": 1}, "expects TEXT"),
    ("store surrogate", "store", "nor\ud800th", "lone surrogate"),
    ("store NULL", "store", None, "is NULL"),
    ("price NaN", "price", NAN, "not a finite number"),
    ("price inf", "price", INF, "not a finite number"),
    ("price -inf", "price", -INF, "not a finite number"),
    ("price text inf", "price", "1e400", "not a finite number"),
    ("price huge int", "price", 10 ** 400, "expects DOUBLE"),
    ("price list", "price", [1.0], "expects DOUBLE"),
    ("price dict", "price", {"v": 1.0}, "expects DOUBLE"),
    ("price bytes", "price", b"1.0", "expects DOUBLE"),
    ("price bool", "price", True, "expects DOUBLE"),
    ("price NULL", "price", None, "is NULL"),
    ("k text", "k", "12abc", "expects INT"),
    ("k over", "k", 2 ** 31, "outside [-2147483648, 2147483647]"),
    ("k under", "k", -(2 ** 31) - 1, "outside [-2147483648, 2147483647]"),
    ("k text over", "k", "2147483648", "outside"),
    ("k fraction", "k", 1.5, "not an integer"),
    ("k NaN", "k", NAN, "not an integer"),
    ("k inf", "k", INF, "not an integer"),
    ("k bool", "k", True, "expects INT"),
    ("k list", "k", [1], "expects INT"),
    ("k NULL", "k", None, "is NULL"),
    ("s over", "s", 32768, "outside [-32768, 32767]"),
    ("big over", "big", 2 ** 63, "outside"),
    ("u negative", "u", -1, "outside [0, 4294967295]"),
    ("u over", "u", 2 ** 32, "outside [0, 4294967295]"),
    ("u text", "u", "lots", "expects UINTEGER"),
    ("dec over", "dec", 10000.0, "outside the range of DECIMAL(6, 2)"),
    ("dec rounds over", "dec", -9999.999, "outside the range of DECIMAL(6, 2)"),
    ("r over", "r", 1e39, "outside the range of REAL"),
    ("day year 99999", "day", "99999-01-01", "expects TIMESTAMP"),
    ("day month 13", "day", "2013-13-45", "expects TIMESTAMP"),
    ("day Feb 30", "day", "2024-02-30 10:00", "expects TIMESTAMP"),
    ("day hour 25", "day", "2024-01-20 25:00", "expects TIMESTAMP"),
    ("day int", "day", 1705752000, "expects TIMESTAMP"),
    ("day list", "day", [2024, 1, 20], "expects TIMESTAMP"),
    ("day bytes", "day", b"2024-01-20", "expects TIMESTAMP"),
    ("d month 13", "d", "2013-13-45", "expects DATE"),
    ("d year 99999", "d", "99999-12-31", "expects DATE"),
    ("b int", "b", 1, "expects BOOLEAN"),
    ("b word", "b", "yes", "expects BOOLEAN"),
    ("tz garbage", "tz", "garbage", "expects TIMESTAMPTZ"),
    ("tz list", "tz", [2024], "expects TIMESTAMPTZ"),
    ("tz month 13", "tz", "2013-13-01 00:00+00", "expects TIMESTAMPTZ"),
    ("missing price", "price", MISSING, "missing 'price'"),
    ("extra param", "prices", 1.0, "unknown 'prices' (did you mean 'price'?)"),
    ("extra non-text key", 3, 1.0, "unknown 3"),
]


@pytest.fixture(scope="module")
def typed_pipe(tmp_path_factory, db_path, linear_model):
    folder = tmp_path_factory.mktemp("typed")
    (folder / "typed.sql").write_text(TYPED_HEADER + TYPED_BODY)
    export_onnx(linear_model, 3, folder / "model.onnx", "regression")
    con = duckdb.connect(str(db_path), read_only=True)
    yield approxql.load_pipeline(folder / "typed.sql", con=con)
    con.close()


def _bad(name, value) -> dict:
    request = dict(GOOD)
    if value is MISSING:
        del request[name]
    else:
        request[name] = value
    return request


def test_the_typed_pipeline_accepts_good_requests(typed_pipe):
    """The baseline the bad cases change one value of."""
    assert math.isfinite(typed_pipe.predict_exact(GOOD).value)
    assert typed_pipe.predict(GOOD).features["price"] == 19.5


@pytest.mark.parametrize("entry", ["predict_exact", "predict"])
@pytest.mark.parametrize("case, name, value, fragment", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_request_values_one_request(typed_pipe, entry, case, name, value, fragment):
    """One RequestError naming the parameter, never a DuckDB or Python error."""
    with pytest.raises(RequestError) as info:
        getattr(typed_pipe, entry)(_bad(name, value))
    assert type(info.value) is RequestError
    message = str(info.value)
    assert fragment in message
    if value is not MISSING and name in GOOD:
        assert f"parameter {name!r}" in message


@pytest.mark.parametrize("entry", ["predict_many", "predict_exact_many"])
@pytest.mark.parametrize("case, name, value, fragment", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_request_values_in_batches(typed_pipe, entry, case, name, value, fragment):
    """errors='raise' names the request and the parameter; errors='null' confines the failure to it."""
    requests = [GOOD, _bad(name, value), {**GOOD, "store": "south"}]
    run = getattr(typed_pipe, entry)
    with pytest.raises(RequestError, match=r"^request 1: ") as info:
        run(requests)
    assert fragment in str(info.value)
    if value is not MISSING and name in GOOD:
        assert f"parameter {name!r}" in str(info.value)
    out = run(requests, errors="null")
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert out[0].value == pytest.approx(typed_pipe.predict_exact(GOOD).value, rel=1e-9)


def test_bad_values_in_arrow_columns(typed_pipe):
    """Arrow input: integers given as text, NaN and infinity, NULLs; each row's error names its parameter."""
    rows = [dict(GOOD, k=str(GOOD["k"]), u=str(GOOD["u"])) for _ in range(5)]
    rows[1]["k"] = "2147483648"
    rows[2]["u"] = "-1"
    rows[3]["price"] = NAN
    rows[4]["store"] = None
    table = pa.Table.from_pylist(rows)
    for run in (typed_pipe.predict_many, typed_pipe.predict_exact_many):
        with pytest.raises(RequestError, match=r"request 1: parameter 'k' expects INT"):
            run(table)
        out = run(table, errors="null")
        errors = out.column("error").to_pylist()
        assert errors[0] is None
        assert "parameter 'k'" in errors[1] and "parameter 'u'" in errors[2]
        assert "parameter 'price'" in errors[3] and "parameter 'store' is NULL" in errors[4]
        assert out.column("value").to_pylist()[1:] == [None] * 4


def test_arrow_timestamps_python_cannot_hold_are_a_request_error(typed_pipe):
    days = pa.array([dt.datetime(2024, 1, 20, 12), None], pa.timestamp("us")).to_pylist()[:1]
    after_9999 = pa.array([253_402_300_800_000_000 + 10 ** 15], pa.timestamp("us"))   # year 10031
    table = pa.Table.from_pylist([GOOD, GOOD]).set_column(
        1, "day", pa.concat_arrays([pa.array(days, pa.timestamp("us")), after_9999]))
    out = typed_pipe.predict_exact_many(table, errors="null")
    assert out.column("error").to_pylist()[0] is None and "parameter 'day'" in out.column("error").to_pylist()[1]


@pytest.mark.parametrize("entry", ["predict", "predict_many", "predict_many_arrow", "predict_exact_many"])
def test_a_window_with_no_rows(write_pipeline, con, entry):
    """COUNT over no rows is 0 and AVG is NULL: NullFeatureError naming the feature and the fill
    line without a fill value; the fill value with one."""
    requests = [REQUEST, {**REQUEST, "day": "1999-01-01"}, {**REQUEST, "store": "nowhere"}]

    def run(pipe, errors="raise"):
        if entry == "predict":
            return [pipe.predict(r, learn=False) for r in requests]
        if entry == "predict_many_arrow":
            out = pipe.predict_many(pa.Table.from_pylist(requests), errors=errors, learn=False)
            return [None if e else v for v, e in zip(out.column("value").to_pylist(), out.column("error").to_pylist())]
        return getattr(pipe, entry)(requests, errors=errors, **({} if entry == "predict_exact_many" else {"learn": False}))

    bare = approxql.load_pipeline(write_pipeline(header=HEADER + "-- delta: 5\n"), con=con)
    with pytest.raises(NullFeatureError, match=r"feature 'avg_amount' \(query q1, line \d+\) is NULL .*-- fill: avg_amount="):
        run(bare)
    if entry != "predict":
        out = run(bare, errors="null")
        assert out[0] is not None and out[1] is None and out[2] is None
    filled = approxql.load_pipeline(write_pipeline(header=HEADER + "-- delta: 5\n-- fill: avg_amount=42\n"), con=con)
    out = run(filled)
    if entry != "predict_many_arrow":
        assert [p.features["n_sales"] for p in out[1:]] == [0, 0]
        assert [p.features["avg_amount"] for p in out[1:]] == [42.0, 42.0]
    assert all(v is not None for v in out)


def test_a_sample_of_a_tiny_matching_set_never_gives_a_silent_number(write_pipeline, rw_con):
    """'solo' has 2 rows in the window: a 1 % sample holds none of them; the answer must still be
    the exact one (or an error), never an AVG of no sampled rows."""
    pipe = approxql.load_pipeline(write_pipeline(header=HEADER + "-- delta: 1\n"), con=rw_con)
    request = {**REQUEST, "store": "solo"}
    exact = pipe.predict_exact(request)
    assert exact.features["n_sales"] == 2 and exact.features["avg_amount"] == 2.0
    for seed in range(4):
        pred = pipe.predict(request, seed=seed, initial_fraction=0.01, learn=False)
        assert pred.features == exact.features and pred.value == pytest.approx(exact.value, rel=1e-9)
    for pred in pipe.predict_many([request] * (BATCH_MIN + 1), seed=5, initial_fraction=0.01, learn=False):
        assert pred.value == pytest.approx(exact.value, rel=1e-9)


# -- 4. bad options -------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ("tau", 0), ("tau", 1), ("tau", -0.1), ("tau", 1.5), ("tau", NAN), ("tau", INF), ("tau", "0.9"), ("tau", True),
    ("delta", -1.0), ("delta", NAN), ("delta", INF), ("delta", "1"),
    ("points", 0), ("points", 1), ("points", 2.5), ("points", True),
    ("time_budget_ms", 0), ("time_budget_ms", -5), ("time_budget_ms", NAN), ("time_budget_ms", "10"),
    ("max_rounds", 0), ("max_rounds", -1), ("max_rounds", 1.5),
    ("seed", -1), ("seed", 2 ** 64), ("seed", 1.0), ("seed", "1"),
    ("strategy", "magic"), ("strategy", None), ("policy", "greedy"), ("policy", None),
    ("initial_fraction", 0), ("initial_fraction", 1.5), ("initial_fraction", NAN),
    ("learn", "yes"),
]


@pytest.fixture()
def option_pipe(write_pipeline, con):
    return approxql.load_pipeline(write_pipeline(header=HEADER + "-- delta: 5\n"), con=con)


@pytest.mark.parametrize("entry", ["predict", "predict_many", "register"])
@pytest.mark.parametrize("option, value", BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v in BAD_OPTIONS])
def test_bad_options_are_an_option_error_naming_the_option(option_pipe, con, entry, option, value):
    """Checked before any request is touched, so a bad request does not hide them."""
    with pytest.raises(OptionError) as info:
        if entry == "predict":
            option_pipe.predict({"bad": "request"}, **{option: value})
        elif entry == "predict_many":
            option_pipe.predict_many([{"bad": "request"}], **{option: value})
        else:
            approxql.register(con, option_pipe, **{option: value})
    assert type(info.value) is OptionError and option in str(info.value)


@pytest.mark.parametrize("delta", [-1.0, NAN, INF, "1"])
def test_a_bad_delta_is_refused_for_classification_too(write_pipeline, con, tmp_path, classifier_model_path, delta):
    """delta is unused by classification, but a nonsensical one is still a caller's mistake."""
    path = write_pipeline(header=HEADER.replace("regression", "classification"), model=False)
    shutil.copy(classifier_model_path, tmp_path / "model.onnx")
    pipe = approxql.load_pipeline(path, con=con)
    for call in (lambda: pipe.predict(REQUEST, delta=delta), lambda: pipe.predict_many([REQUEST], delta=delta),
                 lambda: approxql.register(con, pipe, delta=delta)):
        with pytest.raises(OptionError, match="delta must be a number >= 0"):
            call()
    assert pipe.predict(REQUEST, delta=None).value in (0, 1)


@pytest.mark.parametrize("errors", ["ignore", None, "NULL", True])
def test_bad_errors_option(option_pipe, con, errors):
    for call in (lambda: option_pipe.predict_many([REQUEST], errors=errors),
                 lambda: option_pipe.predict_exact_many([REQUEST], errors=errors),
                 lambda: approxql.register(con, option_pipe, errors=errors)):
        with pytest.raises(OptionError, match="errors must be 'raise' or 'null'"):
            call()
