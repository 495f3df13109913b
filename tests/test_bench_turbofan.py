"""Benchmark pipeline turbofan (turbofan_rul): generator, pipeline file, and the C-MAPSS loader."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

import approxql
from bench_checks import generated, pipeline_file_and_request_columns
from approxql.engines import DuckDBEngine
from approxql.training import export_onnx, feature_matrix
from benchmarks.suite.pipelines.turbofan import ENGINES, LOGGED, PIPELINE, SENSORS, TRAIN, load

INPUTS = ("t24", "t30", "t50", "p30", "ps30", "phi", "bpr", "w31", "w32")


def _generated(scale: float, seed: int) -> duckdb.DuckDBPyConnection:
    return generated(PIPELINE, scale, seed)


def _checksum(con) -> tuple:
    return con.execute(f"""SELECT
        (SELECT (count(*), sum(hash(engine, cycle, t, {', '.join(INPUTS)}))) FROM turbofan),
        (SELECT (count(*), sum(hash(engine, cycle, label))) FROM turbofan_rul_requests)""").fetchall()[0]


def test_generator_is_deterministic_and_scales():
    a, b, c = _generated(0.02, 0), _generated(0.02, 0), _generated(0.02, 1)
    assert _checksum(a) == _checksum(b)
    assert all(x != y for x, y in zip(_checksum(a), _checksum(c)))
    # readings in (engine, cycle, t) order; one request per logged flight, RUL labels over the life
    assert a.execute("""SELECT count(*) FROM (SELECT (engine, cycle, t) < lag((engine, cycle, t))
        OVER (ORDER BY rowid) AS back FROM turbofan) WHERE back""").fetchall()[0][0] == 0
    assert a.execute("""SELECT count(*), count(DISTINCT engine), min(label) >= 0, max(label) > 150,
        bool_and((engine, cycle) IN (SELECT (engine, cycle) FROM turbofan)) FROM turbofan_rul_requests""").fetchall()[0] \
        == (ENGINES * LOGGED, ENGINES, True, True, True)
    assert a.execute("SELECT count(*) FROM (SELECT DISTINCT engine, cycle FROM turbofan)").fetchall()[0][0] \
        == ENGINES * LOGGED
    # served engines are never training engines
    assert a.execute(f"""SELECT count(*)
        FROM (SELECT DISTINCT engine FROM turbofan_rul_requests WHERE rowid < {TRAIN})
        JOIN (SELECT DISTINCT engine FROM turbofan_rul_requests WHERE rowid >= {TRAIN}) USING (engine)
        """).fetchall()[0][0] == 0
    # rows grow linearly with scale, and a request matches ~8e4 x scale rows
    d = _generated(0.04, 0)
    n_a, n_d = (x.execute("SELECT count(*) FROM turbofan").fetchall()[0][0] for x in (a, d))
    assert 1.9 < n_d / n_a < 2.1
    matching = d.execute("""SELECT count(*) / (SELECT count(*) FROM turbofan_rul_requests)
        FROM turbofan_rul_requests r JOIN turbofan t USING (engine, cycle)""").fetchall()[0][0]
    assert 0.75 * 8e4 * 0.04 < matching < 1.25 * 8e4 * 0.04


def test_pipeline_file_matches_requests():
    assert PIPELINE.task == "regression"
    spec, cols = pipeline_file_and_request_columns(PIPELINE, _generated(0.01, 0))
    assert spec.inputs == INPUTS == tuple(s[0] for s in SENSORS)
    assert [t for _, t in cols] == ["INTEGER", "INTEGER", "DOUBLE"]
    assert [p.type_sql for p in spec.params] == ["INT", "INT"]
    assert spec.aggregate_queries[0].tables == (PIPELINE.table,)
    assert set(PIPELINE.by) <= {c for c, _ in cols}


def _fd001_fixture(path, lives):
    """Rows as in train_FD001.txt: unit, cycle, 3 settings, 21 sensors, single spaces, two trailing
    spaces, no header. Returns the rows as numbers."""
    rows, lines = [], []
    formats = ["{:.4f}", "{:.4f}", "{:.1f}"] + ["{:.2f}"] * 14 + ["{:.4f}", "{:.2f}", "{:.0f}", "{:.0f}", "{:.2f}",
                                                                 "{:.2f}", "{:.4f}"]
    for unit, life in lives.items():
        for cycle in range(1, life + 1):
            w = cycle / life
            settings = [0.0001 * ((unit * 7 + cycle * 3 - 10) % 15 - 7), 0.0001 * ((unit + cycle * 5 - 6) % 9 - 4), 100.0]
            sensors = [518.67, 641.82 + 1.2 * w, 1589.70 + 12 * w, 1400.60 + 30 * w, 14.62, 21.61, 554.36 - 2.5 * w,
                       2388.06, 9046.19, 1.30, 47.47 + 0.9 * w, 521.66 - 2.4 * w, 2388.02, 8138.62, 8.4195 + 0.12 * w,
                       0.03, 392, 2388, 100.00, 39.06 - 0.6 * w, 23.4190 - 0.38 * w]
            fields = [str(unit), str(cycle)] + [f.format(v) for f, v in zip(formats, settings + sensors)]
            rows.append([unit, cycle] + [float(f) for f in fields[2:]])
            lines.append(" ".join(fields) + "  \n")
    path.write_text("".join(lines))
    return rows


def test_loader_reads_cmapss_and_serves_exact(tmp_path):
    lives = {1: 12, 2: 15, 3: 9}
    rows = _fd001_fixture(tmp_path / "train_FD001.txt", lives)
    first = (tmp_path / "train_FD001.txt").read_text().splitlines()[0]
    assert first == ("1 1 -0.0007 -0.0004 100.0 518.67 641.92 1590.70 1403.10 14.62 21.61 554.15 2388.06 9046.19 "
                     "1.30 47.55 521.46 2388.02 8138.62 8.4295 0.03 392 2388 100.00 39.01 23.3873  ")
    con = duckdb.connect()
    load(con, tmp_path / "train_FD001.txt")
    assert con.execute("SELECT count(*), count(DISTINCT engine), max(t) FROM turbofan").fetchall()[0] == (len(rows), 3, 0)
    reqs = con.execute("SELECT engine, cycle, label FROM turbofan_rul_requests").fetchall()
    assert len(reqs) == 3 * LOGGED
    for e, c, label in reqs:
        assert 1 <= c <= lives[e] and label == lives[e] - c
    # each unit's requests sit one in each fifth of its life
    for e, n in lives.items():
        parts = sorted(next(k for k in range(LOGGED) if n * k // LOGGED < c <= n * (k + 1) // LOGGED)
                       for u, c, _ in reqs if u == e)
        assert parts == list(range(LOGGED))

    spec = approxql.read_pipeline_file(PIPELINE.sql_path)
    table = con.sql("SELECT engine, cycle FROM turbofan_rul_requests").to_arrow_table()
    X = feature_matrix(spec, DuckDBEngine(con), table)
    y = np.array([r[2] for r in reqs])
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    export_onnx(model, len(INPUTS), tmp_path / "turbofan_rul.onnx", "regression")
    (tmp_path / "turbofan_rul.sql").write_text(
        PIPELINE.sql_path.read_text().replace("../models/turbofan_rul.onnx", "turbofan_rul.onnx"))
    pipe = approxql.load_pipeline(tmp_path / "turbofan_rul.sql", con=con)

    e, c, _ = reqs[0]
    pred = pipe.predict_exact({"engine": e, "cycle": c})
    row = next(r for r in rows if r[0] == e and r[1] == c)
    expected = {s[0]: float(np.float32(row[4 + s[1]])) for s in SENSORS}   # sensor k is column 5 + k
    assert pred.features == pytest.approx(expected, rel=1e-12)
    assert pred.exact and pred.value == pytest.approx(model.predict(np.array([[expected[n] for n in INPUTS]]))[0],
                                                      rel=1e-4)
