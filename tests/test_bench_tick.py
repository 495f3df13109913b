"""Benchmark pipeline tick (tick_price): generator, pipeline file, and the TrueFX loader."""
from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

import approxql
from bench_checks import generated, pipeline_file_and_request_columns
from approxql.engines import DuckDBEngine
from approxql.training import export_onnx, feature_matrix
from benchmarks.suite.pipelines.tick import HOURS, LAGS, PIPELINE, REQUESTS, load

INPUTS = ("bid_h0", "bid_h1", "bid_h2", "bid_h3", "bid_h4", "bid_h5", "bid_h6")


def _generated(scale: float, seed: int) -> duckdb.DuckDBPyConnection:
    return generated(PIPELINE, scale, seed)


def _checksum(con) -> tuple:
    return con.execute("""SELECT
        (SELECT (count(*), sum(hash(pair, ts, bid, ask))) FROM ticks),
        (SELECT (count(*), sum(hash(pair, hour, round(avg_bid, 9), ticks))) FROM tick_hours),
        (SELECT (count(*), sum(hash(pair, ts, label))) FROM tick_price_requests)""").fetchall()[0]


def test_generator_is_deterministic_and_scales():
    a, b, c = _generated(0.05, 0), _generated(0.05, 0), _generated(0.05, 1)
    assert _checksum(a) == _checksum(b)
    assert all(x != y for x, y in zip(_checksum(a), _checksum(c)))
    # shape: every pair-hour has ticks, ticks come in time order, requests as documented
    assert a.execute("SELECT count(*) FROM tick_hours").fetchall()[0][0] == 6 * HOURS
    assert a.execute("SELECT count(*) FROM (SELECT ts < lag(ts) OVER (ORDER BY rowid) AS back FROM ticks) "
                     "WHERE back").fetchall()[0][0] == 0
    assert a.execute("""SELECT count(*), min(hour(ts)), max(hour(ts)), count(DISTINCT pair),
        bool_and(label BETWEEN 0.6 AND 1.4) FROM tick_price_requests""").fetchall()[0] == (
        REQUESTS, LAGS, HOURS - 1, 6, True)
    # rows grow linearly with scale, and a request matches ~1e5 x scale rows
    d = _generated(0.1, 0)
    n_a, n_d = (x.execute("SELECT count(*) FROM ticks").fetchall()[0][0] for x in (a, d))
    assert 1.95 < n_d / n_a < 2.05
    matching = d.execute("""SELECT avg(n) FROM (
        SELECT r.ts, r.pair, count(t.ts) AS n FROM tick_price_requests r JOIN ticks t
          ON t.pair = r.pair AND date_trunc('hour', t.ts) = date_trunc('hour', r.ts) AND t.ts < r.ts
        GROUP BY ALL)""").fetchall()[0][0]
    assert 0.7e4 < matching < 1.3e4


def test_pipeline_file_matches_requests():
    assert PIPELINE.task == "regression"
    spec, cols = pipeline_file_and_request_columns(PIPELINE, _generated(0.02, 0))
    assert spec.inputs == INPUTS
    assert [t for _, t in cols] == ["VARCHAR", "TIMESTAMP", "DOUBLE"]
    assert [p.type_sql for p in spec.params] == ["TEXT", "TIMESTAMP"]
    assert {q.tables[0] for q in spec.queries} == {"ticks", "tick_hours"}
    assert PIPELINE.table == "ticks" and PIPELINE.by == ("pair", "date_trunc('hour', ts)")
    assert {"pair", "ts"} <= {c for c, _ in cols}


def _truefx_fixture(folder):
    """Two monthly TrueFX files, 9 hours of ticks each, exactly as TrueFX writes them."""
    folder.mkdir()
    rows = []
    for pair, level in (("EUR/USD", 1.14612), ("GBP/USD", 1.27015)):
        lines = []
        for h in range(9):
            for k in range(12):
                t = dt.datetime(2019, 1, 2, h) + dt.timedelta(milliseconds=k * 299_917 + (k * k * 7919) % 1000)
                bid = round(level + 0.0004 * h + 0.00001 * ((k * 37) % 11), 5)
                ask = round(bid + 0.00003 + 0.00001 * (k % 3), 5)
                lines.append(f"{pair},{t:%Y%m%d %H:%M:%S}.{t.microsecond // 1000:03d},{bid:.5f},{ask:.5f}")
                rows.append((pair, t, bid))
        (folder / f"{pair.replace('/', '')}-2019-01.csv").write_text("\n".join(lines) + "\n")
    return rows


def test_loader_reads_truefx_and_serves_exact(tmp_path):
    rows = _truefx_fixture(tmp_path / "truefx")
    assert (tmp_path / "truefx" / "EURUSD-2019-01.csv").read_text().startswith("EUR/USD,20190102 00:00:00.000,1.14")
    con = duckdb.connect()
    load(con, tmp_path / "truefx")
    assert con.execute("SELECT count(*), count(DISTINCT pair) FROM ticks").fetchall()[0] == (len(rows), 2)
    assert con.execute("SELECT count(*) FROM tick_hours").fetchall()[0][0] == 18

    def hour_avg(pair, hour):
        return np.mean([b for p, t, b in rows if p == pair and t.hour == hour])

    reqs = con.execute("SELECT pair, ts, label FROM tick_price_requests").fetchall()
    # hours with all six previous hours and a next one: 6 and 7, for both pairs
    assert sorted((p, ts.hour) for p, ts, _ in reqs) == [("EUR/USD", 6), ("EUR/USD", 7), ("GBP/USD", 6), ("GBP/USD", 7)]
    for p, ts, label in reqs:
        assert label == pytest.approx(hour_avg(p, ts.hour + 1), abs=1e-12)

    spec = approxql.read_pipeline_file(PIPELINE.sql_path)
    table = con.sql("SELECT pair, ts FROM tick_price_requests").to_arrow_table()
    X = feature_matrix(spec, DuckDBEngine(con), table)
    y = np.array([r[2] for r in reqs])
    model = LinearRegression().fit(X, y)
    export_onnx(model, len(INPUTS), tmp_path / "tick_price.onnx", "regression")
    sql = PIPELINE.sql_path.read_text().replace("../models/tick_price.onnx", "tick_price.onnx")
    (tmp_path / "tick_price.sql").write_text(sql)
    pipe = approxql.load_pipeline(tmp_path / "tick_price.sql", con=con)

    pair, ts, _ = reqs[0]
    pred = pipe.predict_exact({"pair": pair, "ts": ts})
    expected = {"bid_h0": np.mean([b for p, t, b in rows if p == pair and t.hour == ts.hour and t < ts]),
                **{f"bid_h{k}": hour_avg(pair, ts.hour - k) for k in range(1, LAGS + 1)}}
    assert pred.features == pytest.approx(expected, abs=1e-12)
    assert pred.exact and pred.value == pytest.approx(model.predict(np.array([[expected[n] for n in INPUTS]]))[0],
                                                      abs=1e-3)
