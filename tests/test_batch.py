"""Batches, the SQL function and threads: the same decisions as one ``predict`` per request."""
from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import approxql
from approxql import OptionError, RequestError
from approxql.sampling.batch import BATCH_MIN
from conftest import make_pipeline

N = 200   # enough that every round of the first requests is read in one joined statement


def _decisions(p):
    """What the controller decided for one request; values compared separately (last bits)."""
    return (p.exact, p.rounds, tuple(sorted(p.rates.items())), p.met_bound, p.stop_reason)


def _assert_same(batch, single):
    assert len(batch) == len(single)
    for i, (b, s) in enumerate(zip(batch, single)):
        assert _decisions(b) == _decisions(s), f"request {i}: {_decisions(b)} != {_decisions(s)}"
        if isinstance(s.value, float):
            assert b.value == pytest.approx(s.value, rel=1e-9, abs=1e-9), f"request {i}"
        else:
            assert b.value == s.value, f"request {i}"
        assert b.probability == pytest.approx(s.probability, abs=1e-12)


@pytest.fixture(scope="module")
def requests(world):
    return world["requests"].slice(0, N).to_pylist()


@pytest.mark.parametrize("name", ["gbdt", "mlp_clf"])
def test_predict_many_makes_the_decisions_of_predict(world, requests, name):
    pipe = make_pipeline(world, name)
    single = [pipe.predict(r, seed=3, learn=False) for r in requests]
    batch = pipe.predict_many(requests, seed=3, learn=False)
    _assert_same(batch, single)
    assert sum(not p.exact for p in batch) > N // 4, "the batch should answer many requests from samples"
    assert max(p.rounds for p in batch) > 1, "some requests should need a second round"


def test_predict_many_keeps_order_and_returns_arrow_for_arrow(world, requests):
    pipe = make_pipeline(world, "linear")
    order = list(range(N))[::-1]
    shuffled = [requests[i] for i in order]
    forward = pipe.predict_many(requests, seed=1, learn=False)
    backward = pipe.predict_many(shuffled, seed=1, learn=False)
    _assert_same([backward[order.index(i)] for i in range(N)], forward)
    table = pipe.predict_many(pa.Table.from_pylist(requests), seed=1, learn=False)
    assert table.column_names == ["value", "probability", "exact", "met_bound", "rounds", "latency_ms",
                                  "stop_reason", "error"]
    assert table.column("value").to_pylist() == pytest.approx([p.value for p in forward], rel=1e-9)
    assert table.column("rounds").to_pylist() == [p.rounds for p in forward]
    batch = pipe.predict_many(pa.Table.from_pylist(requests[:5]).to_batches()[0], seed=1, learn=False)
    assert batch.num_rows == 5


def test_predict_many_bad_requests(world, requests):
    pipe = make_pipeline(world, "linear")
    bad = [dict(r) for r in requests[:40]]
    bad[7]["entity"] = "seven"
    bad[9] = {k: v for k, v in bad[9].items() if k != "x"}
    with pytest.raises(RequestError, match=r"request 7: .*entity"):
        pipe.predict_many(bad, learn=False)
    out = pipe.predict_many(bad, learn=False, errors="null")
    assert out[7] is None and out[9] is None
    good = [p for i, p in enumerate(out) if i not in (7, 9)]
    _assert_same(good, [pipe.predict(r, learn=False) for i, r in enumerate(bad) if i not in (7, 9)])
    table = pipe.predict_many(pa.Table.from_pylist(bad[:7] + bad[10:]), learn=False, errors="null")
    assert table.column("error").null_count == table.num_rows
    with pytest.raises(OptionError, match="errors"):
        pipe.predict_many(requests[:2], errors="ignore")
    with pytest.raises(RequestError, match="list of dicts or an Arrow table"):
        pipe.predict_many({"entity": 1})
    assert pipe.predict_many([]) == []


def test_predict_many_null_feature_names_the_request(world, requests):
    """A request whose window has no rows: AVG is NULL and there is no fill value."""
    pipe = make_pipeline(world, "linear")
    reqs = [dict(r) for r in requests[:BATCH_MIN + 5]]
    reqs[3]["ts"] = dt.datetime(2000, 1, 1)   # before every event
    with pytest.raises(approxql.NullFeatureError, match=r"request 3 \(entity=.*ts=datetime.datetime\(2000, 1, 1, 0, 0\).*\): feature 'avg_a'"):
        pipe.predict_many(reqs, learn=False)
    out = pipe.predict_many(reqs, learn=False, errors="null")
    assert out[3] is None and all(p is not None for i, p in enumerate(out) if i != 3)


