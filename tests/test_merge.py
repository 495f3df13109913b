"""Exact plans merge aggregate queries that read nested sets of the same rows into one scan."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from approxql.engines import DuckDBEngine
from approxql.merge import merge_scans
from approxql.params import bind_request
from approxql.pipeline_file import parse_pipeline

HEADER = """\
-- name: m
-- model: model.onnx
-- task: regression
-- params: ip INTEGER, app INTEGER, os INTEGER, t TIMESTAMP
-- inputs: {inputs}
"""


def spec_of(body: str):
    import re
    names = re.findall(r"AS (\w+)", body)
    return parse_pipeline(HEADER.format(inputs=", ".join(names)) + body)


@pytest.fixture(scope="module")
def clicks():
    con = duckdb.connect()
    con.execute("""
        CREATE TABLE clicks AS
        SELECT (i % 7)::INTEGER AS ip,
               CASE WHEN i % 11 = 0 THEN NULL ELSE (hash(i) % 5)::INTEGER END AS app,
               CASE WHEN i % 13 = 0 THEN NULL ELSE (hash(i + 1) % 3)::INTEGER END AS os,
               TIMESTAMP '2024-01-01' + to_seconds(i * 37) AS t,
               CASE WHEN i % 17 = 0 THEN NULL ELSE (hash(i + 2) % 1000) / 10.0 END AS x
        FROM range(20000) r(i)""")
    con.execute("CREATE TABLE other AS SELECT * FROM clicks")
    yield con
    con.close()


def requests(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = [{"ip": int(rng.integers(0, 8)), "app": int(rng.integers(0, 6)), "os": int(rng.integers(0, 4)),
            "t": f"2024-01-0{int(rng.integers(1, 10))} {int(rng.integers(0, 24)):02d}:00"} for _ in range(n)]
    out.append({"ip": 99, "app": 1, "os": 1, "t": "2024-01-05 00:00"})   # matches no rows at all
    return out


def assert_same_features(con, spec, merged):
    engine = DuckDBEngine(con)
    alone, together = engine.compile_exact(spec.queries), engine.compile_exact(merged)
    many_alone, many_together = (engine.compile_exact(spec.queries, batch=True),
                                 engine.compile_exact(merged, batch=True))
    reqs = requests()
    for r in reqs:
        bound = bind_request(list(spec.params), r)
        a, b = engine.exact_features(alone, bound), engine.exact_features(together, bound)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-9, nan_ok=True) if a[k] is not None else b[k] is None, (k, r)
    import pyarrow as pa
    table = pa.Table.from_pylist([bind_request(list(spec.params), r) for r in reqs])
    x, y = engine.exact_features_many(many_alone, table), engine.exact_features_many(many_together, table)
    for name in x.column_names:
        assert y.column(name).to_pylist() == pytest.approx(x.column(name).to_pylist(), rel=1e-9, nan_ok=True)


def test_nested_counts_become_one_scan(clicks):
    spec = spec_of("""
SELECT COUNT(*) AS c_ip FROM clicks WHERE ip = $ip AND t >= $t - INTERVAL 1 DAY AND t < $t;
SELECT COUNT(*) AS c_app FROM clicks WHERE ip = $ip AND app = $app AND t >= $t - INTERVAL 1 DAY AND t < $t;
SELECT COUNT(*) AS c_os FROM clicks WHERE ip = $ip AND app = $app AND os = $os AND t >= $t - INTERVAL 1 DAY AND t < $t;
SELECT $os AS os_feature;
""")
    merged = merge_scans(spec.queries)
    assert [q.name for q in merged] == ["q1_q2_q3", "q4"]
    assert merged[0].features == ("c_ip", "c_app", "c_os") and merged[0].params == ("ip", "t", "app", "os")
    sql = merged[0].sql()
    assert sql.count("FROM clicks") == 1 and sql.count("FILTER") == 2
    assert_same_features(clicks, spec, merged)


def test_every_kind_of_aggregate_keeps_its_value(clicks):
    # NULLs in the extra conditions, an aggregate with its own FILTER, CASE, distinct counts,
    # quantiles, variances, ratios, and the broad query written after the narrow one (both with a
    # DISTINCT aggregate: those merge only with each other)
    spec = spec_of("""
SELECT AVG(x) AS a_avg, STDDEV_SAMP(x) AS a_sd, MEDIAN(x) AS a_med, QUANTILE_CONT(x, 0.9) AS a_q90,
       COUNT(DISTINCT os) AS a_nos, SUM(x) FILTER (WHERE os = 1) AS a_sum1,
       SUM(CASE WHEN x > 50 THEN 1 ELSE 0 END) / NULLIF(COUNT(x), 0) AS a_share, MIN(x) AS a_min
FROM clicks WHERE ip = $ip AND app = $app AND t < $t;
SELECT AVG(x) AS b_avg, VAR_POP(x) AS b_var, COUNT(x) AS b_n, COUNT(DISTINCT app) AS b_napps FROM clicks WHERE ip = $ip AND t < $t;
""")
    merged = merge_scans(spec.queries)
    assert len(merged) == 1 and merged[0].features[:1] == ("a_avg",)
    assert "app = " not in merged[0].select.args["where"].sql()      # the scan is the broad query's
    assert_same_features(clicks, spec, merged)


def test_identical_where_clauses_share_a_scan(clicks):
    spec = spec_of("""
