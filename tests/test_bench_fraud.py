"""Benchmark pipeline fraud (fraud_click): its generator, its pipeline file, its TalkingData loader."""
from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

import approxql
import bench_checks
from bench_checks import checksum
from approxql.training import export_onnx
from benchmarks.suite.pipelines import fraud
from benchmarks.suite.pipelines.fraud import PIPELINE

TABLES = ("clicks", "fraud_click_requests")
SCALE = 0.01
HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed"


def generated(scale, seed):
    return bench_checks.generated(PIPELINE, scale, seed)


@pytest.fixture(scope="module")
def small():
    return generated(SCALE, 0)


def test_generator_is_deterministic_and_scales(small):
    again, other, bigger = generated(SCALE, 0), generated(SCALE, 1), generated(2 * SCALE, 0)
    for t in TABLES:
        assert checksum(small, t) == checksum(again, t)
        assert checksum(small, t) != checksum(other, t)
    n = small.execute("SELECT count(*) FROM clicks").fetchall()[0][0]
    assert n == int(fraud.ROWS * SCALE)
    assert bigger.execute("SELECT count(*) FROM clicks").fetchall()[0][0] == int(fraud.ROWS * 2 * SCALE)
    assert small.execute("SELECT count(*) FROM fraud_click_requests").fetchall()[0][0] == fraud.REQUESTS
    # rows matching a request (same IP, last day) grow linearly with scale
    day = """SELECT sum((SELECT count(*) FROM clicks c WHERE c.ip = r.ip
                                AND c.click_time >= r.click_time - INTERVAL 1 DAY AND c.click_time < r.click_time))
             FROM (SELECT * FROM fraud_click_requests LIMIT 200) r"""
    ratio = bigger.execute(day).fetchall()[0][0] / small.execute(day).fetchall()[0][0]
    assert 1.8 < ratio < 2.2
    # heavy-tailed IPs, rare positives, time order
    top, ips = small.execute("SELECT max(c) / sum(c), count(*) FROM (SELECT count(*) AS c FROM clicks GROUP BY ip)"
                             ).fetchall()[0]
    assert top > 0.1 and ips > 2000
    for t, col in (("clicks", "is_attributed"), ("fraud_click_requests", "label")):
        rate = small.execute(f"SELECT avg({col}) FROM {t}").fetchall()[0][0]
        assert 0.01 < rate < 0.12
    assert small.execute("SELECT bool_and(click_time >= lag) FROM (SELECT click_time, lag(click_time, 1, click_time) "
                         "OVER (ORDER BY rowid) AS lag FROM clicks)").fetchall()[0][0]
    assert small.execute("SELECT count(*) FROM clicks WHERE (attributed_time IS NOT NULL) != (is_attributed = 1)"
                         ).fetchall()[0][0] == 0


def test_pipeline_file_matches_requests(small):
    assert PIPELINE.task == "classification"
    spec, cols = bench_checks.pipeline_file_and_request_columns(PIPELINE, small)
    assert cols[-1][1] == "INTEGER"
    assert spec.inputs == ("ip_clicks_1d", "ip_app_clicks_1d", "ip_app_os_clicks_1d", "app", "os", "hour")
    assert len(spec.aggregate_queries) == 3
    assert all(q.tables == (PIPELINE.table,) for q in spec.aggregate_queries)
    table_cols = {r[0] for r in small.execute("DESCRIBE clicks").fetchall()}
    assert set(PIPELINE.by) | set(PIPELINE.order) <= table_cols


def write_train_csv(path, n=400):
    """A TalkingData train.csv: same header, column order and value formats (attributed_time empty)."""
    rng = np.random.default_rng(3)
    t0 = dt.datetime(2017, 11, 6, 14, 0, 0)
    seconds = np.sort(rng.integers(0, 2 * 86400, n))
    rows = []
    for s in seconds:
        ip = int(rng.choice([5348, 5314, 73487, 201, 99999], p=[0.4, 0.3, 0.15, 0.1, 0.05]))
        app, os_ = int(rng.choice([3, 12, 19])), int(rng.choice([13, 19]))
        when = t0 + dt.timedelta(seconds=int(s))
        hit = int(rng.random() < 0.1)
        later = when + dt.timedelta(minutes=int(rng.integers(1, 90)))
        attributed = later.strftime("%Y-%m-%d %H:%M:%S") if hit else ""
        rows.append((ip, app, 1, os_, int(rng.integers(100, 500)), when, attributed, hit))
    path.write_text(HEADER + "\n" + "".join(f"{ip},{app},{dev},{os_},{ch},{when:%Y-%m-%d %H:%M:%S},{att},{hit}\n"
                                            for ip, app, dev, os_, ch, when, att, hit in rows))
    return rows


def test_loader_reads_train_csv_and_serves_exact(small, tmp_path):
    rows = write_train_csv(tmp_path / "train.csv")
    con = duckdb.connect()
    PIPELINE.load(con, tmp_path / "train.csv")
    n_req = len(rows) // 10
    assert con.execute("SELECT count(*) FROM clicks").fetchall()[0][0] == len(rows) - n_req
    assert con.execute("SELECT count(*) FROM fraud_click_requests").fetchall()[0][0] == n_req
    for t in TABLES:   # the same tables as the generator makes
        assert con.execute(f"DESCRIBE {t}").fetchall() == small.execute(f"DESCRIBE {t}").fetchall()
    assert con.execute("SELECT count(*) FROM clicks WHERE (attributed_time IS NOT NULL) != (is_attributed = 1)"
                       ).fetchall()[0][0] == 0

    X = np.random.default_rng(0).normal(size=(60, 6)) * [50, 20, 10, 5, 5, 6] + [100, 40, 20, 10, 15, 12]
    model = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(X, (X[:, 0] > 100).astype(int))
    export_onnx(model, 6, tmp_path / "fraud_click.onnx", "classification")
    text = PIPELINE.sql_path.read_text().replace("-- model: ../models/fraud_click.onnx", "-- model: fraud_click.onnx")
    (tmp_path / "fraud_click.sql").write_text(text)
    pipe = approxql.load_pipeline(tmp_path / "fraud_click.sql", con=con)

    history, seen = rows[:len(rows) - n_req], 0
    for req in con.execute("SELECT * FROM fraud_click_requests LIMIT 5").fetch_df().to_dict("records"):
        label = req.pop("label")
        assert label in (0, 1)
        req = {k: (v.to_pydatetime() if hasattr(v, "to_pydatetime") else int(v)) for k, v in req.items()}
        pred = pipe.predict_exact(req)
        window = [r for r in history if req["click_time"] - dt.timedelta(days=1) <= r[5] < req["click_time"]]
        same_ip = [r for r in window if r[0] == req["ip"]]
        same_app = [r for r in same_ip if r[1] == req["app"]]
        assert pred.features == {
            "ip_clicks_1d": len(same_ip), "ip_app_clicks_1d": len(same_app),
            "ip_app_os_clicks_1d": sum(r[3] == req["os"] for r in same_app),
            "app": req["app"], "os": req["os"], "hour": req["click_time"].hour}
        assert pred.value in (0, 1) and pred.exact
        seen += len(same_app)
    assert seen > 0
