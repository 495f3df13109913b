"""Sampling one aggregate query: exactness at fraction 1, nested increments, strategies, fallbacks."""
from __future__ import annotations

import datetime as dt
import re

import duckdb
import sqlglot
import numpy as np
import pyarrow as pa
import pytest

import approxql
from approxql import OptionError
from approxql.engines import DuckDBEngine
from approxql.pipeline_file import parse_pipeline
from approxql.sampling import QuerySampler, compile_query, prepare
from approxql.sampling.batch import BATCH_MIN, advance_many
from approxql.sampling.catalog import CATALOG, KEY, lookup

HEADER = "-- name: t\n-- model: m.onnx\n-- task: regression\n-- params: k INTEGER, lim DOUBLE\n-- inputs: {first}\n"
AGGREGATES = """
    COUNT(*) AS n, COUNT(y) AS ny, SUM(x) AS s, AVG(x) AS a, AVG(y) AS ay,
    VAR_SAMP(x) AS vs, VAR_POP(y) AS vp, STDDEV_SAMP(x) AS ss, STDDEV_POP(x) AS sp, variance(x) AS v2, stddev(y) AS s2,
    MEDIAN(x) AS med, QUANTILE_CONT(x, 0.9) AS q9, QUANTILE_DISC(y, 0.25) AS qd,
    SUM(x) / SUM(w) AS ratio, AVG(x) FILTER (WHERE flag) AS af, COUNT(*) FILTER (WHERE x > $lim) AS cf,
    SUM(CASE WHEN flag THEN x ELSE 0 END) AS sc, MIN(x) AS mn, MAX(y) AS mx, COUNT(DISTINCT g) AS cd,
    AVG(x) - $lim AS shifted, COALESCE(AVG(y), -1) AS co"""


def query(select_items: str = AGGREGATES, where: str = "k = $k", table: str = "t"):
    first = sqlglot.parse_one(f"SELECT {select_items}", read="duckdb").expressions[0].alias_or_name
    text = HEADER.format(first=first) + f"SELECT {select_items} FROM {table} WHERE {where};"
    return parse_pipeline(text).queries[0]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """k=1: 300,000 rows spread through 1.2M (for block sampling); k=2: 5,000 rows in one run."""
    con = duckdb.connect(str(tmp_path_factory.mktemp("sampling") / "s.duckdb"))
    con.execute("SET threads = 1")  # TABLESAMPLE SYSTEM repeats its sample only single-threaded
    con.execute("""
        CREATE TABLE t AS
        SELECT CASE WHEN i < 1195000 THEN 1 + (i % 4 = 0)::INT * 0 + (i % 4 <> 0)::INT * 2 ELSE 2 END AS k,
               exp(2 * ((hash(i * 8 + 1) % 1000000) / 1000000.0)) AS x,
               CASE WHEN hash(i * 8 + 2) % 10 = 0 THEN NULL ELSE (hash(i * 8 + 3) % 1000) / 10.0 END AS y,
               1 + (hash(i * 8 + 4) % 100) / 100.0 AS w,
               hash(i * 8 + 5) % 3 = 0 AS flag,
               hash(i * 8 + 6) % 50 AS g
        FROM range(1200000) r(i)""")
    yield con
    con.close()


def exact_row(con, q, params):
    with con.cursor() as cur:
        row = cur.execute(q.sql(), {k: v for k, v in params.items() if k in q.params}).fetchall()[0]
    return dict(zip(q.features, row))


def run(con, q, strategy, params, fractions):
    compiled = compile_query(DuckDBEngine(con), con, q, strategy=strategy)
    sampler = QuerySampler(compiled, DuckDBEngine(con), params, seed=3)
    with con.cursor() as cur:
        for p in fractions:
            sampler.advance(cur, p)
    return compiled, sampler


@pytest.mark.parametrize("strategy", ["system", "prepared", "exact"])
@pytest.mark.parametrize("k", [1, 2, 99])  # spread rows, one contiguous run, no matching rows
def test_fraction_one_equals_duckdb(db, strategy, k):
    if strategy == "prepared":
        prepare(db, "t", by=["k"])
    q = query()
    params = {"k": k, "lim": 3.0}
    _, sampler = run(db, q, strategy, params, [0.05, 1.0] if strategy != "exact" else [1.0])
    result = sampler.result()
    assert result.exact and result.fraction == 1.0 and np.all(result.cov == 0)
    truth = exact_row(db, q, params)
    for name, value in truth.items():
        got = result.values[name]
        if value is None:
            assert got is None, name
        else:
            assert got == pytest.approx(float(value), rel=1e-12, abs=1e-12), name
        assert result.stderr[name] == 0.0


def test_nested_increments_equal_one_round(db):
    prepare(db, "t", by=["k"])
    q = query("AVG(x) AS a, SUM(x) AS s, VAR_SAMP(x) AS v, COUNT(y) AS ny, MEDIAN(x) AS med")
    params = {"k": 1, "lim": 0.0}
    _, stepwise = run(db, q, "prepared", params, [0.01, 0.02, 0.05, 0.08])
    _, once = run(db, q, "prepared", params, [0.08])
    assert stepwise.moments.n == once.moments.n
    np.testing.assert_allclose(stepwise.moments.mean, once.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(stepwise.moments.comoment, once.moments.comoment, rtol=1e-9, atol=1e-6)
    a, b = stepwise.result(), once.result()
    for name in q.features:
        assert a.values[name] == pytest.approx(b.values[name], rel=1e-10)
        assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-8)


ROW_PATH_ITEMS = ("COUNT(*) AS n, COUNT(y) AS ny, SUM(x) AS s, AVG(x) AS a, VAR_SAMP(x) AS vs, STDDEV_POP(y) AS sp, "
                  "SUM(x) / SUM(w) AS ratio, AVG(x) FILTER (WHERE flag) AS af, COUNT(*) FILTER (WHERE x > $lim) AS cf, "
                  "SUM(CASE WHEN flag THEN x ELSE 0 END) AS sc")


@pytest.mark.parametrize("items", [ROW_PATH_ITEMS, "COUNT(*) AS n"])
@pytest.mark.parametrize("k", [1, 2, 99])   # many rows, one run, none
def test_row_path_equals_summing_path(db, k, items):
    """Small increments are read as rows and summed in numpy: the same moments (NULLs, FILTERs,
    CASE, ratios) and so the same estimates as DuckDB's sums, step by step."""
    prepare(db, "t", by=["k"])
    q = query(items)
    params = {"k": k, "lim": 3.0}
    compiled = compile_query(DuckDBEngine(db), db, q, strategy="prepared")
    rows, sums = (QuerySampler(compiled, DuckDBEngine(db), params, seed=3) for _ in range(2))
    with db.cursor() as cur:
        for p in (0.002, 0.005, 0.01):
            rows.advance(cur, p, matching=1.0)          # tiny: always the row path
            sums.advance(cur, p, matching=None)         # unknown: always the summing path
            assert rows.moments.n == sums.moments.n
            if rows.moments.n == 0:
                continue
            np.testing.assert_allclose(rows.moments.mean, sums.moments.mean, rtol=1e-9, atol=1e-12)
            a, b = rows.result(), sums.result()
            for name in q.features:
                assert (a.values[name] is None) == (b.values[name] is None), name
                if a.values[name] is not None:
                    assert a.values[name] == pytest.approx(b.values[name], rel=1e-9, abs=1e-12), name
                    assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-6, abs=1e-7), name
    assert k == 99 or rows.moments.n > 0