def test_predict_exact_many_equals_predict_exact(world, requests):
    pipe = make_pipeline(world, "gbdt_clf")
    many = pipe.predict_exact_many(requests[:BATCH_MIN + 8])
    for p, r in zip(many, requests):
        one = pipe.predict_exact(r)
        assert p.value == one.value and p.exact
        assert p.features == pytest.approx(one.features, rel=1e-12)


def test_sql_function_gives_the_decisions_of_predict(world, requests):
    pipe = make_pipeline(world, "gbdt")
    con = world["con"]
    approxql.register(con, pipe, seed=5, learn=False)
    con.register("reqs", pa.Table.from_pylist(requests))
    rows = con.sql("SELECT synth(entity, ts, x) AS r, synth_exact(entity, ts, x) AS e FROM reqs").fetchall()
    assert len(rows) == N
    for (r, e), req in zip(rows, requests):
        one = pipe.predict(req, seed=5, learn=False)
        assert (r["exact"], r["rounds"], r["met_bound"]) == (one.exact, one.rounds, one.met_bound)
        assert r["value"] == pytest.approx(one.value, rel=1e-9)
        assert e["value"] == pytest.approx(pipe.predict_exact(req).value, rel=1e-9) and e["exact"]
    # the form: a field of the struct, beside other columns, order kept
    got = con.sql("SELECT entity, synth(entity, ts, x).value AS v FROM reqs").fetchall()
    assert [g[0] for g in got] == [r["entity"] for r in requests]


def test_sql_function_nulls_types_and_options(world, requests):
    pipe = make_pipeline(world, "linear")
    con = world["con"]
    approxql.register(con, pipe, tau=0.9, delta=2.0, learn=False)
    r = requests[0]
    got = con.execute("SELECT synth($e, $t, $x).value, synth(NULL, $t, $x), synth_exact($e, NULL, $x)",
                      {"e": r["entity"], "t": r["ts"], "x": r["x"]}).fetchall()[0]
    assert got[0] == pytest.approx(pipe.predict(r, tau=0.9, delta=2.0, learn=False).value, rel=1e-9)
    assert got[1] is None and got[2] is None          # SQL: a NULL argument gives a NULL result
    with pytest.raises(duckdb.BinderException, match="synth"):
        con.execute("SELECT synth([1, 2], TIMESTAMP '2024-01-30', 1.0)")
    with pytest.raises(duckdb.Error, match="Could not convert|Conversion"):
        con.execute("SELECT synth('not a number', TIMESTAMP '2024-01-30', 1.0)").fetchall()
    hostile = "1; DROP TABLE events; --"
    with pytest.raises(duckdb.Error):
        con.execute("SELECT synth(?, TIMESTAMP '2024-01-30', 1.0)", [hostile]).fetchall()
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] > 0
    with pytest.raises(OptionError, match="tau"):
        approxql.register(con, pipe, tau=1.5)
    with pytest.raises(OptionError, match="unknown option"):
        approxql.register(con, pipe, pointz=3)
    with pytest.raises(OptionError, match="already exists in this database"):
        approxql.register(con.cursor(), pipe)       # another connection cannot replace it
    approxql.register(con.cursor(), pipe, name="synth_again")
    assert con.execute("SELECT synth_again($e, $t, $x).exact", {"e": 1, "t": r["ts"], "x": 0.0}).fetchall()[0][0] in (
        True, False)


def test_sql_function_errors_null(world, requests):
    pipe = make_pipeline(world, "linear")
    con = world["con"]
    approxql.register(con, pipe, learn=False)
    q = "SELECT synth(1, TIMESTAMP '2000-01-01', 0.5).value"
    with pytest.raises(duckdb.Error, match="avg_a"):
        con.execute(q).fetchall()
    approxql.register(con, pipe, learn=False, errors="null")
    assert con.execute(q).fetchall() == [(None,)]


