"""Benchmark pipeline battery (battery_rul): generator, pipeline file, and the NASA CSV loader."""
from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingRegressor

import approxql
from bench_checks import generated, pipeline_file_and_request_columns
from approxql.engines import DuckDBEngine
from approxql.training import export_onnx, feature_matrix
from benchmarks.suite.pipelines.battery import BATTERIES, LOGGED, PIPELINE, REQUESTS, TRAIN, load

MEASURES = ("voltage", "current", "temperature", "charge_current", "charge_voltage")
INPUTS = tuple(f"{a}_{m}" for m in MEASURES for a in ("avg", "sd")) + ("elapsed",)


def _generated(scale: float, seed: int) -> duckdb.DuckDBPyConnection:
    return generated(PIPELINE, scale, seed)


def _checksum(con) -> tuple:
    return con.execute("""SELECT
        (SELECT (count(*), sum(hash(battery, cycle, t, voltage, current, temperature, charge_current, charge_voltage)))
         FROM charge_readings),
        (SELECT (count(*), sum(hash(battery, cycle, t, label))) FROM battery_rul_requests)""").fetchall()[0]


def test_generator_is_deterministic_and_scales():
    a, b, c = _generated(0.05, 0), _generated(0.05, 0), _generated(0.05, 1)
    assert _checksum(a) == _checksum(b)
    assert all(x != y for x, y in zip(_checksum(a), _checksum(c)))
    assert a.execute("SELECT count(*) FROM (SELECT DISTINCT battery, cycle FROM charge_readings)").fetchall()[0][0] \
        == len(BATTERIES) * LOGGED
    # readings in (battery, cycle, t) order; requests in the cycle's second half, label = end - t
    assert a.execute("""SELECT count(*) FROM (SELECT (battery, cycle, t) < lag((battery, cycle, t))
        OVER (ORDER BY rowid) AS back FROM charge_readings) WHERE back""").fetchall()[0][0] == 0
    assert a.execute("""SELECT count(*), bool_and(abs(r.t + r.label - e.t_end) < 1e-6 AND r.t >= e.t_end / 2)
        FROM battery_rul_requests r JOIN (SELECT battery, cycle, max(t) AS t_end FROM charge_readings GROUP BY ALL) e
        USING (battery, cycle)""").fetchall()[0] == (REQUESTS, True)
    # served cycles are never training cycles
    assert a.execute(f"""SELECT count(*) FROM
        (SELECT DISTINCT battery, cycle FROM battery_rul_requests WHERE rowid < {TRAIN})
        JOIN (SELECT DISTINCT battery, cycle FROM battery_rul_requests WHERE rowid >= {TRAIN}) USING (battery, cycle)
        """).fetchall()[0][0] == 0
    # rows grow linearly with scale, and a request matches ~1e5 x scale rows
    d = _generated(0.1, 0)
    n_a, n_d = (x.execute("SELECT count(*) FROM charge_readings").fetchall()[0][0] for x in (a, d))
    assert 1.9 < n_d / n_a < 2.1
    matching = d.execute("""SELECT count(*) / 300 FROM (SELECT * FROM battery_rul_requests WHERE rowid % 10 = 0) r
        JOIN charge_readings c ON c.battery = r.battery AND c.cycle = r.cycle AND c.t < r.t""").fetchall()[0][0]
    assert 0.7e4 < matching < 1.3e4


def test_pipeline_file_matches_requests():
    assert PIPELINE.task == "regression"
    spec, cols = pipeline_file_and_request_columns(PIPELINE, _generated(0.01, 0))
    assert spec.inputs == INPUTS
    assert [t for _, t in cols] == ["VARCHAR", "INTEGER", "DOUBLE", "DOUBLE"]
    assert [p.type_sql for p in spec.params] == ["TEXT", "INT", "DOUBLE"]
    assert spec.aggregate_queries[0].tables == (PIPELINE.table,)
    assert set(PIPELINE.by) <= {c for c, _ in cols}


META = """type,start_time,ambient_temperature,battery_id,test_id,uid,filename,Capacity,Re,Rct
discharge,[2008.    4.    2.   13.    8.   17.921],24,B0005,0,1,00001.csv,1.8564874208181574,,
charge,[2008.    4.    2.   15.   25.   41.593],24,B0005,1,2,00002.csv,,,
impedance,[2008.    4.    2.   19.   13.    8.5],24,B0005,2,3,00003.csv,,0.05605783343888099,0.20097016584458333
charge,[2008.    4.    2.   19.   36.   42.094],24,B0005,3,4,00004.csv,,,
charge,[2008.    4.    2.   15.   25.   41.593],24,B0006,0,5,00005.csv,,,
"""
CHARGE_HEADER = "Voltage_measured,Current_measured,Temperature_measured,Current_charge,Voltage_charge,Time"


