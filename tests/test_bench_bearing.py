"""Benchmark pipeline bearing (bearing_imbalance): its generator, its pipeline file, its MaFaulDa loader."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

import approxql
import bench_checks
from bench_checks import checksum
from approxql.training import export_onnx
from benchmarks.suite.pipelines import bearing
from benchmarks.suite.pipelines.bearing import CHANNELS, PIPELINE

TABLES = ("vibrations", "bearing_imbalance_requests")
SCALE = 0.002            # 200 rows per segment


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
    segments = bearing.MACHINES * bearing.SEGMENTS
    for con, scale in ((small, SCALE), (bigger, 2 * SCALE)):
        per_request = int(bearing.SEGMENT_ROWS * scale)
        assert con.execute("SELECT count(*) FROM vibrations").fetchall()[0][0] == segments * per_request
        assert con.execute("SELECT min(c), max(c), count(*) FROM (SELECT count(*) c FROM vibrations "
                           "GROUP BY machine, segment)").fetchall()[0] == (per_request, per_request, segments)
        assert con.execute("SELECT count(*) FROM bearing_imbalance_requests").fetchall()[0][0] == segments
    assert segments > PIPELINE.train
    # both classes; imbalance raises the radial level; machines differ (their own gains)
    share = small.execute("SELECT avg(label) FROM bearing_imbalance_requests").fetchall()[0][0]
    assert 0.3 < share < 0.6
    levels = dict(small.execute("""SELECT r.label, avg(abs(v.overhang_radial)) FROM vibrations v
        JOIN bearing_imbalance_requests r USING (machine, segment) GROUP BY r.label""").fetchall())
    assert levels[1] > 1.5 * levels[0]
    spread = small.execute("SELECT max(a) / min(a) FROM (SELECT avg(abs(underhang_axial)) a FROM vibrations "
                           "GROUP BY machine)").fetchall()[0][0]
    assert spread > 1.2
    # plain means carry nothing: every channel but the tachometer oscillates around zero
    assert abs(small.execute("SELECT avg(underhang_radial) FROM vibrations").fetchall()[0][0]) < 0.05


def test_pipeline_file_matches_requests(small):
    assert PIPELINE.task == "classification"
    spec, cols = bench_checks.pipeline_file_and_request_columns(PIPELINE, small)
    assert cols[-1][1] == "INTEGER"
    assert spec.inputs == tuple(f"{c}_abs" for c in CHANNELS)
    (q,) = spec.aggregate_queries
    assert q.tables == (PIPELINE.table,) and q.params == ("machine", "segment")
    table_cols = [r[0] for r in small.execute("DESCRIBE vibrations").fetchall()]
    assert table_cols == ["machine", "segment", *CHANNELS]
    assert set(PIPELINE.by) | set(PIPELINE.order) <= set(table_cols)


def write_recording(path, rows, seed, imbalance):
    """A MaFaulDa recording: 8 comma-separated numbers per line, no header."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows) / 50_000
    data = rng.normal(0, 0.1, size=(rows, 8))
    data[:, 0] += 5 * ((30 * t) % 1 < 0.05)
    data[:, 5] += (1.5 if imbalance else 0.2) * np.sin(2 * np.pi * 30 * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    # MaFaulDa writes plain and exponent notation; mix both
    text = (",".join(f"{v:.5e}" if j % 2 else f"{v:.6f}" for j, v in enumerate(r)) + "\n" for r in data)
    path.write_text("".join(text))
    return data.astype(np.float32)


def test_loader_reads_mafaulda_and_serves_exact(small, tmp_path):
    root = tmp_path / "mafaulda"
    normal = write_recording(root / "normal" / "12.288.csv", 250, 1, False)
    imbalanced = write_recording(root / "imbalance" / "6g" / "13.5168.csv", 250, 2, True)
    write_recording(root / "horizontal-misalignment" / "0.5mm" / "12.9024.csv", 250, 3, False)   # skipped
    con = duckdb.connect()
    PIPELINE.load(con, root, segment_rows=100)
    # machine: position of the file among the used ones, sorted by path (imbalance/... < normal/...)
    assert con.execute("SELECT machine, segment, count(*) FROM vibrations GROUP BY ALL ORDER BY ALL").fetchall() == [
        (0, 0, 100), (0, 1, 100), (0, 2, 50), (1, 0, 100), (1, 1, 100), (1, 2, 50)]
    assert sorted(con.execute("SELECT * FROM bearing_imbalance_requests").fetchall()) == [
        (0, 0, 1), (0, 1, 1), (0, 2, 1), (1, 0, 0), (1, 1, 0), (1, 2, 0)]
    for t in TABLES:   # the same tables as the generator makes
        assert con.execute(f"DESCRIBE {t}").fetchall() == small.execute(f"DESCRIBE {t}").fetchall()
    one = duckdb.connect()
    PIPELINE.load(one, root / "normal" / "12.288.csv")      # a single file, default segment length
    assert one.execute("SELECT * FROM bearing_imbalance_requests").fetchall() == [(0, 0, 0)]

    X = np.abs(np.random.default_rng(0).normal(size=(80, 8)))
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2000, random_state=0).fit(X, (X[:, 5] > 0.7).astype(int))
    export_onnx(model, 8, tmp_path / "bearing_imbalance.onnx", "classification")
    text = PIPELINE.sql_path.read_text().replace("-- model: ../models/bearing_imbalance.onnx",
                                                 "-- model: bearing_imbalance.onnx")
    (tmp_path / "bearing_imbalance.sql").write_text(text)
    pipe = approxql.load_pipeline(tmp_path / "bearing_imbalance.sql", con=con)
    for machine, segment, _ in con.execute("SELECT * FROM bearing_imbalance_requests").fetchall():
        pred = pipe.predict_exact({"machine": machine, "segment": segment})
        rows = (imbalanced if machine == 0 else normal)[100 * segment:100 * (segment + 1)]
        expected = np.abs(rows.astype(np.float64)).mean(axis=0)
        assert [pred.features[f"{c}_abs"] for c in CHANNELS] == pytest.approx(list(expected), rel=1e-5)  # FLOAT storage
        assert pred.value in (0, 1) and pred.exact