def test_row_path_fetches_float_and_integer_columns_as_they_are(tmp_path):
    """FLOAT and integer arguments are fetched without a CAST (numpy widens them, NULLs kept as
    masks); others keep it. Both give the summing path's estimates."""
    con = duckdb.connect(str(tmp_path / "types.duckdb"))
    con.execute("""CREATE TABLE t AS SELECT i % 2 AS k, (i * 0.37 % 11)::FLOAT AS f,
                   CASE WHEN i % 7 = 0 THEN NULL ELSE (i * 13 % 101)::INTEGER END AS n,
                   (i * 7919 % 100003)::BIGINT AS b, (i % 5)::UBIGINT AS u, (i % 13 / 4)::DECIMAL(6, 2) AS d
                   FROM range(40000) r(i)""")
    prepare(con, "t", by=["k"])
    q = query("AVG(f) AS af, VAR_SAMP(f) AS vf, AVG(n) AS an, SUM(n) AS sn, COUNT(n) AS cn, AVG(b) AS ab, "
              "AVG(u) AS au, AVG(d) AS ad, AVG(f * n) AS afn")
    compiled = compile_query(DuckDBEngine(con), con, q, strategy="prepared")
    assert compiled.layout.native == {"f", "n", "b", "f * n"}, compiled.layout.native
    rows, sums = (QuerySampler(compiled, DuckDBEngine(con), {"k": 1, "lim": 0.0}, seed=3) for _ in range(2))
    with con.cursor() as cur:
        for p in (0.05, 0.1):
            rows.advance(cur, p, matching=1.0)
            sums.advance(cur, p, matching=None)
            a, b = rows.result(), sums.result()
            for name in q.features:
                assert a.values[name] == pytest.approx(b.values[name], rel=1e-9), name
                assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-6, abs=1e-9), name


def test_row_path_moments_do_not_share_the_scratch_matrix(db):
    """The row path builds its matrix in a reused per-thread buffer: moments handed out earlier
    must not change when a later call (of more rows) reuses it."""
    q = query(ROW_PATH_ITEMS)
    layout = compile_query(DuckDBEngine(db), db, q, strategy="prepared").layout
    numeric, present, filters = layout._row_inputs()
    rng = np.random.default_rng(5)

    def fetched(n):
        return ([np.ma.masked_array(rng.normal(size=n), mask=rng.random(n) < 0.1) for _ in numeric]
                + [rng.random(n) < 0.9 for _ in present] + [rng.random(n) < 0.5 for _ in filters])
    first = layout.moments_from_rows(fetched(300))
    kept = (first.mean.copy(), first.comoment.copy())
    second = layout.moments_from_rows(fetched(5000))
    np.testing.assert_array_equal(first.mean, kept[0])
    np.testing.assert_array_equal(first.comoment, kept[1])
    assert second.n == 5000 and not np.allclose(second.mean, first.mean)

def test_row_path_notices_a_stale_copy(tmp_path):
    con = duckdb.connect(str(tmp_path / "stale_rows.duckdb"))
    con.execute("CREATE TABLE t AS SELECT i % 2 AS k, i * 1.0 AS x FROM range(100000) r(i)")
    prepare(con, "t", by=["k"])
    con.execute("INSERT INTO t VALUES (1, 1e9), (3, 1.0)")
    q = query("AVG(x) AS a")
    compiled = compile_query(DuckDBEngine(con), con, q, strategy="auto")
    for k in (1, 3):   # rows in the increment, and none (k=3 is not in the copy at all)
        sampler = QuerySampler(compiled, DuckDBEngine(con), {"k": k, "lim": 0.0}, seed=1)
        with con.cursor() as cur:
            sampler.advance(cur, 0.05, matching=10.0)
        r = sampler.result()
        assert r.exact and "stale" in r.reasons["a"], k
        assert r.values["a"] == pytest.approx(exact_row(con, q, {"k": k, "lim": 0.0})["a"])


def test_sample_estimates_are_close_and_honest(db):
    q = query("AVG(x) AS a, COUNT(*) AS n, MEDIAN(x) AS med")
    truth = exact_row(db, q, {"k": 1, "lim": 0.0})
    for strategy in ("system", "prepared"):
        if strategy == "prepared":
            prepare(db, "t", by=["k"])
        p = 0.05 if strategy == "prepared" else 0.2  # block sampling needs 50 blocks: k=1 spans ~590
        _, sampler = run(db, q, strategy, {"k": 1, "lim": 0.0}, [p])
        r = sampler.result()
        assert not r.exact and r.fraction == p and r.trusted and r.strategy == strategy
        for name in q.features:
            assert r.stderr[name] > 0
            assert abs(r.values[name] - truth[name]) < 5 * r.stderr[name], (strategy, name)


def test_unsupported_aggregates_are_exact_with_a_reason(db):
    q = query("AVG(x) AS a, MIN(x) AS mn, COUNT(DISTINCT g) AS cd, ROUND(AVG(x)) AS r, MEDIAN(x) - AVG(x) AS skew")
    compiled, sampler = run(db, q, "system", {"k": 1, "lim": 0.0}, [0.05])
    r = sampler.result()
    truth = exact_row(db, q, {"k": 1, "lim": 0.0})
    assert r.stderr["a"] > 0
    for name in ("mn", "cd", "r", "skew"):
        assert r.values[name] == pytest.approx(truth[name]) and r.stderr[name] == 0.0
    assert "MIN has no honest sampling interval" in r.reasons["mn"]
    assert "COUNT(DISTINCT" in r.reasons["cd"]
    assert "ROUND" in r.reasons["r"]
    assert "quantile combined" in r.reasons["skew"]
    assert "mn computed exactly: MIN has no honest sampling interval" in compiled.describe()


@pytest.mark.parametrize("items, where, reason", [
    ("AVG(x) AS a", "k = $k AND x > (SELECT AVG(x) FROM t)", "subquery"),
    ("AVG(t.x) AS a", "t.k = $k", None),
])
def test_query_level_reasons(db, items, where, reason):
    compiled = compile_query(DuckDBEngine(db), db, query(items, where), strategy="system")
    assert compiled.sampled == (reason is None)
    if reason:
        assert reason in compiled.note


def test_join_is_computed_exactly(db):
    q = query("AVG(t.x) AS a", "t.k = $k", table="t JOIN (SELECT 1 AS k) AS u USING (k)")
    compiled, sampler = run(db, q, "auto", {"k": 1, "lim": 0.0}, [0.05])
    assert not compiled.sampled and "joins tables" in compiled.note
    r = sampler.result()
    assert r.exact and r.values["a"] == pytest.approx(exact_row(db, q, {"k": 1, "lim": 0.0})["a"])