def _nasa_fixture(root):
    """The Kaggle "cleaned_dataset" layout: metadata.csv and one CSV per test in data/."""
    (root / "data").mkdir(parents=True)
    (root / "metadata.csv").write_text(META)
    (root / "data" / "00001.csv").write_text(
        "Voltage_measured,Current_measured,Temperature_measured,Current_load,Voltage_load,Time\n"
        "4.191491807505295,-0.004901589207462691,24.330033885570543,-0.0006,0.0,0.0\n"
        "4.190749067776103,-0.0014780055313505307,24.325993424022495,-0.0006,4.206,16.781\n")
    (root / "data" / "00003.csv").write_text(
        "Sense_current,Battery_current,Current_ratio,Battery_impedance,Rectified_Impedance\n"
        "(928.9+-87.65j),(-0.8+-1.24j),(-1.03+1.5j),(0.04+0.05j),\n")
    readings = {}
    for name, n, level in (("00002.csv", 40, 3.62), ("00004.csv", 55, 3.58), ("00005.csv", 30, 3.66)):
        rows = []
        for j in range(n):
            t = round(2.5 * j + 0.016 * (j % 5), 3)
            cur = 1.5 if j < n // 2 else round(1.5 * math.exp(-(j - n // 2) / 6), 6)
            v = round(min(level + 0.02 * j, 4.2), 6)
            rows.append((v, round(cur - 0.0015 * (j % 3), 6), round(24.1 + 0.05 * j - 0.001 * j * j, 6), cur,
                         round(v + 0.25 * cur, 6), t))
        readings[name] = rows
        (root / "data" / name).write_text(CHARGE_HEADER + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return readings


def test_loader_reads_nasa_csv_and_serves_exact(tmp_path):
    readings = _nasa_fixture(tmp_path / "cleaned_dataset")
    con = duckdb.connect()
    load(con, tmp_path / "cleaned_dataset")
    cycles = {("B0005", 1): "00002.csv", ("B0005", 2): "00004.csv", ("B0006", 1): "00005.csv"}
    got = con.execute("SELECT battery, cycle, count(*), max(t) FROM charge_readings GROUP BY ALL ORDER BY ALL").fetchall()
    assert got == [(b, c, len(readings[f]), readings[f][-1][5]) for (b, c), f in sorted(cycles.items())]
    reqs = con.execute("SELECT battery, cycle, t, label FROM battery_rul_requests").fetchall()
    assert len(reqs) == 3 * len(cycles)
    assert [c % 2 for _, c, _, _ in reqs] == sorted(c % 2 for _, c, _, _ in reqs)    # even cycles first
    for b, c, t, label in reqs:
        end = readings[cycles[(b, c)]][-1][5]
        assert end / 2 <= t < end and t + label == pytest.approx(end)

    spec = approxql.read_pipeline_file(PIPELINE.sql_path)
    table = con.sql("SELECT battery, cycle, t FROM battery_rul_requests").to_arrow_table()
    X = feature_matrix(spec, DuckDBEngine(con), table)
    y = np.array([r[3] for r in reqs])
    model = GradientBoostingRegressor(n_estimators=5, max_depth=2, random_state=0).fit(X, y)
    export_onnx(model, len(INPUTS), tmp_path / "battery_rul.onnx", "regression")
    (tmp_path / "battery_rul.sql").write_text(
        PIPELINE.sql_path.read_text().replace("../models/battery_rul.onnx", "battery_rul.onnx"))
    pipe = approxql.load_pipeline(tmp_path / "battery_rul.sql", con=con)

    b, c, t, _ = reqs[0]
    pred = pipe.predict_exact({"battery": b, "cycle": c, "t": t})
    before = np.array([r[:5] for r in readings[cycles[(b, c)]] if r[5] < t], dtype=np.float32).astype(np.float64)
    expected = {"elapsed": t}
    for k, m in enumerate(MEASURES):
        expected[f"avg_{m}"], expected[f"sd_{m}"] = before[:, k].mean(), before[:, k].std(ddof=1)
    assert pred.features == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert pred.exact and pred.value == pytest.approx(model.predict(np.array([[expected[n] for n in INPUTS]]))[0],
                                                      rel=1e-4)
