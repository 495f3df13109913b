"""Benchmark pipeline student (student_correct): its generator, its pipeline file, its Kaggle loader."""
from __future__ import annotations

import statistics

import duckdb
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

import approxql
import bench_checks
from bench_checks import checksum
from approxql.training import export_onnx
from benchmarks.suite.pipelines import student
from benchmarks.suite.pipelines.student import COLUMNS, PIPELINE

TABLES = ("game_events", "student_correct_requests")
SCALE = 0.002            # ~200 events per session
HEADER = ("session_id,index,elapsed_time,event_name,name,level,page,room_coor_x,room_coor_y,screen_coor_x,"
          "screen_coor_y,hover_duration,text,fqid,room_fqid,text_fqid,fullscreen,hq,music,level_group")


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
    n, n2 = (c.execute("SELECT count(*) FROM game_events").fetchall()[0][0] for c in (small, bigger))
    assert 0.8 < n / (student.SESSIONS * student.EVENTS * SCALE) < 1.2     # ~EVENTS x scale per session
    assert 1.95 < n2 / n < 2.05
    assert small.execute("SELECT count(*), count(DISTINCT session_id) FROM student_correct_requests").fetchall()[0] == (
        student.SESSIONS * 18, student.SESSIONS)
    assert small.execute("SELECT count(*) FROM student_correct_requests r ANTI JOIN game_events USING (session_id)"
                         ).fetchall()[0][0] == 0
    # the original's character: grouped by session in event order, sessions of skewed lengths and
    # different paces, heavy-tailed hovers, ~70 % correct answers
    assert small.execute("""SELECT bool_and(session_id > ps OR (session_id = ps AND "index" = pi + 1)) FROM
        (SELECT session_id, "index", lag(session_id) OVER w AS ps, lag("index") OVER w AS pi FROM game_events
         WINDOW w AS (ORDER BY rowid)) WHERE ps IS NOT NULL""").fetchall()[0][0]
    lengths = [r[0] for r in small.execute("SELECT count(*) FROM game_events GROUP BY session_id").fetchall()]
    assert max(lengths) > 3 * min(lengths)
    paces = [r[0] for r in small.execute("SELECT max(elapsed_time) FROM game_events GROUP BY session_id").fetchall()]
    assert max(paces) > 3 * min(paces)
    mean, median = small.execute("SELECT avg(hover_duration), median(hover_duration) FROM game_events").fetchall()[0]
    assert mean > 1.2 * median
    assert 0.6 < small.execute("SELECT avg(label) FROM student_correct_requests").fetchall()[0][0] < 0.8


def test_pipeline_file_matches_requests(small):
    assert PIPELINE.task == "classification"
    spec, cols = bench_checks.pipeline_file_and_request_columns(PIPELINE, small)
    assert cols[-1][1] == "INTEGER"
    assert spec.inputs == ("avg_elapsed", "sd_elapsed", "avg_hover", "sd_hover", "avg_room_x", "sd_room_x",
                           "n_fqid", "n_room", "n_text", "question")
    assert len(spec.aggregate_queries) == 2
    assert all(q.tables == (PIPELINE.table,) for q in spec.aggregate_queries)
    table_cols = [r[0] for r in small.execute("DESCRIBE game_events").fetchall()]
    assert table_cols == list(COLUMNS)
    assert set(PIPELINE.by) | set(PIPELINE.order) <= set(table_cols)