def test_block_sampling_falls_back_when_rows_are_concentrated(db):
    q = query("AVG(x) AS a")  # k = 2 rows are one run of 5,000 rows: about 3 blocks
    _, sampler = run(db, q, "system", {"k": 2, "lim": 0.0}, [0.05])
    r = sampler.result()
    assert r.exact and "too few for block sampling" in r.reasons["a"]
    assert r.values["a"] == pytest.approx(exact_row(db, q, {"k": 2, "lim": 0.0})["a"])


def test_untrusted_below_minimum_support(db):
    prepare(db, "t", by=["k"])
    q = query("AVG(x) AS a")
    _, sampler = run(db, q, "prepared", {"k": 2, "lim": 0.0}, [0.002])  # ~10 of 5,000 rows
    r = sampler.result()
    assert not r.trusted and r.support < 30 and r.needed_fraction > 0.002
    _, sampler = run(db, q, "prepared", {"k": 2, "lim": 0.0}, [min(1.0, r.needed_fraction * 2)])  # from ~10 rows: noisy
    assert sampler.result().trusted


def test_heavy_tailed_variance_needs_more_rows_than_its_mean(db):
    compiled = compile_query(DuckDBEngine(db), db, query("AVG(x) AS a, VAR_POP(x) AS v, VAR_POP(w) AS vw"),
                             strategy="system")
    need = dict(zip([t.func + ":" + t.arg.sql() for t in compiled.plan.terms], compiled.min_support.values()))
    assert need["var_pop:x"] > need["avg:x"] >= 30
    assert need["var_pop:w"] < need["var_pop:x"]  # w is uniform: light tails


def test_quantile_values_are_capped_by_a_nested_subsample(db, monkeypatch):
    from approxql.sampling import sampler as sampler_module
    monkeypatch.setattr(sampler_module, "VALUE_CAP", 500)
    prepare(db, "t", by=["k"])
    q = query("MEDIAN(x) AS med, AVG(x) AS a")
    _, s = run(db, q, "prepared", {"k": 1, "lim": 0.0}, [0.001, 0.01, 0.05])
    term = next(i for i, t in enumerate(s.c.plan.terms) if t.is_quantile)
    assert sum(len(v) for v in s.values[term]) == 500
    assert 0.001 < s.value_fraction[term] < 0.01  # the 500 values are the rows with the smallest keys
    r = s.result()
    truth = exact_row(db, q, {"k": 1, "lim": 0.0})
    assert abs(r.values["med"] - truth["med"]) < 5 * r.stderr["med"]


def test_prepare_copies_sorts_and_registers(db):
    before = db.execute("SELECT count(*), sum(x) FROM t").fetchall()
    info = prepare(db, "t", by=["k"], seed=5)
    assert db.execute("SELECT count(*), sum(x) FROM t").fetchall() == before  # source untouched
    assert info.source_rows == before[0][0] and info.by == ("k",) and info.seed == 5
    assert "__approxql_rnd" not in [r[0] for r in db.execute("DESCRIBE t").fetchall()]
    keys = db.execute(f"SELECT k, {KEY} FROM {info.copy}").fetchall()
    assert keys == sorted(keys)  # sorted by entity, then key
    assert db.execute(f"SELECT min({KEY}) >= 0, max({KEY}) < 1 FROM {info.copy}").fetchall() == [(True, True)]
    assert db.execute(f"SELECT count(*) FROM {CATALOG} WHERE source = 't'").fetchall() == [(1,)]
    prepare(db, "t", by=["k"], seed=5)  # re-preparing replaces, deterministically
    assert db.execute(f"SELECT k, {KEY} FROM {info.copy}").fetchall() == keys
    assert db.execute(f"SELECT count(*) FROM {CATALOG}").fetchall() == [(1,)]
    # another seed gives an independent key: its 1 % sample overlaps the first one by about 1 %
    first = set(db.execute(f"SELECT x, y, w, g FROM {info.copy} WHERE {KEY} < 0.01").fetchall())
    prepare(db, "t", by=["k"], seed=6)
    second = set(db.execute(f"SELECT x, y, w, g FROM {info.copy} WHERE {KEY} < 0.01").fetchall())
    assert 0.005 < len(first & second) / len(first) < 0.02


def test_prepared_key_is_independent_of_the_data(tmp_path):
    """Groups built from DuckDB's own hash of a multiple of the row number (how benchmark data is
    generated) must each get 1 % of their rows at fraction 1 %: a chi-square near its 15 degrees
    of freedom. The single-hash key measured 1477 here."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE g AS SELECT floor(16 * pow((hash(i * 8) >> 11) * (1.0 / 9007199254740992), 1.5))
                   AS grp FROM range(2000000) t(i)""")
    info = prepare(con, "g", by=["grp"])
    rows = con.execute(f"SELECT grp, count(*), count(*) FILTER (WHERE {KEY} < 0.01) FROM {info.copy} GROUP BY 1").fetchall()
    n = np.array([r[1] for r in rows], float)
    m = np.array([r[2] for r in rows], float)
    chi2 = float(np.sum((m - 0.01 * n) ** 2 / (0.01 * n)))
    assert len(rows) == 16 and chi2 < 40, chi2


