"""Copies prepared with ``stratify``: each read by position is a stratified sample of its group."""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from approxql import OptionError
from approxql.engines import DuckDBEngine
from approxql.estimators.strata import StrataMoments
from approxql.pipeline_file import parse_pipeline
from approxql.sampling import QuerySampler, compile_query, prepare
from approxql.sampling.batch import BATCH_MIN, advance_many
from approxql.sampling.catalog import CATALOG, STRATA, lookup, stratum_sizes
from approxql.sampling.prepared import offset_of, ranges_of

HEADER = "-- name: t\n-- model: m.onnx\n-- task: regression\n-- params: c INTEGER, lim DOUBLE\n-- inputs: a\n"
SIZES = (100_003, 40_000, 20, 150)   # rows per cycle: not a multiple of STRATA, one smaller than STRATA


def query(items: str, where: str = "c = $c AND t < $lim"):
    return parse_pipeline(HEADER + f"SELECT {items} FROM r WHERE {where};").queries[0]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """Charge-like cycles: v rises along t (a trend 100 times its noise), w swings, a tenth of w is NULL.
    Rows are written out of time order, so the copy's layout cannot lean on insertion order."""
    con = duckdb.connect(str(tmp_path_factory.mktemp("strata") / "s.duckdb"))
    parts = []
    for c, n in enumerate(SIZES):
        parts.append(f"""SELECT {c}::INTEGER AS c, i AS j, ((i * 7919) % {n}) * 1.0 AS t FROM range({n}) r(i)""")
    con.execute(f"""CREATE TABLE r AS SELECT c, t,
        3.5 + 0.7 * pow(t / 100000.0, 2) + 0.002 * ((hash(c * 1000003 + j) % 1000000) / 1000000.0 - 0.5) * 3.46 AS v,
        CASE WHEN hash(c * 7 + j * 13) % 10 = 0 THEN NULL
             ELSE 20 + 5 * sin(t / 9000.0) + (hash(j * 31 + c) % 1000) / 1000.0 END AS w
        FROM ({' UNION ALL '.join(parts)}) ORDER BY hash(c, j)""")
    prepare(con, "r", by=["c"], stratify="t")
    yield con
    con.close()


def truth(con, q, params):
    return dict(zip(q.features, con.execute(q.sql(), params).fetchall()[0]))


