"""A copy sorted by ``by`` is slice tables under a view, several where it is larger than SLICE_ROWS:
reads by position go to their group's slice, everything else reads the view, and every read sees
the very rows (and so the very estimates) it would on a copy that is one slice."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from approxql.engines import DuckDBEngine
from approxql.sampling import QuerySampler, compile_query, prepare
from approxql.sampling import catalog
from approxql.sampling.batch import BATCH_MIN, advance_many
from approxql.sampling.catalog import lookup, slice_prefix
from approxql.pipeline_file import parse_pipeline
from test_sampling import exact_row

HEADER = "-- name: t\n-- model: m.onnx\n-- task: regression\n-- params: k INTEGER, b INTEGER, lim DOUBLE\n-- inputs: a\n"

SIZES = [1200, 800, 7000, 500, 2600, 900, 1500, 400, 3100, 1000]   # rows of k = 0..9 (k = 2 alone exceeds a slice)


def query(select: str, where: str):
    return parse_pipeline(HEADER + f"SELECT {select} FROM t WHERE {where};").queries[0]


def database(path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(f"""CREATE TABLE t AS SELECT k::INTEGER AS k, (hash(i) % 3)::INTEGER AS b,
                           exp(2 * ((hash(i * 7 + 1) % 1000000) / 1000000.0)) AS x
                    FROM (SELECT unnest({SIZES}) AS n, unnest(range({len(SIZES)})) AS k), range(n) r(i)""")
    return con


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """The same table prepared as one slice and as slices of at most 3,000 rows (same seed)."""
    whole = database(tmp_path / "whole.duckdb")
    prepare(whole, "t", by=["k", "b"], seed=5)
    monkeypatch.setattr(catalog, "SLICE_ROWS", 3000)
    sliced = database(tmp_path / "sliced.duckdb")
    prepare(sliced, "t", by=["k", "b"], seed=5)
    return whole, sliced


def test_a_large_copy_is_slices_of_whole_runs_under_a_view(pair):
    whole, sliced = pair
    p = lookup(sliced.cursor(), "t")
    assert lookup(whole.cursor(), "t").slices == 1 and p.slices >= 2
    assert sliced.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [p.copy]).fetchall()[0][0] == 1
    ks = [sorted({r[0] for r in sliced.execute(f"SELECT DISTINCT k FROM {p.table(i)}").fetchall()}) for i in range(p.slices)]
    rows = [sliced.execute(f"SELECT count(*) FROM {p.table(i)}").fetchall()[0][0] for i in range(p.slices)]
    assert [k for part in ks for k in part] == list(range(len(SIZES)))      # in order, each k in one slice
    assert all(n <= 3000 or len(part) == 1 for n, part in zip(rows, ks))    # full, unless one run is larger
    assert all(n + SIZES[ks[i + 1][0]] > 3000 for i, n in enumerate(rows[:-1]))   # and as full as runs allow
    # the view holds exactly the rows of the one-table copy, keys included
    a = whole.execute(f"SELECT * FROM {p.copy} ORDER BY k, b, {catalog.KEY}").fetchnumpy()
    b = sliced.execute(f"SELECT * FROM {p.copy} ORDER BY k, b, {catalog.KEY}").fetchnumpy()
    assert all(np.array_equal(a[c], b[c]) for c in a)


def test_reads_on_slices_match_reads_on_one_table(pair):
    """By position (one request and a batch), by key, and exactly: the same rows, so the same
    sampled counts and estimates."""
    whole, sliced = pair
    by_group, by_key = query("AVG(x) AS a, COUNT(*) AS n", where="k = $k AND b = $b"), query("AVG(x) AS a", where="x >= $lim")
    results = []
    for con in (whole, sliced):
        engine = DuckDBEngine(con)
        group = compile_query(engine, con, by_group, strategy="prepared")
        key = compile_query(engine, con, by_key, strategy="prepared")
        assert group.positions_for({"k": 8, "b": 1}) is not None
        got = []
        with con.cursor() as cur:
            for k in range(len(SIZES)):
                s = QuerySampler(group, engine, {"k": k, "b": k % 3, "lim": 0.0}, seed=k)
                s.advance(cur, 0.05, matching=1.0)       # as rows
                s.advance(cur, 0.2)                      # summed by DuckDB
                got.append((s.moments.n, s.result().values["a"], s.result().exact))
            many = [QuerySampler(group, engine, {"k": s % len(SIZES), "b": s % 3, "lim": 0.0}, seed=s) for s in range(BATCH_MIN)]
            advance_many(engine, cur, [(s, 0.1) for s in many], {"k": pa.int32(), "b": pa.int32(), "lim": pa.float64()})
            got += [(s.moments.n, s.result().values["a"], s.result().exact) for s in many]
            s = QuerySampler(key, engine, {"k": 0, "b": 0, "lim": 2.0}, seed=3)
            s.advance(cur, 0.1)
            got.append((s.moments.n, s.result().values["a"], s.result().exact))
            s = QuerySampler(group, engine, {"k": 2, "b": 2, "lim": 0.0}, seed=3)
            s.advance(cur, 1.0)
            got.append((s.moments.n if s.moments else None, s.result().values["a"], s.result().exact))
        results.append(got)
    assert results[0] == results[1]
    assert not any(exact for _, _, exact in results[1][:-1]) and results[1][-1][2]
    assert results[1][-1][1] == pytest.approx(exact_row(sliced, by_group, {"k": 2, "b": 2})["a"])
    assert {g[2] for g in compile_query(DuckDBEngine(sliced), sliced, by_group).positions.values()} == \
        set(range(lookup(sliced.cursor(), "t").slices))   # every slice is read by position


def test_prepare_again_moves_between_one_slice_several_and_one_table(pair, monkeypatch):
    """Each prepare drops the slices of the one before. Without ``by`` (nothing to read by
    position) the copy is one table."""
    _, con = pair
    p = lookup(con.cursor(), "t")

    def slice_tables():
        return con.execute("SELECT count(*) FROM duckdb_tables() WHERE starts_with(table_name, ?)",
                           [slice_prefix(p.copy)]).fetchall()[0][0]

    def is_table():
        return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [p.copy]).fetchall()[0][0] == 1
    monkeypatch.setattr(catalog, "SLICE_ROWS", 10**9)
    assert prepare(con, "t", by=["k"]).slices == 1
    assert slice_tables() == 1 and lookup(con.cursor(), "t").slices == 1 and not is_table()
    monkeypatch.setattr(catalog, "SLICE_ROWS", 5000)
    assert prepare(con, "t", by=["k"]).slices == slice_tables() == lookup(con.cursor(), "t").slices >= 2
    assert con.execute(f"SELECT count(*) FROM {p.copy}").fetchall()[0][0] == sum(SIZES) and not is_table()
    assert prepare(con, "t", by=[]).slices == 0
    assert slice_tables() == 0 and lookup(con.cursor(), "t").slices == 0 and is_table()
    assert con.execute(f"SELECT count(*) FROM {p.copy}").fetchall()[0][0] == sum(SIZES)


def test_a_sliced_copy_prepared_again_after_load_is_noticed_by_the_read(pair):
    """Slice tables are named for their prepare, and a read by position checks only the source's
    count: a later prepare drops the slices a loaded pipeline indexed, its reads (one request and
    a batch) find them gone and compute exactly with a note. A source that grew is stale as ever."""
    _, con = pair
    engine = DuckDBEngine(con)
    q = query("AVG(x) AS a, COUNT(*) AS n", where="k = $k AND b = $b")
    compiled = compile_query(engine, con, q, strategy="prepared")
    assert compiled.positions_for({"k": 8, "b": 1})[2] > 0
    old = lookup(con.cursor(), "t")
    prepare(con, "t", by=["k", "b"], seed=6)
    assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [old.table(0)]).fetchall()[0][0]
    params = {"k": 8, "b": 1, "lim": 0.0}
    one = QuerySampler(compiled, engine, params, seed=1)
    many = [QuerySampler(compiled, engine, params, seed=s) for s in range(BATCH_MIN)]
    with con.cursor() as cur:
        one.advance(cur, 0.1, matching=1.0)
        advance_many(engine, cur, [(s, 0.1) for s in many], {"k": pa.int32(), "b": pa.int32(), "lim": pa.float64()})
    exact = exact_row(con, q, params)
    for s in [one, *many]:
        r = s.result()
        assert r.exact and "prepared again" in r.reasons["a"] and r.values["a"] == pytest.approx(exact["a"])
    fresh = compile_query(engine, con, q, strategy="prepared")   # loaded again: reads the new slices
    s = QuerySampler(fresh, engine, params, seed=1)
    with con.cursor() as cur:
        s.advance(cur, 0.1, matching=1.0)
    assert not s.result().exact and s.moments.n == round(0.1 * exact["n"])
    con.execute("INSERT INTO t VALUES (8, 1, 1e9)")                # the source grows: stale
    s = QuerySampler(fresh, engine, params, seed=1)
    with con.cursor() as cur:
        s.advance(cur, 0.1, matching=1.0)
    assert s.result().exact and s.result().values["n"] == exact["n"] + 1


def test_an_older_one_table_copy_is_read_by_key(pair):
    """A copy an older approxql wrote as one table, sorted by ``by``: nothing would tell a read by
    position that a later prepare rewrote it, so requests read it by key, checked against the
    catalog, and still estimate from a sample."""
    whole, _ = pair
    p = lookup(whole.cursor(), "t")
    whole.execute(f"DROP VIEW {p.copy}")
    whole.execute(f"ALTER TABLE {p.table(0)} RENAME TO {p.copy}")
    old = lookup(whole.cursor(), "t")
    assert old.slices == 0
    engine = DuckDBEngine(whole)
    compiled = compile_query(engine, whole, query("AVG(x) AS a, COUNT(*) AS n", where="k = $k AND b = $b"),
                             strategy="prepared")
    assert compiled.positions is None and catalog.CATALOG in compiled.source.current_sql()
    s = QuerySampler(compiled, engine, {"k": 8, "b": 1, "lim": 0.0}, seed=1)
    with whole.cursor() as cur:
        s.advance(cur, 0.2)
    assert not s.result().exact and 0 < s.moments.n < SIZES[8] / 3