@pytest.mark.parametrize("table, by, seed, message", [
    ("nope", ["k"], 0, "no table 'nope'"),
    ("t", ["kk"], 0, "has no column 'kk' (did you mean 'k'?)"),
    ("t", ["k"], -1, "seed must be an integer"),
    ("t", ["k"], 2**22, "seed must be an integer in [0, 2^22)"),
    ("t", ["k", "floor(xx)"], 0, "by expression 'floor(xx)': table 't' has no column 'xx' (did you mean 'x'?)"),
    ("t", ["k", "floor(x); DROP TABLE t"], 0, "must be a plain expression of the table's columns"),
    ("t", ["k", "(SELECT max(x) FROM t)"], 0, "must be a plain expression"),
    ("t", ["k", "sum(x)"], 0, "must be a plain expression"),
    ("t", ["k", "row_number() OVER ()"], 0, "must be a plain expression"),
    ("t", ["k", "floor(x + random())"], 0, "is not deterministic"),
    ("t", ["k", "floor(1.5)"], 0, "reads no column"),
    ("t", ["k", "floor(x"], 0, "is not valid SQL"),
])
def test_prepare_bad_arguments(db, table, by, seed, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        prepare(db, table, by, seed=seed)


def test_prepare_by_a_time_bucket(tmp_path):
    """A time window inside an entity: the copy sorted by entity, hour and key gives the same
    exact answers, and a sample of the window reads a fraction of the window's rows only."""
    con = duckdb.connect(str(tmp_path / "bucket.duckdb"))
    con.execute("""CREATE TABLE ev AS SELECT i % 4 AS k, TIMESTAMP '2024-01-01' + INTERVAL (i // 4) SECOND AS ts,
                   (hash(i) % 1000) / 10.0 AS x FROM range(2000000) r(i)""")
    prepared = prepare(con, "ev", by=["k", "date_trunc('hour', ts)"])
    assert prepared.by == ("k", "date_trunc('hour', ts)")
    order = con.execute(f"""SELECT bool_and(ok) FROM (SELECT (k, date_trunc('hour', ts), {KEY}) >=
                            lag((k, date_trunc('hour', ts), {KEY})) OVER (ORDER BY rowid) OR rowid = 0 AS ok
                            FROM {prepared.table(0)})""").fetchall()[0][0]
    assert order
    text = ("-- name: t\n-- model: m.onnx\n-- task: regression\n-- params: k INTEGER, at TIMESTAMP\n-- inputs: a\n"
            "SELECT AVG(x) AS a, COUNT(*) AS n FROM ev WHERE k = $k AND ts >= $at - INTERVAL 1 HOUR AND ts < $at;")
    q = parse_pipeline(text).queries[0]
    params = {"k": 2, "at": dt.datetime(2024, 1, 3, 10, 30)}
    truth = exact_row(con, q, params)
    _, sampler = run(con, q, "prepared", params, [0.05, 1.0])
    assert sampler.result().values["a"] == pytest.approx(float(truth["a"]), rel=1e-12)
    _, sampler = run(con, q, "prepared", params, [0.05])
    r = sampler.result()
    assert abs(sampler.moments.n - 0.05 * truth["n"]) < 5 * (0.05 * truth["n"]) ** 0.5   # 5 % of the window
    assert abs(r.values["n"] - truth["n"]) < 5 * r.stderr["n"]


def test_cli_prepare_takes_a_time_bucket(tmp_path):
    from approxql.cli import main
    path = tmp_path / "cli_bucket.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE ev AS SELECT i % 4 AS k, TIMESTAMP '2024-01-01' + INTERVAL (i) MINUTE AS ts FROM range(10000) r(i)")
    assert main(["prepare", "ev", "--db", str(path), "--by", "k, date_trunc('hour', ts)"]) == 0
    with duckdb.connect(str(path)) as con:
        assert con.execute(f"SELECT by_columns FROM {CATALOG}").fetchall()[0][0] == ["k", "date_trunc('hour', ts)"]


def test_stale_prepared_copy_is_never_used(tmp_path):
    con = duckdb.connect(str(tmp_path / "stale.duckdb"))
    con.execute("CREATE TABLE t AS SELECT i % 2 AS k, i * 1.0 AS x FROM range(100000) r(i)")
    prepare(con, "t", by=["k"])
    q = query("AVG(x) AS a")
    con.execute("INSERT INTO t VALUES (1, 1e9)")  # the source changed after prepare
    _, sampler = run(con, q, "auto", {"k": 1, "lim": 0.0}, [0.05])
    r = sampler.result()
    assert r.exact and "stale" in r.reasons["a"] and "approxql prepare again" in r.reasons["a"]
    assert r.values["a"] == pytest.approx(exact_row(con, q, {"k": 1, "lim": 0.0})["a"])  # includes the new row


def test_currency_check_counts_the_source_against_the_catalog(tmp_path, monkeypatch):
    """Reads by key of a view over several slices compare the source's rows with the count the
    catalog wrote beside the copy: an append makes that false, a new prepare true again, and a
    copy the catalog no longer lists is never current. Reads of tables named for their prepare
    (by position, or by key of a copy's only slice) check the source's count alone: a new
    prepare drops those tables instead."""
    from approxql.sampling import catalog
    from approxql.sampling.prepared import PreparedSource
    con = duckdb.connect(str(tmp_path / "check.duckdb"))
    con.execute("CREATE TABLE t AS SELECT i % 2 AS k, i * 1.0 AS x FROM range(10000) r(i)")
    one = prepare(con, "t", by=["k"])
    by_key, by_position = PreparedSource(lookup(con, "t")), PreparedSource(lookup(con, "t"), positions=True)
    assert one.slices == 1 and CATALOG not in by_key.current_sql() + by_position.current_sql()

    def current(source):
        return con.execute(f"SELECT {source.current_sql()}").fetchall()[0][0]

    def exists(table):
        return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0] == 1
    assert current(by_key) is True and current(by_position) is True and exists(one.table(0))
    con.execute("INSERT INTO t VALUES (1, 2.0)")
    assert current(by_key) is False and current(by_position) is False
    monkeypatch.setattr(catalog, "SLICE_ROWS", 6000)
    several = prepare(con, "t", by=["k"])
    assert several.slices == 2 and not exists(one.table(0)) and exists(several.table(1))
    by_key = PreparedSource(lookup(con, "t"))
    assert CATALOG in by_key.current_sql() and current(by_key) is True
    con.execute("INSERT INTO t VALUES (1, 2.0)")
    assert current(by_key) is False
    prepare(con, "t", by=["k"])
    assert current(by_key) is True
    con.execute("DELETE FROM approxql_catalog WHERE source = 't'")
    assert current(by_key) is False


@pytest.mark.parametrize("where,slices", [("k = $k", 1), ("k = $k AND x >= $lim", 1), ("x >= $lim", 1),
                                          ("x >= $lim", 2)])