def test_each_stratum_takes_every_strata_th_position_of_its_group(con):
    """Stratum h (ranks of t in order) holds positions h, h + STRATA, ...; the larger strata come first."""
    prepared = lookup(con, "r")
    assert (prepared.stratify, prepared.strata) == ("t", STRATA)
    got = con.execute(f"SELECT c, t, rowid FROM {prepared.table(0)}").fetchnumpy()
    for c, n in enumerate(SIZES):
        mine = got["c"] == c
        q = got["rowid"][mine] - got["rowid"][mine].min()
        assert sorted(q) == list(range(n))                       # one run of row ids
        rank = np.argsort(np.argsort(got["t"][mine], kind="stable"), kind="stable")
        h = q % STRATA
        sizes = np.bincount(h, minlength=STRATA)
        assert list(sizes) == [n // STRATA + (i < n % STRATA) for i in range(STRATA)] == list(stratum_sizes(n, STRATA))
        edges = np.cumsum(sizes)
        assert np.array_equal(np.searchsorted(edges, rank, side="right"), h)   # rank order = stratum order


def test_the_stratified_estimator_is_the_textbook_one():
    """T_hat = sum_h N_h mean_h and sum_h N_h^2 (1 - n_h / N_h) S_h / n_h over a group of 203 rows
    in 4 strata, positions that did not match counted as zeros, over two reads (the second wraps
    round the group) merged."""
    rng = np.random.default_rng(0)
    h, k, rows = 4, 3, 203
    population = np.array([rows // h + (i < rows % h) for i in range(h)])
    reads = ([(150, 170)], [(170, rows), (0, 9)])
    merged, every = None, []
    for ranges in reads:
        positions = np.concatenate([np.arange(a, b) for a, b in ranges])
        matched = np.sort(rng.choice(positions, size=len(positions) * 2 // 3, replace=False))
        z = rng.normal(size=(len(matched), k)) + 1e6 * (matched % h)[:, None]   # strata far apart
        got = StrataMoments.from_rows(z, matched, ranges, h)
        merged = got if merged is None else merged.merge(got)
        every.append((positions, matched, z))
    positions = np.concatenate([e[0] for e in every])
    p = len(positions) / rows
    total, cov = np.zeros(k), np.zeros((k, k))
    for i in range(h):
        values = np.zeros((rows, k))
        for _, matched, z in every:
            values[matched] = z
        mine = positions[positions % h == i]
        x = values[mine]
        total += population[i] * x.mean(axis=0)
        cov += population[i] ** 2 * (1 - len(mine) / population[i]) * np.cov(x.T) / len(mine)
    got = merged.moments(population, p)
    np.testing.assert_allclose(got.total / p, total, rtol=1e-12)
    np.testing.assert_allclose(got.comoment * (1 - p) / p ** 2, cov, rtol=1e-7)
    with pytest.raises(ValueError, match="outside the positions read"):
        StrataMoments.from_rows(np.ones((1, k)), np.array([12]), [(0, 10)], h)


def test_stratified_reads_cover_at_the_nominal_rate_and_are_far_narrower(con, tmp_path):
    """300 requests' own offsets, 0.5 % of a cycle then 1.2 %, WHERE t < lim: 95 % intervals of AVG
    and STDDEV cover the truth about 95 % of the time (COUNT and SUM, with their conservative
    Bernoulli term, at least that), and AVG(v)'s interval is over 10 times narrower than on a
    copy in plain key order (its trend is 100 times its noise)."""
    q = query("AVG(v) AS a, STDDEV(v) AS sd, AVG(w) AS aw, COUNT(*) AS n, SUM(w) AS sw")
    params = {"c": 0, "lim": 75_000.0}
    exact = truth(con, q, params)
    plain = duckdb.connect(str(tmp_path / "plain.duckdb"))     # the same rows, prepared without strata
    plain.register("src", con.sql("SELECT * FROM r").to_arrow_table())
    plain.execute("CREATE TABLE r AS SELECT * FROM src")
    prepare(plain, "r", by=["c"])
    stderr = {}
    for db, stratify in ((con, "t"), (plain, None)):
        compiled = compile_query(DuckDBEngine(db), db, q, strategy="prepared")
        covered = dict.fromkeys(q.features, 0)
        widths = []
        with db.cursor() as cur:
            for seed in range(300):
                s = QuerySampler(compiled, DuckDBEngine(db), params, seed=seed)
                assert bool(s.strata) == (stratify is not None)
                for p in (0.005, 0.012):
                    s.advance(cur, p, matching=75_000)
                r = s.result()
                for f in q.features:
                    lo, hi = r.intervals[f]
                    covered[f] += lo <= exact[f] <= hi
                widths.append(r.stderr["a"])
        stderr[stratify] = float(np.median(widths))
        if stratify:
            rate = {f: v / 300 for f, v in covered.items()}
            assert 0.92 <= rate["a"] <= 0.98 and 0.92 <= rate["sd"] <= 0.98 and 0.91 <= rate["aw"] <= 0.98, rate
            assert rate["n"] >= 0.92 and rate["sw"] >= 0.92, rate
    assert stderr["t"] * 10 < stderr[None], stderr


def test_a_first_read_leaves_every_stratum_two_rows_even_where_it_wraps(con):
    """Three rows a stratum: a run of positions that wraps round a group whose size is no multiple
    of STRATA still holds two of every stratum (with two a stratum, some held one). Groups of
    fewer rows are computed exactly."""
    compiled = compile_query(DuckDBEngine(con), con, query("AVG(v) AS a"), strategy="prepared")
    wrapped = 0
    with con.cursor() as cur:
        for c in (0, 3):
            for seed in range(60):
                sampler = QuerySampler(compiled, DuckDBEngine(con), {"c": c, "lim": 1e9}, seed=seed)
                assert sampler.reachable(1e-6) == 3 * STRATA / SIZES[c]
                sampler.advance(cur, 1e-6)
                assert sampler.stratified.n.min() >= 2 and sampler.stratified.n.sum() == 3 * STRATA
                a = int(offset_of(seed) * SIZES[c])
                wrapped += a + 3 * STRATA > SIZES[c]
    assert wrapped >= 3      # some of them wrapped round their group
    tiny = QuerySampler(compiled, DuckDBEngine(con), {"c": 2, "lim": 1e9}, seed=5)   # 20 rows < 3 * STRATA
    assert tiny.reachable(0.1) == 1.0


@pytest.mark.parametrize("seed", [0, 7, 1])   # seed 1 starts at 0.618 of the group: its reads wrap round
def test_nested_stratified_reads_equal_one_read(con, seed):
    q = query("AVG(v) AS a, STDDEV(w) AS sw")
    compiled = compile_query(DuckDBEngine(con), con, q, strategy="prepared")
    params = {"c": 0, "lim": 60_000.0}
    steps, once = QuerySampler(compiled, DuckDBEngine(con), params, seed=seed), \
        QuerySampler(compiled, DuckDBEngine(con), params, seed=seed)
    with con.cursor() as cur:
        for p in (0.004, 0.01, 0.03, 0.5):
            steps.advance(cur, p)
        once.advance(cur, 0.5)
    a, b = steps.result(), once.result()
    assert a.fraction == b.fraction
    for f in q.features:
        assert a.values[f] == pytest.approx(b.values[f], rel=1e-12)
        assert a.stderr[f] == pytest.approx(b.stderr[f], rel=1e-9)


def test_a_batch_reads_stratified_requests_as_one_request_does(con):
    """A stratified read needs each request's own rows: a batch serves them one by one, to the
    same estimates."""
    compiled = compile_query(DuckDBEngine(con), con, query("AVG(v) AS a, COUNT(*) AS n"), strategy="prepared")

    def samplers():
        return [QuerySampler(compiled, DuckDBEngine(con), {"c": i % 2, "lim": 30_000.0 + i}, seed=i)
                for i in range(BATCH_MIN + 2)]
    alone, batched = samplers(), samplers()
    with con.cursor() as cur:
        for s in alone:
            s.advance(cur, 0.01)
        advance_many(DuckDBEngine(con), cur, [(s, 0.01) for s in batched], {"c": pa.int32(), "lim": pa.float64()})
    for a, b in zip(alone, batched):
        assert a.result().values == b.result().values and a.result().stderr == b.result().stderr


def test_stratify_bad_arguments(con):
    with pytest.raises(OptionError, match="stratify needs by"):
        prepare(con, "r", by=[], stratify="t")
    with pytest.raises(OptionError, match="has no column 'tt' \\(did you mean 't'\\?\\)"):
        prepare(con, "r", by=["c"], stratify="tt")
    with pytest.raises(OptionError, match="stratify expression 'floor\\(t \\+ random\\(\\)\\)' is not deterministic"):
        prepare(con, "r", by=["c"], stratify="floor(t + random())")
    assert lookup(con, "r").stratify == "t"     # nothing changed


def test_a_catalog_from_before_strata_is_read_and_extended(tmp_path):
    """An older approxql's catalog has no stratify column: its copies read as unstratified, and
    the next prepare adds the columns."""
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE e AS SELECT (i % 3)::INTEGER AS k, i * 1.0 AS t FROM range(3000) r(i)")
    prepare(con, "e", by=["k"])
    con.execute(f"ALTER TABLE {CATALOG} DROP COLUMN strata")
    con.execute(f"ALTER TABLE {CATALOG} DROP COLUMN stratify")
    old = lookup(con, "e")
    assert old is not None and (old.stratify, old.strata) == (None, 0)
    prepare(con, "e", by=["k"], stratify="t")
    assert (lookup(con, "e").stratify, lookup(con, "e").strata) == ("t", STRATA)


def test_cli_prepare_stratifies(tmp_path):
    from approxql.cli import main
    path = tmp_path / "cli_strata.duckdb"
    with duckdb.connect(str(path)) as c:
        c.execute("CREATE TABLE ev AS SELECT i % 4 AS k, i * 0.5 AS t FROM range(10000) r(i)")
    assert main(["prepare", "ev", "--db", str(path), "--by", "k", "--stratify", "t"]) == 0
    with duckdb.connect(str(path)) as c:
        assert c.execute(f"SELECT stratify, strata FROM {CATALOG}").fetchall() == [("t", STRATA)]


def test_a_large_read_summed_per_stratum_equals_its_rows(con, monkeypatch):
    """A read of more positions than the row path takes is summed by DuckDB stratum by stratum,
    to the same estimates as fetching its rows (with the full covariance of both: five columns)."""
    q = query("AVG(v) AS a, STDDEV(v) AS sd, COUNT(*) AS n")
    params = {"c": 0, "lim": 80_000.0}

    def read(row_path_max: int):
        monkeypatch.setattr("approxql.sampling.sampler.ROW_PATH_MAX", row_path_max)
        compiled = compile_query(DuckDBEngine(con), con, q, strategy="prepared")
        summed, strata_sql = [], compiled.source.strata_sql
        compiled.source.strata_sql = lambda *a, **k: summed.append(a[3]) or strata_sql(*a, **k)
        sampler = QuerySampler(compiled, DuckDBEngine(con), params, seed=11)
        with con.cursor() as cur:
            for p in (0.01, 0.45):
                sampler.advance(cur, p)
        return summed, sampler.result()
    (fetched, a), (summed, b) = read(10 ** 9), read(25_000)
    assert fetched == [] and summed == [pytest.approx(0.45, abs=1e-4)]   # the second read (44,000 positions) summed
    for f in q.features:
        assert a.values[f] == pytest.approx(b.values[f], rel=1e-9)
        assert a.stderr[f] == pytest.approx(b.stderr[f], rel=1e-6)
    assert b.stderr["a"] > 0 and a.support == b.support


def test_support_counts_the_rows_read(con):
    """A stratified sample's support is the sampled rows that count (w not NULL), not its
    estimate of the group's total scaled back."""
    compiled = compile_query(DuckDBEngine(con), con, query("AVG(w) AS a"), strategy="prepared")
    sampler = QuerySampler(compiled, DuckDBEngine(con), {"c": 3, "lim": 1e9}, seed=1)
    with con.cursor() as cur:
        sampler.advance(cur, 0.7)
    r = ranges_of(0.0, sampler.fraction, 1, sampler.group)
    counted = con.execute(f"SELECT count(w) FROM {lookup(con, 'r').table(sampler.group[2])} WHERE "
                          "(rowid >= $a AND rowid < $b) OR (rowid >= $c AND rowid < $d)",
                          {"a": r["__r1"], "b": r["__s1"], "c": r["__r2"], "d": r["__s2"]}).fetchall()[0][0]
    assert 90 < counted < 105 and sampler.result().support == counted