SELECT AVG(x) AS s_avg, STDDEV(x) AS s_sd FROM clicks WHERE ip = $ip;
SELECT COUNT(x) AS s_n, MEDIAN(x) AS s_med FROM clicks WHERE ip = $ip;
""")
    merged = merge_scans(spec.queries)
    assert len(merged) == 1 and "FILTER" not in merged[0].sql()
    assert_same_features(clicks, spec, merged)


def test_distinct_aggregates_share_a_scan_only_with_each_other(clicks):
    # DuckDB materialises every column of a statement that mixes DISTINCT and plain aggregates
    spec = spec_of("""
SELECT AVG(x) AS d_avg, STDDEV(x) AS d_sd FROM clicks WHERE ip = $ip;
SELECT COUNT(DISTINCT app) AS d_apps FROM clicks WHERE ip = $ip;
SELECT COUNT(x) AS d_n FROM clicks WHERE ip = $ip AND os = $os;
SELECT COUNT(DISTINCT os) AS d_oses, SUM(DISTINCT x) AS d_xs FROM clicks WHERE ip = $ip AND app = $app;
""")
    merged = merge_scans(spec.queries)
    assert [q.features for q in merged] == [("d_avg", "d_sd", "d_n"), ("d_apps", "d_oses", "d_xs")]
    assert_same_features(clicks, spec, merged)


@pytest.mark.parametrize("body", [
    # different tables
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\nSELECT COUNT(*) AS n2 FROM other WHERE ip = $ip;",
    # neither WHERE contains the other: a merged scan would read rows neither query reads
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip AND app = $app;\n"
    "SELECT COUNT(*) AS n2 FROM clicks WHERE ip = $ip AND os = $os;",
    # a join
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\n"
    "SELECT COUNT(*) AS n2 FROM clicks JOIN other USING (t) WHERE clicks.ip = $ip;",
    # a subquery in the select list
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\n"
    "SELECT COUNT(*) + (SELECT COUNT(*) FROM other) AS n2 FROM clicks WHERE ip = $ip AND app = $app;",
    # a lookup is not an aggregate
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\nSELECT x AS n2 FROM clicks WHERE ip = $ip AND t = $t;",
    # a sample of its own (review: merged, one query's USING SAMPLE applied to the other's rows)
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip USING SAMPLE 10 ROWS (reservoir, 7);\n"
    "SELECT COUNT(*) AS n2 FROM clicks WHERE ip = $ip AND app = $app;",
    # a window inside a wider scan: alone it reads its window's row groups, merged its FILTER
    # would be tested on every row of the wider scan
    "SELECT AVG(x) AS n1 FROM clicks WHERE ip = $ip;\n"
    "SELECT AVG(x) AS n2 FROM clicks WHERE ip = $ip AND t >= $t - INTERVAL 1 DAY AND t < $t;",
    "SELECT AVG(x) AS n1 FROM clicks WHERE ip = $ip AND t < $t;\n"
    "SELECT AVG(x) AS n2 FROM clicks WHERE ip = $ip AND t < $t AND t BETWEEN $t - INTERVAL 1 DAY AND $t;",
    # WITHIN GROUP (review: a FILTER around the inner call is not valid SQL)
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\n"
    "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x) AS n2 FROM clicks WHERE ip = $ip AND app = $app;",
    "SELECT COUNT(*) AS n1 FROM clicks WHERE ip = $ip;\n"
    "SELECT MODE() WITHIN GROUP (ORDER BY x) AS n2 FROM clicks WHERE ip = $ip AND app = $app;",
])
def test_queries_that_do_not_share_a_scan_stay_apart(clicks, body):
    spec = spec_of(body)
    assert [q.name for q in merge_scans(spec.queries)] == [q.name for q in spec.queries]
    if "SAMPLE" not in body:
        assert_same_features(clicks, spec, merge_scans(spec.queries))


def test_a_query_joins_the_group_whose_scan_contains_it(clicks):
    spec = spec_of("""
SELECT COUNT(*) AS g1 FROM clicks WHERE ip = $ip AND app = $app;
SELECT COUNT(*) AS g2 FROM clicks WHERE ip = $ip AND os = $os;
SELECT COUNT(*) AS g3 FROM clicks WHERE ip = $ip AND os = $os AND app = $app AND x IS NOT NULL;
SELECT COUNT(*) AS g4 FROM clicks WHERE ip = $ip AND app = $app AND x IS NOT NULL;
""")
    merged = merge_scans(spec.queries)
    assert [q.name for q in merged] == ["q1_q3_q4", "q2"]
    assert_same_features(clicks, spec, merged)


def test_the_pipeline_exact_path_uses_the_merged_scan(write_pipeline, con):
    import approxql
    body = """\
SELECT AVG(amount) AS avg_amount FROM sales WHERE store = $store AND day < $day;
SELECT COUNT(*) AS n_sales FROM sales WHERE store = $store AND day < $day AND amount IS NOT NULL;
SELECT $price AS price;
"""
    pipe = approxql.load_pipeline(write_pipeline(body=body), con=con)   # conftest's sales header
    assert pipe._exact.sql.count("FROM sales") == 1
    pred = pipe.predict_exact({"store": "south", "day": "2024-02-01", "price": 3.0})
    by_hand = con.execute("SELECT AVG(amount), (SELECT COUNT(*) FROM sales WHERE store = 'south' AND day < "
                          "TIMESTAMP '2024-02-01' AND amount IS NOT NULL) FROM sales "
                          "WHERE store = 'south' AND day < TIMESTAMP '2024-02-01'").fetchall()[0]
    assert pred.features["avg_amount"] == pytest.approx(by_hand[0]) and pred.features["n_sales"] == by_hand[1]