def test_a_dropped_catalog_sends_reads_of_a_view_to_exact(tmp_path, monkeypatch, where, slices):
    """Reads by key of a view over several slices check the catalog: with the catalog gone, a
    pipeline loaded before computes exactly and says so, rather than failing every request.
    Reads of tables named for their prepare (by position, or of a copy's only slice) check the
    source's count only and go on sampling their copy, which is still current."""
    from approxql.sampling import catalog
    monkeypatch.setattr(catalog, "SLICE_ROWS", 15000 if slices == 2 else 10**9)
    con = duckdb.connect(str(tmp_path / "nocat.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 2)::INTEGER AS k, i * 1.0 AS x FROM range(20000) r(i)")
    assert prepare(con, "t", by=["k"]).slices == slices
    q = query("AVG(x) AS a", where=where)
    compiled = compile_query(DuckDBEngine(con), con, q, strategy="prepared")
    assert (compiled.positions is not None) == where.startswith("k")
    con.execute(f"DROP TABLE {CATALOG}")
    one = QuerySampler(compiled, DuckDBEngine(con), {"k": 1, "lim": 0.0}, seed=1)
    many = [QuerySampler(compiled, DuckDBEngine(con), {"k": 1, "lim": 0.0}, seed=s) for s in range(BATCH_MIN)]
    with con.cursor() as cur:
        one.advance(cur, 0.05, matching=1.0)
        advance_many(DuckDBEngine(con), cur, [(s, 0.05) for s in many], {"k": pa.int32(), "lim": pa.float64()})
    exact = exact_row(con, q, {"k": 1, "lim": 0.0})["a"]
    for sampler in [one, *many]:
        r = sampler.result()
        if slices == 1:
            assert not r.exact and 0 < sampler.moments.n <= 1100 and r.values["a"] == pytest.approx(exact, rel=0.1)
        else:
            assert r.exact and "no longer lists" in r.reasons["a"]
            assert r.values["a"] == pytest.approx(exact)


def test_a_pinned_group_is_read_by_position(db):
    """A query that pins every ``by`` column reads row-id ranges of its group's run on the copy:
    each fraction is a whole number of the group's rows and increments add up, so a COUNT of the
    group comes out exact."""
    prepare(db, "t", by=["k"])
    q = query("COUNT(*) AS n, AVG(x) AS a")
    compiled = compile_query(DuckDBEngine(db), db, q, strategy="prepared")
    first, rows = db.execute(f"SELECT min(rowid), count(*) FROM {lookup(db, 't').table(0)} WHERE k = 1").fetchall()[0]
    assert compiled.positions_for({"k": 1}) == (first, rows, 0) and compiled.positions_for({"k": 99}) is None
    sampler = QuerySampler(compiled, DuckDBEngine(db), {"k": 1, "lim": 0.0}, seed=3)
    with db.cursor() as cur:
        for p in (0.01, 0.013, 0.05):
            sampler.advance(cur, p)
            assert sampler.moments.n == round(p * rows) and sampler.fraction == round(p * rows) / rows
        sampler.advance(cur, sampler.fraction)          # nothing more asked: nothing more read
        assert sampler.moments.n == round(0.05 * rows)
    assert sampler.result().values["n"] == pytest.approx(rows, rel=1e-12)
    assert compile_query(DuckDBEngine(db), db, query("MEDIAN(x) AS m"), strategy="prepared").positions is None


def test_a_read_by_position_drops_the_pins_of_its_group(db):
    """``k = $k``: the group's rows are exactly the rows the pin matches, so a read by position
    filters only what else the WHERE says (nothing, and binds no $k, when that is all). A pin on
    a floating column stays, and so does a second pin of the group's column to another parameter;
    a request whose group is NULL (which matches no row) reads by key with the whole WHERE."""
    from approxql.sampling.support import beyond_group
    prepare(db, "t", by=["k"])
    engine = DuckDBEngine(db)
    plain = compile_query(engine, db, query("COUNT(*) AS n, AVG(x) AS a"), strategy="prepared")
    assert plain.source.group_where == "" and plain.read_params(True) == () and plain.read_params(False) == ("k",)
    filtered = compile_query(engine, db, query("COUNT(*) AS n, AVG(x) AS a", where="k = $k AND x > $lim"),
                             strategy="prepared")
    assert filtered.positions is not None and filtered.read_params(True) == ("lim",)
    assert "lim" in filtered.source.group_where and "k" not in filtered.source.group_where.replace("lim", "")
    def named(t):   # what the declared type of $k is called in DuckDB
        return {"INT": "INTEGER"}.get(t.sql("duckdb"))
    twice = query(where="k = $k AND k = $lim")
    kept = beyond_group(twice, ['"k"'], ("k",), {'"k"': "INTEGER"}, named)
    assert [t.sql("duckdb") for t in kept] == ["k = CAST($lim AS DOUBLE)"]   # the lookup's pin goes, the other stays
    assert beyond_group(twice, ['"k"'], ("lim",), {'"k"': "INTEGER"}, named) is None   # $lim: declared DOUBLE
    assert beyond_group(query(), ['"k"'], ("k",), {'"k"': "DOUBLE"}, named) is None   # -0.0, NaN: Python's = is not DuckDB's
    assert beyond_group(query(), ['"k"'], ("k",), {'"k"': "INTEGER"}, named) == []
    rows = plain.positions_for({"k": 2})[1]
    with db.cursor() as cur:
        read = []
        for compiled in (plain, filtered):   # the same positions, with and without the filter
            sampler = QuerySampler(compiled, engine, {"k": 2, "lim": -1e9}, seed=5)
            sampler.advance(cur, 0.2, matching=1.0)
            assert sampler.moments.n == round(0.2 * rows)
            read.append(sampler.result().values["a"])
        assert read[0] == pytest.approx(read[1], rel=1e-12)
        nothing = QuerySampler(plain, engine, {"k": None, "lim": 0.0}, seed=5)
        assert nothing.group is None
        nothing.advance(cur, 0.2)
        assert nothing.result().values["n"] == 0


def test_a_read_by_position_without_its_pins_reads_the_rows_the_whole_where_would(db):
    """The pins dropped, the rest of the WHERE still filters: a read by position of group 2 with
    ``x > $lim`` finds the very rows (count and sum) that its row-id range holds under the whole WHERE."""
    from approxql.sampling.prepared import ranges_of
    prepare(db, "t", by=["k"])
    engine = DuckDBEngine(db)
    q = query("COUNT(*) AS n, SUM(x) AS s", where="k = $k AND x > $lim")
    compiled = compile_query(engine, db, q, strategy="prepared")
    params = {"k": 2, "lim": 1.0}
    group = compiled.positions_for(params)
    sampler = QuerySampler(compiled, engine, params, seed=7)
    with db.cursor() as cur:
        sampler.advance(cur, 0.3, matching=1.0)
        r = ranges_of(0.0, sampler.fraction, 7, group)
        n, total = cur.execute(
            f"SELECT count(*), sum(x) FROM {compiled.source.prepared.table(group[2])} WHERE k = 2 AND x > 1.0 "
            "AND (rowid >= $r1 AND rowid < $s1 OR rowid >= $r2 AND rowid < $s2)",
            {"r1": r["__r1"], "s1": r["__s1"], "r2": r["__r2"], "s2": r["__s2"]}).fetchall()[0]
    assert 0 < n < group[1] and sampler.moments.n == n
    assert sampler.result().values["s"] == pytest.approx(total / sampler.fraction, rel=1e-9)


@pytest.mark.parametrize("declared, plain", [("DECIMAL(10,1)", False), ("DECIMAL(10,2)", True)])
def test_a_pin_whose_cast_rounds_keeps_its_where(tmp_path, declared, plain):
    """A parameter declared narrower than its column: DuckDB compares the column with the rounded
    value (1.25 as DECIMAL(10,1) is 1.3) where the lookup finds group 1.25. Its WHERE stays, so
    the read by position of the wrong group finds no row instead of another group's."""
    con = duckdb.connect(str(tmp_path / "dec.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (CASE WHEN i % 2 = 0 THEN 1.25 ELSE 1.30 END)::DECIMAL(10,2) AS k, "
                "(i % 2 + 1.0 + (i % 7) / 100.0) AS x FROM range(4000) r(i)")
    prepare(con, "t", by=["k"])
    text = HEADER.replace("k INTEGER", f"k {declared}").format(first="n")
    q = parse_pipeline(text + "SELECT COUNT(*) AS n, AVG(x) AS a FROM t WHERE k = $k;").queries[0]
    engine = DuckDBEngine(con)
    compiled = compile_query(engine, con, q, strategy="prepared")
    assert compiled.positions is not None and (compiled.source.group_where == "") is plain
    params = {"k": __import__("decimal").Decimal("1.25"), "lim": 0.0}
    sampler = QuerySampler(compiled, engine, params, seed=2)
    with con.cursor() as cur:
        sampler.advance(cur, 0.1, matching=1.0)
    exact = exact_row(con, q, params)
    if plain:
        assert sampler.result().values["a"] == pytest.approx(exact["a"], rel=0.05)
    else:
        assert exact["n"] == 2000 and sampler.moments.n == 0   # group 1.25's positions, filtered to k = 1.3


def test_a_read_by_position_without_where_checks_the_copy_every_time(tmp_path):
    """A copy prepared again between two reads of one request would hand the second read another
    group's rows at the indexed positions: each such read checks the copy."""
    con = duckdb.connect(str(tmp_path / "again.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 3)::INTEGER AS k, i * 1.0 AS x FROM range(30000) r(i)")
    prepare(con, "t", by=["k"])
    engine = DuckDBEngine(con)
    compiled = compile_query(engine, con, query("COUNT(*) AS n, AVG(x) AS a"), strategy="prepared")
    assert compiled.source.group_where == ""
    sampler = QuerySampler(compiled, engine, {"k": 1, "lim": 0.0}, seed=4)
    with con.cursor() as cur:
        sampler.advance(cur, 0.01, matching=1.0)
        prepare(con, "t", by=["k"], seed=9)
        sampler.advance(cur, 0.05, matching=1.0)
    r = sampler.result()
    assert r.exact and "prepared again" in r.reasons["a"]
    assert r.values["a"] == pytest.approx(exact_row(con, query("COUNT(*) AS n, AVG(x) AS a"), {"k": 1})["a"])
    # and so does a batch, on its later rounds too
    compiled = compile_query(engine, con, query("COUNT(*) AS n, AVG(x) AS a"), strategy="prepared")
    many = [QuerySampler(compiled, engine, {"k": 1, "lim": 0.0}, seed=s) for s in range(BATCH_MIN)]
    types = {"k": pa.int32(), "lim": pa.float64()}
    with con.cursor() as cur:
        advance_many(engine, cur, [(s, 0.01) for s in many], types)
        assert not any(s.result().exact for s in many)
        prepare(con, "t", by=["k"], seed=11)
        advance_many(engine, cur, [(s, 0.05) for s in many], types)
    for s in many:
        assert s.result().exact and "prepared again" in s.result().reasons["a"]
        assert s.result().values["a"] == pytest.approx(r.values["a"])


@pytest.mark.parametrize("seed", range(12))
def test_only_a_read_that_wraps_round_reads_two_ranges(db, seed):
    """A read from the request's offset past the end of its group (or of the key circle) goes
    on at the start: two ranges. Any other carries one, and each reads its fraction's rows."""
    from approxql.sampling.prepared import offset_of
    prepare(db, "t", by=["k"])
    engine = DuckDBEngine(db)
    compiled = compile_query(engine, db, query("COUNT(*) AS n"), strategy="prepared")
    start, rows, _ = compiled.positions_for({"k": 2})
    u, p = offset_of(seed), 0.4
    stmt = compiled.source.rows_sql(compiled.plan, compiled.layout, 0.0, p, seed=seed, group=(start, rows, 0))
    assert ("__r2" in stmt.extra_params) == (int(u * rows) + round(p * rows) > rows)
    stmt = compiled.source.rows_sql(compiled.plan, compiled.layout, 0.0, p, seed=seed)
    assert ("__a2" in stmt.extra_params) == (u + p > 1.0)
    sampler = QuerySampler(compiled, engine, {"k": 2, "lim": 0.0}, seed=seed)
    with db.cursor() as cur:
        sampler.advance(cur, p, matching=1.0)
    assert sampler.moments.n == round(p * rows)


def test_a_batched_read_by_position_reads_each_row_once(tmp_path):
    """A read that wraps round a small group touches one 2,048-row bucket from both of its
    ranges: the batched statement must still read each row once, as one request's does."""
    con = duckdb.connect(str(tmp_path / "small.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 40)::INTEGER AS k, i * 0.37 % 11 AS x FROM range(60000) r(i)")
    prepare(con, "t", by=["k"])
    compiled = compile_query(DuckDBEngine(con), con, query("COUNT(*) AS n, AVG(x) AS a"), strategy="prepared")
    assert compiled.positions_for({"k": 0})[1] == 1500

    def samplers():
        return [QuerySampler(compiled, DuckDBEngine(con), {"k": k, "lim": 0.0}, seed=k) for k in range(40)]
    alone, batched = samplers(), samplers()
    assert len(batched) >= BATCH_MIN
    with con.cursor() as cur:
        for s in alone:
            s.advance(cur, 0.9)
        advance_many(DuckDBEngine(con), cur, [(s, 0.9) for s in batched], {"k": pa.int32()})
    for a, b in zip(alone, batched):
        assert a.moments.n == b.moments.n == 1350
        np.testing.assert_allclose(a.moments.mean, b.moments.mean, rtol=1e-12)


def test_reads_by_position_cover_at_the_nominal_rate(db):
    """Positions [a, b) of a group's run in key order are a simple random sample: 95 % intervals of
    AVG from 300 requests' own offsets (3,000 of 300,000 rows each) cover the truth about 95 % of
    the time, and SUM's, with its Bernoulli variance, at least as often."""
    prepare(db, "t", by=["k"])
    q = query("AVG(x) AS a, SUM(x) AS s")
    compiled = compile_query(DuckDBEngine(db), db, q, strategy="prepared")
    truth = exact_row(db, q, {"k": 1})
    covered = {"a": 0, "s": 0}
    with db.cursor() as cur:
        for seed in range(300):
            sampler = QuerySampler(compiled, DuckDBEngine(db), {"k": 1, "lim": 0.0}, seed=seed)
            sampler.advance(cur, 0.01)
            r = sampler.result()
            for name in covered:
                lo, hi = r.intervals[name]
                covered[name] += lo <= truth[name] <= hi
    assert 0.92 <= covered["a"] / 300 <= 0.98, covered
    assert covered["s"] / 300 >= 0.92, covered


def test_a_copy_prepared_again_after_load_is_not_read_by_position(tmp_path):
    """Positions were indexed on the copy a pipeline loaded. A later prepare can move a group's run
    (here the source grew, so counts agree again): the request computes exactly and says why."""
    con = duckdb.connect(str(tmp_path / "again.duckdb"))
    con.execute("CREATE TABLE t AS SELECT i % 2 AS k, i * 1.0 AS x FROM range(100000) r(i)")
    prepare(con, "t", by=["k"])
    q = query("AVG(x) AS a")
    compiled = compile_query(DuckDBEngine(con), con, q)
    assert compiled.positions_for({"k": 1}) == (50000, 50000, 0)
    con.execute("INSERT INTO t SELECT 0, 1e9 FROM range(1000)")   # k = 0 grows: k = 1's run moves
    prepare(con, "t", by=["k"])
    sampler = QuerySampler(compiled, DuckDBEngine(con), {"k": 1, "lim": 0.0}, seed=3)
    with con.cursor() as cur:
        sampler.advance(cur, 0.05)
    r = sampler.result()
    assert r.exact and "prepared again after this pipeline was loaded" in r.reasons["a"], r.reasons
    assert r.values["a"] == pytest.approx(exact_row(con, q, {"k": 1})["a"])
    fresh = compile_query(DuckDBEngine(con), con, q)             # loaded again: read by position
    assert fresh.positions_for({"k": 1}) == (51000, 50000, 0)
    sampler = QuerySampler(fresh, DuckDBEngine(con), {"k": 1, "lim": 0.0}, seed=3)
    with con.cursor() as cur:
        sampler.advance(cur, 0.05)
    assert not sampler.result().exact and sampler.moments.n == 2500


def test_strategy_option(db):
    with pytest.raises(OptionError, match="strategy must be one of auto, prepared, system, exact"):
        compile_query(DuckDBEngine(db), db, query("AVG(x) AS a"), strategy="magic")
    db.execute("CREATE OR REPLACE TABLE u AS SELECT 1 AS k, 1.0 AS x")
    with pytest.raises(OptionError, match="needs a prepared copy of 'u'"):
        compile_query(DuckDBEngine(db), db, query("AVG(x) AS a", table="u"), strategy="prepared")


def test_pipeline_explains_sampling(tmp_path, db_path, linear_model):
    from approxql.training import export_onnx
    from conftest import HEADER as SALES_HEADER, BODY
    export_onnx(linear_model, 3, tmp_path / "model.onnx", "regression")
    path = tmp_path / "p.sql"
    path.write_text(SALES_HEADER + BODY.replace("COUNT(*) AS n_sales", "COUNT(DISTINCT amount) AS n_sales"))
    with duckdb.connect(str(db_path), read_only=True) as con:
        text = approxql.load_pipeline(path, con=con).explain_sampling()
    assert "q1 (line 6): sampled with TABLESAMPLE SYSTEM on sales" in text
    assert "n_sales computed exactly: COUNT(DISTINCT ...) has no honest sampling interval" in text
    assert "q2 (line 10): request query, exact and cheap" in text


def test_aliases_views_and_qualified_tables(db):
    db.execute("CREATE OR REPLACE VIEW tv AS SELECT * FROM t")
    params = {"k": 1, "lim": 0.0}
    cases = {"t AS f": ("AVG(f.x) AS a", "f.k = $k", True), "tv": ("AVG(x) AS a", "k = $k", False),
             "main.t": ("AVG(x) AS a", "k = $k", False)}
    for table, (items, where, sampled) in cases.items():
        q = query(items, where, table=table)
        compiled, sampler = run(db, q, "system", params, [0.2])
        r = sampler.result()
        assert compiled.sampled == sampled, (table, compiled.note)
        truth = exact_row(db, q, params)["a"]
        assert abs(r.values["a"] - truth) <= 5 * r.stderr["a"] if sampled else r.values["a"] == pytest.approx(truth)


def test_block_sampled_quantile_with_blocks_of_nulls(tmp_path):
    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("CREATE TABLE t AS SELECT 1 AS k, CASE WHEN i % 8192 < 2048 THEN NULL ELSE i % 997 END AS x "
                "FROM range(2000000) r(i)")  # every fourth block has no value at all
    q = query("MEDIAN(x) AS med")
    _, sampler = run(con, q, "system", {"k": 1, "lim": 0.0}, [0.2])
    r = sampler.result()
    assert abs(r.values["med"] - exact_row(con, q, {"k": 1, "lim": 0.0})["med"]) <= 5 * max(r.stderr["med"], 1.0)


def test_a_cast_to_an_integer_is_computed_exactly(db):
    q = query("CAST(AVG(x) AS INTEGER) AS ai, CAST(AVG(x) AS DOUBLE) AS ad")
    _, sampler = run(db, q, "system", {"k": 1, "lim": 0.0}, [0.2])
    r = sampler.result()
    assert r.stderr["ai"] == 0.0 and "not to a floating-point type" in r.reasons["ai"]
    assert r.values["ai"] == exact_row(db, q, {"k": 1, "lim": 0.0})["ai"] and r.stderr["ad"] > 0


def test_ratio_keeps_its_covariance_in_a_wide_query(db):
    """Past 8 contribution columns only products within a feature are summed: a ratio's
    numerator and denominator must still be (its standard error must not change)."""
    prepare(db, "t", by=["k"])
    narrow = query("SUM(x) / SUM(w) AS r")
    wide = query("SUM(x) / SUM(w) AS r, AVG(y) AS a1, VAR_POP(y) AS a2, AVG(g) AS a3, COUNT(y) AS a4")
    params = {"k": 1, "lim": 0.0}
    se = [run(db, q, "prepared", params, [0.05])[1].result().stderr["r"] for q in (narrow, wide)]
    compiled = compile_query(DuckDBEngine(db), db, wide, strategy="prepared")
    assert len(compiled.layout.columns) - 1 > 8
    assert se[1] == pytest.approx(se[0], rel=1e-6)


@pytest.mark.parametrize("strategy", ["system", "prepared"])
def test_bare_term_groups_in_one_pass_equal_each_group_apart(db, strategy):
    """Groups of bare moment terms are estimated in one pass: the same values and covariances as
    each group on its own columns, and none between groups."""
    if strategy == "prepared":
        prepare(db, "t", by=["k"])
    q = query("AVG(x) AS a, STDDEV_SAMP(x) AS s, AVG(y) AS ay, VAR_POP(y) AS vp, SUM(w) AS sw, "
              "COUNT(*) AS n, AVG(g) AS ag, AVG(x) FILTER (WHERE flag) AS af")
    _, sampler = run(db, q, strategy, {"k": 1, "lim": 0.0}, [0.05 if strategy == "prepared" else 0.2])
    assert len(sampler.c.groups) > 1
    (every, vals, cov), = sampler._estimate_groups()
    at = {i: a for a, i in enumerate(every)}
    for group, cols in sampler.c.groups:
        v, c = sampler._estimate_group(group, cols)
        pos = [at[i] for i in group]
        np.testing.assert_allclose(vals[pos], v, rtol=1e-12)
        np.testing.assert_allclose(cov[np.ix_(pos, pos)], c, rtol=1e-9, atol=1e-300)
        others = [a for a in range(len(every)) if a not in pos]
        assert not cov[np.ix_(pos, others)].any()


@pytest.mark.parametrize("strategy", ["system", "prepared"])
def test_closed_form_jacobian_matches_finite_differences(db, strategy, monkeypatch):
    """Bare moment terms (COUNT, SUM, AVG, VAR, STDDEV) take their derivatives in closed form;
    every value, standard error and covariance must equal what finite differences give."""
    from approxql.sampling import sampler as sampler_module
    if strategy == "prepared":
        prepare(db, "t", by=["k"])
    q = query()
    p = 0.05 if strategy == "prepared" else 0.2
    _, closed = run(db, q, strategy, {"k": 1, "lim": 1.5}, [p])
    fast = closed.result()
    monkeypatch.setattr(sampler_module, "_bare_term_jacobian", lambda *a: None)
    _, numeric = run(db, q, strategy, {"k": 1, "lim": 1.5}, [p])
    slow = numeric.result()
    assert fast.values.keys() == slow.values.keys()
    for name in fast.values:
        assert fast.values[name] == pytest.approx(slow.values[name], rel=1e-12, nan_ok=True), name
        assert fast.stderr[name] == pytest.approx(slow.stderr[name], rel=1e-5, abs=1e-12, nan_ok=True), name
    assert np.allclose(fast.cov, slow.cov, rtol=1e-5, atol=1e-12, equal_nan=True)


def _check_in_child(path: str, out) -> None:
    from approxql.sampling.prepared import PreparedSource
    from approxql.sampling.currency import check_current
    con = duckdb.connect(path)
    try:
        out.put(check_current(DuckDBEngine(con), PreparedSource(lookup(con, "t")).current_sql()).result(timeout=20))
    except Exception as e:   # a timeout: the child's pool had no thread
        out.put(repr(e))


def test_the_currency_check_runs_in_a_forked_child(tmp_path):
    """The check's worker pool must not be inherited by a fork (its threads are not): a child
    that submitted to the parent's pool would wait forever."""
    import multiprocessing
    from approxql.sampling.prepared import PreparedSource
    from approxql.sampling.currency import check_current
    path = str(tmp_path / "fork.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE TABLE t AS SELECT i % 3 AS k, i * 1.0 AS x FROM range(3000) r(i)")
    prepare(con, "t", by=["k"])
    assert check_current(DuckDBEngine(con), PreparedSource(lookup(con, "t")).current_sql()).result(timeout=20) is True
    con.close()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_check_in_child, args=(path, out))
    child.start()
    child.join(60)
    assert out.get(timeout=5) is True


class _Logged:
    """A cursor that records each statement it runs."""

    def __init__(self, cur, log):
        self._cur, self._log = cur, log

    def execute(self, sql, *args):
        self._log.append(sql)
        self._cur.execute(sql, *args)
        return self

    def __getattr__(self, name):
        return getattr(self._cur, name)


def test_the_currency_check_runs_first_on_the_requests_cursor_and_a_stale_copy_is_not_read(tmp_path):
    """The check sees no later state than the read: before a summing read, on the same cursor
    (when it fails, the copy is not read at all); inside a read of rows, as a column of the same
    statement (when it fails, the rows are dropped). Either way a stale copy gives way to exact."""
    con = duckdb.connect(str(tmp_path / "order.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 2)::INTEGER AS k, i * 1.0 AS x FROM range(20000) r(i)")
    prepare(con, "t", by=["k"])
    compiled = compile_query(DuckDBEngine(con), con, query("AVG(x) AS a", where="k = $k"), strategy="prepared")
    check = compiled.source.current_sql()
    for stale in (False, True):
        if stale:
            con.execute("INSERT INTO t VALUES (1, 5.0)")
        for matching in (None, 1.0):            # unknown: summed by DuckDB; a few rows: read as rows
            log: list[str] = []
            sampler = QuerySampler(compiled, DuckDBEngine(con), {"k": 1}, seed=1)
            with con.cursor() as cur:
                sampler.advance(_Logged(cur, log), 0.05, matching=matching)
            reads = [sql for sql in log if "t__approxql_sample" in sql]
            if matching is None:
                assert log[0] == f"SELECT {check}"
                assert (reads == []) if stale else (len(reads) == 1), log
            else:
                assert len(reads) == 1 and f"({check}) AS __aq_current" in reads[0] and log[0] == reads[0], log
            assert sampler.result().exact == stale
        log = []
        sampler = QuerySampler(compiled, DuckDBEngine(con), {"k": 7}, seed=1)   # no rows: no column to tell
        with con.cursor() as cur:
            sampler.advance(_Logged(cur, log), 0.05, matching=1.0)
        # so the check runs on its own, then (if current) the read again: no check after a read
        assert log[1] == f"SELECT {check}" and len(log) == (2 if stale else 3), log
        assert sampler.result().exact == stale


@pytest.mark.parametrize("stale", [False, True])
def test_on_a_read_only_database_the_first_check_settles_currency(tmp_path, stale):
    """No one can write a database this process opened read-only, so the first request's check
    holds for the rest: current, later requests read without it; stale, they go exact unread.
    Opened for writing, every request checks."""
    path = str(tmp_path / "frozen.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE TABLE t AS SELECT (i % 2)::INTEGER AS k, i * 1.0 AS x FROM range(20000) r(i)")
    prepare(con, "t", by=["k"])
    if stale:
        con.execute("INSERT INTO t VALUES (1, 5.0)")
    con.close()
    q = query("AVG(x) AS a", where="k = $k")
    for read_only in (True, False):
        con = duckdb.connect(path, read_only=read_only)
        compiled = compile_query(DuckDBEngine(con), con, q, strategy="prepared")
        check = compiled.source.current_sql()
        verdict = compiled.source.verdict
        assert verdict.frozen is read_only and verdict.settled is None
        checks = []
        for i, (k, matching) in enumerate([(1, None), (0, None), (1, 1.0), (0, 1.0)]):
            log: list[str] = []
            sampler = QuerySampler(compiled, DuckDBEngine(con), {"k": k}, seed=i)
            with con.cursor() as cur:
                sampler.advance(_Logged(cur, log), 0.05, matching=matching)
            checks.append(sum(check in sql for sql in log))
            reads = [sql for sql in log if "t__approxql_sample" in sql and f"{check}) AS" not in sql]
            assert sampler.result().exact == stale and (reads == [] if stale else len(reads) <= 1), log
            if stale:
                assert "stale" in sampler.result().reasons["a"]
            else:
                assert sampler.result().values["a"] == pytest.approx(exact_row(con, q, {"k": k})["a"], rel=0.05)
        if read_only:
            assert checks == [1, 0, 0, 0] and verdict.settled is (not stale)
        else:
            assert checks == [1, 1, 1, 1] and verdict.settled is None
        con.close()


def test_duckdb_lets_no_one_write_a_database_held_open_read_only(tmp_path):
    """What the settled check rests on: while a read-only connection is open, neither this process
    nor another can open the file for writing (if a DuckDB release allowed it, this fails)."""
    import subprocess
    import sys
    path = str(tmp_path / "held.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    con.close()
    held = duckdb.connect(path, read_only=True)
    with pytest.raises(duckdb.ConnectionException):
        duckdb.connect(path)
    other = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({path!r}).execute('INSERT INTO t VALUES (2)')"],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "lock" in other.stderr.lower(), other.stderr[-300:]
    assert held.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    held.close()