def test_register_all_registers_every_pipeline_in_a_folder(world, tmp_path):
    make_pipeline(world, "linear")  # writes linear.sql / linear.onnx into the world folder
    folder = tmp_path / "pipes"
    folder.mkdir()
    text = (world["root"] / "linear.sql").read_text().replace(
        "linear.onnx", str(world["root"] / "linear.onnx"))
    (folder / "a.sql").write_text(text.replace("-- name: synth", "-- name: synth_a"))
    (folder / "b.sql").write_text(text.replace("-- name: synth", "-- name: synth_b"))
    con = world["con"].cursor()
    pipes = approxql.register_all(con, folder, learn=False)
    assert sorted(pipes) == ["synth_a", "synth_b"]
    n = con.sql("SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE 'synth_%'").fetchall()[0][0]
    assert n >= 4
    (folder / "c.sql").write_text(text.replace("-- name: synth", "-- name: synth_a"))
    with pytest.raises(OptionError, match="two pipelines are named 'synth_a'"):
        approxql.register_all(con, folder)
    with pytest.raises(OptionError, match="not a folder"):
        approxql.register_all(con, tmp_path / "nope")


def test_threads_give_the_results_of_serial_calls(world, requests):
    """8 threads x 200 requests on one pipeline, and batches beside them, each on its own cursor."""
    pipe = make_pipeline(world, "gbdt")
    serial = [pipe.predict(r, seed=11, learn=False) for r in requests]
    work = [(t, i) for t in range(8) for i in range(N)]
    barrier = threading.Barrier(8)

    def one_thread(t):
        barrier.wait()
        return [pipe.predict(requests[(i + 25 * t) % N], seed=11, learn=False) for i in range(N)]

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one_thread, range(8)))
    for t, out in enumerate(outs):
        _assert_same(out, [serial[(i + 25 * t) % N] for i in range(N)])
    assert len(work) == 1600
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda k: pipe.predict_many(requests[k * 50:(k + 1) * 50], seed=11, learn=False),
                                range(4)))
    _assert_same([p for b in batches for p in b], serial)


def test_learning_from_threads_stays_consistent(world, requests):
    """With learning on, concurrent requests merge into the shared cost book without loss."""
    pipe = make_pipeline(world, "linear")
    with ThreadPoolExecutor(8) as pool:
        preds = list(pool.map(lambda r: pipe.predict(r, seed=2), requests[:40]))
    assert pipe.costs.arms.served == 40                      # every request's latency: none lost
    by_arms = sum("exact at once" in p.stop_reason for p in preds)   # exact on whole-request costs
    finished = {q: len(c.finished) for q, c in pipe.costs._queries.items()}
    assert finished and all(n == 40 - by_arms for n in finished.values())   # one per sampled request and query
    snap = pipe.costs.snapshot()
    assert {q: len(c.finished) for q, c in snap._queries.items()} == finished
    out = pipe.predict_many(requests[80:120], seed=2)
    assert len(out) == 40 and all(p is not None for p in out)
    assert np.all([0.0 <= p.probability <= 1.0 for p in out])


def test_batch_reads_quantiles_and_exact_only_features_as_predict_does(world, requests):
    """A median (values fetched up to a cap per request) and a MAX (exact beside the sample)."""
    make_pipeline(world, "linear")
    root = world["root"]
    text = (root / "linear.sql").read_text().replace("SELECT AVG(a) AS avg_a, STDDEV(b) AS sd_b",
                                                     "SELECT MEDIAN(a) AS avg_a, MAX(b) AS sd_b")
    (root / "median.sql").write_text(text)
    pipe = approxql.load_pipeline(root / "median.sql", con=world["con"], warm=True)
    assert "sd_b computed exactly" in pipe.explain_sampling()
    single = [pipe.predict(r, seed=4, learn=False) for r in requests[:100]]
    _assert_same(pipe.predict_many(requests[:100], seed=4, learn=False), single)
    assert any(not p.exact for p in single)


def test_batch_on_a_table_that_was_not_prepared(con, write_pipeline):
    """TABLESAMPLE SYSTEM draws one sample per statement: the batch reads request by request."""
    pipe = approxql.load_pipeline(write_pipeline(), con=con)
    reqs = [{"store": s, "day": dt.datetime(2024, 1, 20) + dt.timedelta(days=d), "price": 1.0 + d}
            for s in ("north", "south", "east") for d in range(15)]
    out = pipe.predict_many(reqs, strategy="system", delta=5.0, seed=1, learn=False)
    exact = pipe.predict_exact_many(reqs)
    assert all(p is not None and (p.met_bound or p.exact) for p in out)
    assert np.mean([abs(p.value - e.value) <= 5.0 for p, e in zip(out, exact)]) >= 0.9
    assert all(p.exact for p in pipe.predict_many(reqs, strategy="exact", delta=5.0, learn=False))