def write_kaggle(folder, sessions=(20090312431273200, 20090312433251036, 20100213133231736), events=30):
    """train.csv and train_labels.csv as Kaggle ships them: empty fields for missing values, text
    quoted when it holds a comma, labels ordered by question then session."""
    rng = np.random.default_rng(5)
    rows = []
    for sid in sessions:
        elapsed = 0
        for i in range(events):
            elapsed += int(rng.integers(100, 20_000))
            level = min(i * 23 // events, 22)
            hover = rng.random() < 0.25
            talk = not hover and rng.random() < 0.4
            room = ["tunic.historicalsociety.closet", "tunic.historicalsociety.entry", "tunic.capitol_0.hall"][
                int(rng.integers(0, 3 if sid != sessions[1] else 2))]
            rows.append({
                "session_id": sid, "index": i, "elapsed_time": elapsed,
                "event_name": "map_hover" if hover else ("person_click" if talk else "navigate_click"),
                "name": "basic" if not hover else "undefined", "level": level, "page": None,
                "room_coor_x": None if hover else round(float(rng.normal(-400, 200)), 6),
                "room_coor_y": None if hover else round(float(rng.normal(-150, 80)), 6),
                "screen_coor_x": None if hover else float(rng.integers(0, 900)),
                "screen_coor_y": None if hover else float(rng.integers(0, 700)),
                "hover_duration": float(rng.integers(50, 5000)) if hover else None,
                "text": "Whatcha doing over there, Jo?" if talk else ("undefined" if not hover else None),
                "fqid": None if hover else ["intro", "gramps", "teddy", "plaque"][int(rng.integers(0, 4))],
                "room_fqid": room, "text_fqid": f"{room}.gramps.intro_0_cs_{int(rng.integers(0, 3))}" if talk else None,
                "fullscreen": 0, "hq": 0, "music": 1,
                "level_group": "0-4" if level <= 4 else ("5-12" if level <= 12 else "13-22")})

    def field(v):
        if v is None:
            return ""
        s = str(v)
        return f'"{s}"' if "," in s else s

    lines = (",".join(field(r[c]) for c in COLUMNS) + "\n" for r in rows)
    (folder / "train.csv").write_text(HEADER + "\n" + "".join(lines))
    labels = {(sid, q): int(rng.random() < 0.7) for q in range(1, 19) for sid in sessions}
    (folder / "train_labels.csv").write_text("session_id,correct\n" + "".join(
        f"{sid}_q{q},{labels[sid, q]}\n" for q in range(1, 19) for sid in sessions))
    return rows, labels


def test_loader_reads_kaggle_files_and_serves_exact(small, tmp_path):
    rows, labels = write_kaggle(tmp_path)
    con = duckdb.connect()
    PIPELINE.load(con, tmp_path)
    assert con.execute("SELECT count(*) FROM game_events").fetchall()[0][0] == len(rows)
    assert con.execute("SELECT * FROM student_correct_requests").fetchall() == [
        (sid, q, labels[sid, q]) for sid in sorted({s for s, _ in labels}) for q in range(1, 19)]
    for t in TABLES:   # the same tables as the generator makes
        assert con.execute(f"DESCRIBE {t}").fetchall() == small.execute(f"DESCRIBE {t}").fetchall()
    quoted = "Whatcha doing over there, Jo?"      # a text with a comma, quoted in the file
    assert con.execute("SELECT count(*) FROM game_events WHERE text = ?", [quoted]).fetchall()[0][0] \
        == sum(r["text"] == quoted for r in rows) > 0
    other = duckdb.connect()
    PIPELINE.load(other, tmp_path / "train.csv")           # train.csv itself, labels beside it
    assert checksum(other, "game_events") == checksum(con, "game_events")

    X = np.random.default_rng(0).normal(size=(80, 10))
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    export_onnx(model, 10, tmp_path / "student_correct.onnx", "classification")
    text = PIPELINE.sql_path.read_text().replace("-- model: ../models/student_correct.onnx",
                                                 "-- model: student_correct.onnx")
    (tmp_path / "student_correct.sql").write_text(text)
    pipe = approxql.load_pipeline(tmp_path / "student_correct.sql", con=con)
    for sid, q in con.execute("SELECT session_id, question FROM student_correct_requests WHERE question IN (1, 13)"
                              ).fetchall():
        pred = pipe.predict_exact({"session_id": sid, "question": q})
        mine = [r for r in rows if r["session_id"] == sid]
        col = lambda c: [r[c] for r in mine if r[c] is not None]   # noqa: E731
        assert pred.features == pytest.approx({
            "avg_elapsed": statistics.mean(col("elapsed_time")), "sd_elapsed": statistics.stdev(col("elapsed_time")),
            "avg_hover": statistics.mean(col("hover_duration")), "sd_hover": statistics.stdev(col("hover_duration")),
            "avg_room_x": statistics.mean(col("room_coor_x")), "sd_room_x": statistics.stdev(col("room_coor_x")),
            "n_fqid": len(set(col("fqid"))), "n_room": len(set(col("room_fqid"))), "n_text": len(set(col("text_fqid"))),
            "question": q}, rel=1e-9)
        assert pred.value in (0, 1) and pred.exact
