"""Reliability under faults: interrupted or failing prepares, stale copies, numerical faults, and
concurrent load with injected query and model failures.

Each test pins a protection the README promises ("Nothing is lost", "No silent wrong number", "One
request's failure is its own"): it fails if that protection is removed.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import duckdb
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import approxql
from approxql import ModelError, QueryError
from approxql.sampling import catalog
from approxql.sampling.catalog import CATALOG, KEY, lookup
from approxql.training import export_onnx

COPY = "t__approxql_sample"
BUILDING = COPY + "__building"
SEED = 13

# -- helpers: pipelines and hand-built ONNX models -------------------------------------------------

REL_PIPELINE = """\
-- name: rel
-- model: lin.onnx
-- task: regression
-- params: k INTEGER, z DOUBLE
-- inputs: avg_x, n, z
-- delta: 1
SELECT AVG(x) AS avg_x, COUNT(*) AS n FROM t WHERE k = $k;
SELECT $z AS z;
"""


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def linear_onnx(path: Path, weights, bias: float = 0.0) -> Path:
    """y = X @ weights + bias on a 2-D double input (doubles: huge features are not cast to inf)."""
    d = len(weights)
    w = numpy_helper.from_array(np.asarray(weights, np.float64).reshape(d, 1), "W")
    b = numpy_helper.from_array(np.array([bias], np.float64), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])], "linear",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, d])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])], [w, b])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def log_onnx(path: Path, d: int) -> Path:
    """y = log(first feature): NaN for a negative feature, -inf at 0."""
    pick = numpy_helper.from_array(np.eye(d, 1, dtype=np.float64), "P")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "P"], ["F"]), helper.make_node("Log", ["F"], ["Y"])], "log",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, d])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])], [pick])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def classifier_onnx(path: Path, d: int, squash: str) -> Path:
    """A 2-class classifier: a label (argmax) and a 'probability' tensor made by ``squash``:
    Softmax (a distribution), Sigmoid (two independent sigmoids: rows do not sum to 1) or
    Identity (raw scores: negative values)."""
    w = numpy_helper.from_array(np.array([[0.02] + [0.0] * (d - 1), [0.0, 0.001] + [0.0] * (d - 2)],
                                         np.float32).T.copy(), "W")
    b = numpy_helper.from_array(np.array([-1.0, 0.5], np.float32), "B")
    squash_node = (helper.make_node("Softmax", ["Z"], ["probabilities"], axis=1) if squash == "Softmax"
                   else helper.make_node(squash, ["Z"], ["probabilities"]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Z"]), squash_node,
         helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)], "clf",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], [w, b])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def write_pipeline(folder: Path, select: str, model: str, inputs: str, *, name: str = "p", task: str = "regression",
                   params: str = "k INTEGER", table: str = "m", delta: float | None = 1.0) -> Path:
    path = folder / f"{name}.sql"
    head = f"-- name: {name}\n-- model: {model}\n-- task: {task}\n-- params: {params}\n-- inputs: {inputs}\n"
    head += f"-- delta: {delta}\n" if delta is not None else ""
    path.write_text(head + f"SELECT {select} FROM {table} WHERE k = $k;\n")
    return path


# -- helpers: database state ------------------------------------------------------------------------

def checksum(con, table: str, *, with_rowid: bool = False, key: bool = False) -> tuple:
    """Row count and a sum of row hashes (rowid included: the order of the source rows too)."""
    cols = (["rowid"] if with_rowid else []) + ["k", "x", "y"] + ([KEY] if key else [])
    return tuple(con.execute(f"SELECT count(*), sum(hash({', '.join(cols)})) FROM {table}").fetchall()[0])


def db_state(con) -> dict:
    """Everything prepare may touch: the tables, the source, the catalog, the copy."""
    tables = sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
    views = sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())
    state = {"tables": tables, "views": views, "source": checksum(con, "t", with_rowid=True)}
    if CATALOG in tables:
        state["catalog"] = con.execute(f"SELECT * FROM {CATALOG} ORDER BY source").fetchall()
    if COPY in tables or COPY in views:   # one table, or a view over slices
        state["copy"] = checksum(con, COPY, key=True)
    return state


def is_complete_prepare(con) -> bool:
    """A catalog entry for t whose copy holds exactly the source's rows (a finished prepare)."""
    with con.cursor() as cur:
        entry = lookup(cur, "t")
    n = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
    return (entry is not None and entry.source_rows == n and checksum(con, COPY) == checksum(con, "t")
            and BUILDING not in db_state(con)["tables"])


def make_table(path: Path, rows: int, *, previous: bool) -> dict:
    """t(k, x, y) with ``rows`` rows; with ``previous``, prepared once and then grown by 1,000 rows of
    x = 1e6 for k = 3 (so the copy is stale and a stale sample would be far off). Returns the state."""
    con = duckdb.connect(str(path))
    con.execute(f"""CREATE TABLE t AS SELECT (i % 100)::INTEGER AS k, (hash(i * 2 + 1) % 100000) / 100.0 AS x,
                    (hash(i * 2 + 2) % 7)::BIGINT AS y FROM range({rows}) r(i)""")
    if previous:
        approxql.prepare(con, "t", by=["k"], seed=1)
        con.execute("INSERT INTO t SELECT 3, 1e6, 0 FROM range(1000)")
    state = db_state(con)
    con.close()
    return state


def check_pipeline_after_interruption(folder: Path, db: Path, previous: bool, rows_v1: int) -> None:
    """A pipeline loaded after an interrupted prepare uses the previous complete copy (stale here:
    exact with a note) or none; the next prepare then completes and is used."""
    linear_onnx(folder / "lin.onnx", [1.0, 1e-4, 1.0])
    (folder / "rel.sql").write_text(REL_PIPELINE)
    con = duckdb.connect(str(db))
    try:
        pipe = approxql.load_pipeline(folder / "rel.sql", con=con, warm=True)
        text = pipe.explain_sampling()
        assert "__building" not in text
        with con.cursor() as cur:
            entry = lookup(cur, "t")
        request = {"k": 3, "z": 0.5}
        if previous:
            assert entry is not None and entry.copy == COPY and entry.source_rows == rows_v1 and entry.seed == 1
            assert f"prepared sample order {COPY} (by k)" in text
            p, e = pipe.predict(request, seed=SEED, learn=False), pipe.predict_exact(request)
            assert p.exact and "stale" in p.notes["q1"], p.explain()
            assert p.value == pytest.approx(e.value, rel=1e-9)   # includes the rows added after prepare
        else:
            assert entry is None
            assert "TABLESAMPLE SYSTEM on t" in text
        approxql.prepare(con, "t", by=["k"], seed=2)              # the next prepare completes
        assert is_complete_prepare(con)
        state = db_state(con)   # the copy: one slice, named for this prepare, under a view
        assert state["views"] == [COPY] and sorted(state["tables"]) == sorted([CATALOG, "t", lookup(con, "t").table(0)])
        fresh = approxql.load_pipeline(folder / "rel.sql", con=con, warm=True)
        p = fresh.predict(request, seed=SEED, learn=False)
        assert "stale" not in p.notes["q1"]
        assert abs(p.value - fresh.predict_exact(request).value) <= 1.0 or not p.met_bound
    finally:
        con.close()


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the child's stdout, or '' at EOF or after ``timeout`` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


# -- 1. nothing lost in prepare ---------------------------------------------------------------------

def test_prepare_never_modifies_its_source(tmp_path):
    """The source's rows, their order and its columns are the same after prepare and re-prepare."""
    con = duckdb.connect(str(tmp_path / "src.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 50)::INTEGER AS k, (hash(i) % 1000) / 10.0 AS x, "
                "(i % 7)::BIGINT AS y FROM range(200000) r(i)")
    before = checksum(con, "t", with_rowid=True)
    columns = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 't'").fetchall()
    approxql.prepare(con, "t", by=["k"])
    approxql.prepare(con, "t", by=["k", "y"], seed=9)
    assert checksum(con, "t", with_rowid=True) == before
    assert con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 't'").fetchall() == columns
    assert checksum(con, COPY) == checksum(con, "t")   # the copy holds the same rows


CHILD_STEP = textwrap.dedent("""
    import os, signal, sys
    import duckdb, approxql
    path, marker = sys.argv[1], sys.argv[2]

    class Cursor:  # SIGKILLs this process just before prepare runs the statement containing marker
        def __init__(self, cur): self.cur = cur
        def __enter__(self): return self
        def __exit__(self, *exc): self.cur.close()
        def execute(self, sql, *args):
            if marker in sql:
                print("KILLED", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return self.cur.execute(sql, *args)

    class Connection:
        def __init__(self, con): self.con = con
        def cursor(self): return Cursor(self.con.cursor())

    if os.environ.get("SLICE_ROWS"):   # write the copy as slices
        import approxql.sampling.catalog
        approxql.sampling.catalog.SLICE_ROWS = int(os.environ["SLICE_ROWS"])
    approxql.prepare(Connection(duckdb.connect(path)), "t", by=["k"], seed=7)
    print("DONE", flush=True)
""")

# statements of prepare's transaction, in order: kill just before each
STEPS = {
    "building written": "SELECT count(*) FROM",
    "old copy dropped": "ALTER TABLE",
    "catalog entry deleted": f"INSERT INTO {CATALOG}",
    "before commit": "COMMIT",
}


def test_prepare_killed_at_each_step_leaves_the_previous_state(tmp_path):
    """SIGKILL (no rollback, no cleanup) inside prepare's transaction, just before each of its steps,
    with and without a previous complete prepare: the database is exactly as before."""
    cases = [(prev, step) for prev in (True, False) for step in STEPS if prev or step in ("building written", "before commit")]
    children = []
    for n, (previous, step) in enumerate(cases):
        db = tmp_path / f"step{n}.duckdb"
        before = make_table(db, 20_000, previous=previous)
        proc = subprocess.Popen([sys.executable, "-c", CHILD_STEP, str(db), STEPS[step]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children.append((previous, step, db, before, proc))
    for previous, step, db, before, proc in children:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL and "KILLED" in out and "DONE" not in out, \
            f"{step}: the child was not killed inside prepare (rc {proc.returncode}): {out} {err[-2000:]}"
        con = duckdb.connect(str(db))
        try:
            assert db_state(con) == before, f"killed at '{step}' (previous prepare: {previous})"
        finally:
            con.close()
    # what a pipeline then sees, and the next prepare (once per scenario: the states are identical)
    for previous in (True, False):
        _, step, db, _, _ = next(c for c in children if c[0] == previous and c[1] == "before commit")
        folder = tmp_path / f"pipe_{previous}"
        folder.mkdir()
        check_pipeline_after_interruption(folder, db, previous, 20_000)


def test_a_sliced_prepare_killed_at_each_step_leaves_the_previous_state(tmp_path, monkeypatch):
    """The same for a copy written as slice tables under a view, over a previous sliced copy:
    killed as the old view is dropped, as a slice is written, as the new view is created."""
    monkeypatch.setattr(catalog, "SLICE_ROWS", 5000)
    children = []
    for n, marker in enumerate(("DROP VIEW", "LIMIT", "CREATE VIEW")):
        db = tmp_path / f"sliced{n}.duckdb"
        before = make_table(db, 20_000, previous=True)
        assert len(before["tables"]) > 3 and before["views"] == [COPY]   # t, catalog and slices; the view
        proc = subprocess.Popen([sys.executable, "-c", CHILD_STEP, str(db), marker], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "SLICE_ROWS": "5000"})
        children.append((marker, db, before, proc))
    for marker, db, before, proc in children:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL and "KILLED" in out, f"{marker}: {out} {err[-2000:]}"
        con = duckdb.connect(str(db))
        try:
            assert db_state(con) == before, f"killed at '{marker}'"
            approxql.prepare(con, "t", by=["k"], seed=2)   # the next prepare completes
            assert is_complete_prepare(con) and lookup(con.cursor(), "t").slices > 1
        finally:
            con.close()


CHILD_REAL = textwrap.dedent("""
    import sys
    import duckdb, approxql
    con = duckdb.connect(sys.argv[1])
    print("READY", flush=True)
    approxql.prepare(con, "t", by=["k"], seed=7)
    print("DONE", flush=True)
""")


@pytest.mark.parametrize("previous", [False, True], ids=["no-previous-prepare", "previous-prepare"])
def test_prepare_killed_from_outside_mid_transaction(tmp_path, previous):
    """The real thing: an unmodified prepare of a few million rows, SIGKILLed from outside once the
    database file starts to grow (the copy is being written, inside the transaction). Retried on a
    bigger table if prepare finished first."""
    for attempt, rows in enumerate((4_000_000, 12_000_000)):
        db = tmp_path / f"kill{attempt}.duckdb"
        before = make_table(db, rows, previous=previous)
        proc = subprocess.Popen([sys.executable, "-c", CHILD_REAL, str(db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        try:
            line = read_line(proc, 60)
            assert line.strip() == "READY", f"child did not start: {line!r} {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
            files = [db, Path(str(db) + ".wal")]
            base = [f.stat().st_size if f.exists() else 0 for f in files]
            while proc.poll() is None and time.monotonic() < deadline:
                if any((f.stat().st_size if f.exists() else 0) > b for f, b in zip(files, base)):
                    proc.send_signal(signal.SIGKILL)   # written data, not yet committed
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()   # neither finished nor grew the file: fail below, do not hang
            out, err = proc.communicate(timeout=60)
        finished = "DONE" in out
        con = duckdb.connect(str(db))
        try:
            after = db_state(con)
            if after != before:   # the only other acceptable state: the prepare committed before the kill
                assert is_complete_prepare(con), f"half-written state after SIGKILL: {after} (before: {before})"
            killed_mid = proc.returncode == -signal.SIGKILL and not finished and after == before
        finally:
            con.close()
        if killed_mid:
            print(f"\nSIGKILLed mid-transaction on attempt {attempt + 1} ({rows:,} rows)")
            check_pipeline_after_interruption(tmp_path, db, previous, rows)
            return
    pytest.fail(f"prepare always finished before it could be killed (last rc {proc.returncode}, out {out!r}); "
                f"use a bigger table")


def test_leftover_building_table_is_ignored_and_cleaned(tmp_path):
    """A stray t__approxql_sample__building (say, from an older approxql) is never used: not without a
    catalog entry, not beside a complete copy; the next prepare drops it."""
    db = tmp_path / "left.duckdb"
    make_table(db, 20_000, previous=False)
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE {BUILDING} AS SELECT k, x * 0 + 1e9 AS x, y, 0.5 AS {KEY} FROM t LIMIT 100")
    linear_onnx(tmp_path / "lin.onnx", [1.0, 1e-4, 1.0])
    (tmp_path / "rel.sql").write_text(REL_PIPELINE)
    with con.cursor() as cur:
        assert lookup(cur, "t") is None
    pipe = approxql.load_pipeline(tmp_path / "rel.sql", con=con, warm=True)
    assert "TABLESAMPLE SYSTEM on t" in pipe.explain_sampling() and "__building" not in pipe.explain_sampling()
    approxql.prepare(con, "t", by=["k"])
    assert is_complete_prepare(con) and BUILDING not in db_state(con)["tables"]
    con.execute(f"CREATE TABLE {BUILDING} AS SELECT k, x * 0 + 1e9 AS x, y, 0.5 AS {KEY} FROM t LIMIT 100")
    with con.cursor() as cur:
        assert lookup(cur, "t").copy == COPY
    pipe = approxql.load_pipeline(tmp_path / "rel.sql", con=con, warm=True)
    p = pipe.predict({"k": 3, "z": 0.0}, seed=SEED, learn=False)
    assert p.value < 1e6 and "__building" not in pipe.explain_sampling()
    approxql.prepare(con, "t", by=["k"])
    assert is_complete_prepare(con) and BUILDING not in db_state(con)["tables"]
    con.close()


def test_stale_copy_is_never_used_silently(tmp_path):
    """Rows inserted after prepare: predict, small and large predict_many all compute exactly and
    say why in notes (a sample of the stale copy would be ~47,000 off for k=3)."""
    db = tmp_path / "stale.duckdb"
    make_table(db, 200_000, previous=True)
    linear_onnx(tmp_path / "lin.onnx", [1.0, 1e-4, 1.0])
    (tmp_path / "rel.sql").write_text(REL_PIPELINE)
    con = duckdb.connect(str(db))
    pipe = approxql.load_pipeline(tmp_path / "rel.sql", con=con, warm=True)
    p = pipe.predict({"k": 3, "z": 0.0}, seed=SEED, learn=False)
    e = pipe.predict_exact({"k": 3, "z": 0.0})
    assert e.features["avg_x"] > 40_000            # the new rows matter
    assert p.exact and p.value == pytest.approx(e.value, rel=1e-9)
    assert "stale" in p.notes["q1"] and "approxql prepare again" in p.notes["q1"] and "stale" in p.explain()
    for n in (5, 40):                                # one statement per request, and the joined batch
        reqs = [{"k": i % 100, "z": 0.1 * i} for i in range(n)]
        many = pipe.predict_many(reqs, seed=SEED, learn=False)
        exact = pipe.predict_exact_many(reqs)
        for r, m, x in zip(reqs, many, exact):
            assert m.exact and "stale" in m.notes["q1"], (n, r)
            assert m.value == pytest.approx(x.value, rel=1e-9), (n, r)
    con.close()


def test_failed_prepare_raises_an_approxql_error_and_changes_nothing(tmp_path):
    """A prepare the database refuses (a read-only connection) raises QueryError, not a raw DuckDB
    error, and leaves the previous state."""
    db = tmp_path / "ro.duckdb"
    before = make_table(db, 20_000, previous=True)
    con = duckdb.connect(str(db), read_only=True)
    with pytest.raises(QueryError, match="prepare 't' failed and changed nothing"):
        approxql.prepare(con, "t", by=["k"])
    assert db_state(con) == before
    con.close()


def test_concurrent_prepares_leave_one_complete_copy(tmp_path):
    """Three threads prepare the same table at once: the losers raise QueryError (write-write
    conflict), and what remains is one complete copy of a winner."""
    db = tmp_path / "conc.duckdb"
    make_table(db, 300_000, previous=False)
    con = duckdb.connect(str(db))
    barrier = threading.Barrier(3)

    def one(seed):
        barrier.wait()
        try:
            return approxql.prepare(con, "t", by=["k"], seed=seed)
        except QueryError as e:
            return e

    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(one, range(3)))
    won = [o.seed for o in outs if not isinstance(o, Exception)]
    assert won and all(isinstance(o, QueryError) and "changed nothing" in str(o) for o in outs if isinstance(o, Exception))
    assert is_complete_prepare(con)
    with con.cursor() as cur:
        assert lookup(cur, "t").seed in won
    con.close()


def test_interrupt_after_commit_is_not_masked_by_rollback(tmp_path):
    """A KeyboardInterrupt that lands just after COMMIT succeeded must propagate as itself (a ROLLBACK
    with no transaction must not replace it), and the committed prepare is complete."""
    db = tmp_path / "int.duckdb"
    make_table(db, 20_000, previous=False)
    real = duckdb.connect(str(db))

    class Cursor:
        def __init__(self, cur):
            self.cur = cur

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.cur.close()

        def execute(self, sql, *args):
            out = self.cur.execute(sql, *args)
            if sql == "COMMIT":
                raise KeyboardInterrupt("Ctrl-C just after COMMIT")
            return out

    class Connection:
        def cursor(self):
            return Cursor(real.cursor())

    with pytest.raises(KeyboardInterrupt):
        approxql.prepare(Connection(), "t", by=["k"])
    assert is_complete_prepare(real)
    real.close()


# -- 2. numerical faults ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def numdb(tmp_path_factory):
    """m(k, c, v, o): 10 entities x 100,000 rows; c constant, v in [0, 100), o ~ 1e307 (sums overflow)."""
    folder = tmp_path_factory.mktemp("numeric")
    con = duckdb.connect(str(folder / "num.duckdb"))
    con.execute("""CREATE TABLE m AS SELECT (i % 10)::INTEGER AS k, 5.0 AS c,
                   (hash(i * 7) % 10000) / 100.0 AS v, 1e307 * (1 + (hash(i * 3) % 1000) / 1000.0) AS o
                   FROM range(1000000) r(i)""")
    approxql.prepare(con, "m", by=["k"])
    yield folder, con
    con.close()


def test_constant_columns_are_sampled_without_nan(numdb, tmp_path):
    """AVG, STDDEV and VAR of a constant column (variance 0) on a sample: the exact constant, a
    zero spread, finite errors, and a prediction within delta of exact."""
    _, con = numdb
    linear_onnx(tmp_path / "lin.onnx", [1.0, 1.0, 1.0, 1.0])
    path = write_pipeline(tmp_path, "AVG(c) AS avg_c, STDDEV(c) AS sd_c, VAR_SAMP(c) AS var_c, AVG(v) AS avg_v",
                          "lin.onnx", "avg_c, sd_c, var_c, avg_v")
    pipe = approxql.load_pipeline(path, con=con, warm=True)
    reqs = [{"k": k} for k in range(10)]
    single = [pipe.predict(r, seed=SEED, learn=False) for r in reqs]
    many = pipe.predict_many(reqs, seed=SEED, learn=False)
    exact = pipe.predict_exact_many(reqs)
    assert any(not p.exact for p in single), "the constant column should be read from samples"
    for p in single + many:
        assert p.features["avg_c"] == pytest.approx(5.0, abs=1e-12)
        assert p.features["sd_c"] == pytest.approx(0.0, abs=1e-9) and p.features["var_c"] == pytest.approx(0.0, abs=1e-9)
        assert all(np.isfinite(list(p.features.values()))) and all(np.isfinite(list(p.stderr.values())))
        assert p.stderr.get("avg_c", 0.0) == pytest.approx(0.0, abs=1e-9)
    assert np.mean([abs(p.value - e.value) <= 1.0 for p, e in zip(single, exact)]) >= 0.9
    assert [p.value for p in many] == pytest.approx([p.value for p in single], rel=1e-9)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_huge_finite_values_give_the_exact_answer(numdb, tmp_path):
    """Features near 1e300 whose sampled moments overflow: computed exactly (or sampled within
    delta), never NaN or a crash."""
    _, con = numdb
    linear_onnx(tmp_path / "lin.onnx", [1e-300, 1e-282, 1.0])
    # (not VAR_POP near 1e304: DuckDB's parallel VAR_POP then returns inf on some runs, see the overflow test)
    path = write_pipeline(tmp_path, "AVG(v * 1e300) AS big, VAR_POP(v * 1e140) AS bigvar, AVG(v) AS avg_v",
                          "lin.onnx", "big, bigvar, avg_v")
    pipe = approxql.load_pipeline(path, con=con, warm=True)
    reqs = [{"k": k} for k in range(4)]
    exact = pipe.predict_exact_many(reqs)
    for p in [pipe.predict(r, seed=SEED, learn=False) for r in reqs] + pipe.predict_many(reqs, seed=SEED, learn=False):
        assert all(np.isfinite(list(p.features.values())))
    for r, e in zip(reqs, exact):
        p = pipe.predict(r, seed=SEED, learn=False)
        assert np.isfinite(e.value) and e.features["big"] > 1e301
        assert abs(p.value - e.value) <= 1.0 if p.exact else p.met_bound


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("select", ["STDDEV(v * 1e160) AS f1, AVG(v) AS f2",   # squares overflow: DuckDB says inf
                                    "AVG(o) AS f1, AVG(v) AS f2"],             # the running sum overflows: inf
                         ids=["stddev-overflow", "avg-sum-overflow"])
def test_overflowed_feature_is_a_model_error_not_a_prediction(numdb, tmp_path, select):
    """DuckDB returns inf for these finite true values; a tree model would turn inf into an ordinary
    looking number. approxql must refuse, naming the feature."""
    from sklearn.tree import DecisionTreeRegressor
    _, con = numdb
    assert con.execute(f"SELECT {select} FROM m WHERE k = 1").fetchall()[0][0] == float("inf"), "precondition"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2)) * [1e3, 10] + [0, 50]
    export_onnx(DecisionTreeRegressor(max_depth=3, random_state=0).fit(X, X[:, 1] * 2), 2, tmp_path / "tree.onnx",
                "regression")
    pipe = approxql.load_pipeline(write_pipeline(tmp_path, select, "tree.onnx", "f1, f2"), con=con, warm=True)
    for call in (lambda: pipe.predict_exact({"k": 1}), lambda: pipe.predict({"k": 1}, seed=SEED, learn=False),
                 lambda: pipe.predict_many([{"k": k} for k in range(5)], seed=SEED, learn=False),
                 lambda: pipe.predict_exact_many([{"k": k} for k in range(5)])):
        with pytest.raises(ModelError, match=r"NaN or infinite values of input\(s\) 'f1'"):
            call()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_sum_of_huge_values_loads_and_predicts(numdb, tmp_path):
    """SUM over values near 1e62 (finite, no overflow in DuckDB) must load and predict. Its tail
    is measured: the cubed deviations (about 1e185) stay finite. (Earlier the sixth power of the
    shift, which the SUM's rule never uses, overflowed in Python and made it exact by accident.)
    So the SUM is sampled, and its interval holds the exact value."""
    _, con = numdb
    linear_onnx(tmp_path / "lin.onnx", [1e-66, 1.0])
    pipe = approxql.load_pipeline(write_pipeline(tmp_path, "SUM(v * 1e60) AS f1, AVG(v) AS f2", "lin.onnx", "f1, f2"),
                                  con=con, warm=True)
    p, e = pipe.predict({"k": 2}, seed=SEED, learn=False), pipe.predict_exact({"k": 2})
    assert abs(p.value - e.value) <= 1.0 or not p.met_bound
    assert not p.exact and 0 < p.stderr["f1"] < 0.05 * e.features["f1"]
    assert abs(p.features["f1"] - e.features["f1"]) <= 3 * p.stderr["f1"]


def test_sampling_cost_is_learned_per_row_of_the_query_not_of_its_sparsest_term(numdb, tmp_path):
    """A statement reads every row of the query's key range. A filtered term sees a tenth of them,
    and counting only those made each row look ten times dearer to the cost model (on the game
    logs: 4.9e-4 ms per row learned against 4.8e-5), which then predicted sampling dearer than exact."""
    _, con = numdb
    linear_onnx(tmp_path / "lin.onnx", [1.0, 1.0])
    pipe = approxql.load_pipeline(write_pipeline(tmp_path, "AVG(v) FILTER (WHERE v < 10) AS f1, AVG(v) AS f2",
                                                 "lin.onnx", "f1, f2"), con=con, warm=True)
    p = pipe.predict({"k": 3}, seed=SEED, policy="fixed", initial_fraction=0.1)
    (read,) = [r for r in p.reads if not r["exact"]]
    assert read["rows"] == pytest.approx(0.1 * 100_000, rel=0.05)   # not ~1,000 (the filtered term's)


def test_model_nan_output_is_a_model_error(numdb, tmp_path):
    """log of a negative feature is NaN: every entry point raises ModelError; a valid request works."""
    _, con = numdb
    log_onnx(tmp_path / "log.onnx", 2)
    path = write_pipeline(tmp_path, "AVG(v) - $shift AS f1, AVG(v) AS f2", "log.onnx", "f1, f2",
                          params="k INTEGER, shift DOUBLE")
    pipe = approxql.load_pipeline(path, con=con, warm=True)
    good, bad = {"k": 1, "shift": 0.0}, {"k": 1, "shift": 1000.0}
    assert pipe.predict_exact(good).value == pytest.approx(np.log(pipe.predict_exact(good).features["f2"]))
    assert np.isfinite(pipe.predict(good, seed=SEED, learn=False).value)
    for call in (lambda: pipe.predict_exact(bad), lambda: pipe.predict(bad, seed=SEED, learn=False),
                 lambda: pipe.predict_many([good, bad, good], seed=SEED, learn=False),
                 lambda: pipe.predict_exact_many([good, bad])):
        with pytest.raises(ModelError, match="log.onnx returned NaN or infinity"):
            call()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_model_with_huge_coefficients_is_a_model_error(numdb, tmp_path):
    """A skl2onnx linear model whose coefficient overflows float32 outputs inf: ModelError."""
    from sklearn.linear_model import LinearRegression
    _, con = numdb
    lr = LinearRegression().fit(np.random.default_rng(0).normal(size=(50, 2)), np.zeros(50))
    lr.coef_ = np.array([1e300, 1.0])
    export_onnx(lr, 2, tmp_path / "huge.onnx", "regression")
    pipe = approxql.load_pipeline(write_pipeline(tmp_path, "AVG(v) AS f1, AVG(v) AS f2", "huge.onnx", "f1, f2"),
                                  con=con, warm=True)
    for call in (lambda: pipe.predict_exact({"k": 1}), lambda: pipe.predict({"k": 1}, seed=SEED, learn=False),
                 lambda: pipe.predict_many([{"k": 1}, {"k": 2}], seed=SEED, learn=False)):
        with pytest.raises(ModelError, match="huge.onnx returned NaN or infinity"):
            call()


@pytest.mark.parametrize("squash, message", [("Sigmoid", r"row \d+ sums to [0-9.]+, not 1"),
                                             ("Identity", r"outside \[0, 1\]")])
def test_classifier_probabilities_must_be_a_distribution(numdb, tmp_path, squash, message):
    """Class 'probabilities' that do not sum to 1 (or are raw scores) would silently skew the label
    margin and label probability the controller reads: ModelError naming the model; a softmax works."""
    _, con = numdb
    reqs = [{"k": k} for k in range(4)]
    classifier_onnx(tmp_path / "ok.onnx", 3, "Softmax")
    ok = approxql.load_pipeline(write_pipeline(tmp_path, "AVG(v) AS f1, COUNT(*) AS f2, STDDEV(v) AS f3", "ok.onnx",
                                               "f1, f2, f3", name="ok", task="classification", delta=None),
                                con=con, warm=True)
    for p in [ok.predict_exact(reqs[0]), ok.predict(reqs[0], seed=SEED, learn=False)] + ok.predict_many(reqs, seed=SEED, learn=False):
        assert p.value in (0, 1) and 0.0 <= p.probability <= 1.0
    classifier_onnx(tmp_path / "bad.onnx", 3, squash)
    bad = approxql.load_pipeline(write_pipeline(tmp_path, "AVG(v) AS f1, COUNT(*) AS f2, STDDEV(v) AS f3", "bad.onnx",
                                                "f1, f2, f3", name="bad", task="classification", delta=None),
                                 con=con, warm=True)
    for call in (lambda: bad.predict_exact(reqs[0]), lambda: bad.predict(reqs[0], seed=SEED, learn=False),
                 lambda: bad.predict_many(reqs, seed=SEED, learn=False), lambda: bad.predict_exact_many(reqs)):
        with pytest.raises(ModelError, match=r"model bad\.onnx output 'probabilities' is not class probabilities.*"
                                              + message):
            call()


# -- 3. load with injected faults ---------------------------------------------------------------------

THREADS, CALLS = 8, 500
SQL_FAULT_X = 5000.0      # the request query raises for x > 1000
MODEL_FAULT_X = 777.25    # the model raises when feature x equals this
LOAD_PIPELINE = """-- name: load
-- model: load.onnx
-- task: regression
-- params: entity INTEGER, ts TIMESTAMP, x DOUBLE
-- inputs: avg_a, sd_b, n_recent, avg_c, avg_d, x
-- delta: 1.0
SELECT AVG(a) AS avg_a, STDDEV(b) AS sd_b, COUNT(*) AS n_recent
FROM events WHERE entity = $entity AND ts >= $ts - INTERVAL 20 DAY AND ts < $ts;
SELECT AVG(c) AS avg_c FROM events WHERE entity = $entity;
SELECT AVG(d) AS avg_d FROM events WHERE entity = $entity;
SELECT CASE WHEN $x > 1000 THEN error('injected fault for x=' || CAST($x AS VARCHAR)) ELSE $x END AS x;
"""


@pytest.fixture(scope="module")
def load_world(tmp_path_factory):
    """The controller tests' synthetic events, smaller (20 entities x 5,000 rows), prepared, on a
    connection with one DuckDB thread: every statement sums in one order, so a request's result is
    bit-identical however many Python threads run beside it."""
    folder = tmp_path_factory.mktemp("load")
    con = duckdb.connect(str(folder / "events.duckdb"))
    con.execute("SET threads = 1")
    con.execute("""
        CREATE TABLE events AS
        SELECT i % 20 AS entity,
               TIMESTAMP '2024-01-01' + to_seconds(((hash(i * 8 + 1) % 5184000))::BIGINT) AS ts,
               (i % 20) * 0.5 + 3 * ((hash(i * 8 + 2) % 10000) / 10000.0 - 0.5) AS a,
               1 + (i % 7) + 4 * ((hash(i * 8 + 3) % 10000) / 10000.0) AS b,
               ((i % 20) % 5) + 2 * ((hash(i * 8 + 4) % 10000) / 10000.0) AS c,
               10 * ((hash(i * 8 + 5) % 10000) / 10000.0) AS d
        FROM range(100000) t(i)""")
    approxql.prepare(con, "events", by=["entity"])
    linear_onnx(folder / "load.onnx", [2.0, 1.5, 0.002, 3.0, 0.0, 2.0])
    (folder / "load.sql").write_text(LOAD_PIPELINE)
    rng = np.random.default_rng(7)
    requests = [{"entity": int(e), "ts": dt.datetime(2024, 1, 25) + dt.timedelta(hours=int(h)), "x": float(x)}
                for e, h, x in zip(rng.integers(0, 20, 40), rng.integers(0, 24 * 30, 40), rng.normal(0, 1, 40))]
    yield folder, con, requests
    con.close()


class CursorBook:
    """Counts the cursors an engine hands out and closes; each is a proxy of a real DuckDB cursor."""

    def __init__(self, engine):
        self.real_cursor = engine.cursor
        self.lock = threading.Lock()
        self.opened = self.closed = 0
        self.reals: list = []

    def __call__(self):
        cur = _CountedCursor(self.real_cursor(), self)
        with self.lock:
            self.opened += 1
            self.reals.append(cur.real)
        return cur

    @property
    def open(self) -> int:
        with self.lock:
            return self.opened - self.closed


class _CountedCursor:
    def __init__(self, real, book):
        self.real, self.book, self.done = real, book, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self.book.lock:
            if self.done:
                return
            self.done = True
            self.book.closed += 1
        self.real.close()

    def __getattr__(self, name):
        return getattr(self.real, name)


def _same(a, b) -> bool:
    """The same prediction: decisions and probability bit for bit (one DuckDB thread: a sample
    sums in one order), value and features to 1e-12. A query computed exactly runs on the copy or
    on the source, whichever has been faster (``sampling.exact_plan``): the same rows summed in
    another order, which may change the last bits."""
    close = (math.isclose(a.value, b.value, rel_tol=1e-12) and a.features.keys() == b.features.keys()
             and all(math.isclose(a.features[k], b.features[k], rel_tol=1e-12) for k in a.features))
    return close and ((a.probability, a.exact, a.rounds, a.met_bound, a.stop_reason, dict(a.rates))
                      == (b.probability, b.exact, b.rounds, b.met_bound, b.stop_reason, dict(b.rates)))


def test_threads_with_injected_query_and_model_faults(load_world):
    """8 threads x 500 mixed calls (predict, predict_exact, predict_many of 3) on one pipeline whose
    request query raises for some x and whose model raises for another x: every other call gives the
    serial fault-free result bit for bit, faulty ones raise QueryError / ModelError, nothing hangs,
    and every cursor opened is closed."""
    folder, con, base = load_world
    pipe = approxql.load_pipeline(folder / "load.sql", con=con, warm=True)
    pool = base + [dict(r, x=SQL_FAULT_X + i) for i, r in enumerate(base[:4])] + [dict(r, x=MODEL_FAULT_X) for r in base[4:8]]
    fault = {i: None for i in range(len(base))}
    fault.update({i: "sql" for i in range(40, 44)})
    fault.update({i: "model" for i in range(44, 48)})
    batches = [[3 * b, 3 * b + 1, 3 * b + 2] for b in range(12)] + [[0, 40, 1], [2, 44, 3], [41, 5, 6], [7, 45, 8]]

    def batch_fault(b):
        kinds = {fault[i] for i in batches[b]} - {None}
        return kinds.pop() if kinds else None

    # serial, fault-free references (the faulty pool entries are never run here)
    ref_predict = {i: pipe.predict(pool[i], seed=SEED, learn=False) for i in fault if fault[i] is None}
    ref_exact = {i: pipe.predict_exact(pool[i]) for i in ref_predict}
    ref_many = {b: pipe.predict_many([pool[i] for i in batches[b]], seed=SEED, learn=False)
                for b in range(len(batches)) if batch_fault(b) is None}
    assert sum(not p.exact for p in ref_predict.values()) > 20, "most requests should be answered from samples"

    x_index = list(pipe.inputs).index("x")
    real_run = pipe.model.run

    def faulty_run(X):
        if np.any(np.asarray(X)[:, x_index] == MODEL_FAULT_X):
            raise ModelError(f"injected model fault for x={MODEL_FAULT_X}")
        return real_run(X)

    pipe.model.run = faulty_run
    book = CursorBook(pipe.engine)
    pipe.engine.cursor = book
    probe = pipe.engine.cursor()               # the counter itself sees an open cursor, and its closing
    assert book.open == 1
    probe.close()
    assert book.open == 0

    barrier = threading.Barrier(THREADS)
    expected_error = {"sql": (QueryError, "injected fault for x="), "model": (ModelError, "injected model fault")}

    def worker(t):
        rng = np.random.default_rng(1000 + t)
        counts = {"ok": 0, "sql": 0, "model": 0}
        problems = []
        barrier.wait(timeout=30)
        for n in range(CALLS):
            kind = str(rng.choice(["predict", "exact", "many"], p=[0.45, 0.45, 0.10]))
            target = int(rng.integers(len(batches) if kind == "many" else len(pool)))
            f = batch_fault(target) if kind == "many" else fault[target]
            try:
                if kind == "predict":
                    got = pipe.predict(pool[target], seed=SEED, learn=False)
                    good = f is None and _same(got, ref_predict[target])
                elif kind == "exact":
                    got = pipe.predict_exact(pool[target])
                    good = f is None and _same(got, ref_exact[target])
                else:
                    got = pipe.predict_many([pool[i] for i in batches[target]], seed=SEED, learn=False)
                    good = f is None and len(got) == 3 and all(_same(g, r) for g, r in zip(got, ref_many[target]))
                if good:
                    counts["ok"] += 1
                else:
                    problems.append(f"thread {t} call {n}: {kind} {target} (fault {f}) did not give the serial result")
            except approxql.ApproxQLError as e:
                if f is not None and isinstance(e, expected_error[f][0]) and expected_error[f][1] in str(e):
                    counts[f] += 1
                else:
                    problems.append(f"thread {t} call {n}: {kind} {target} (fault {f}) raised {type(e).__name__}: {e}")
            except Exception as e:  # anything not an approxql error is a bug here
                problems.append(f"thread {t} call {n}: {kind} {target} raised {type(e).__name__}: {e}")
        return counts, problems

    t0 = time.perf_counter()
    executor = ThreadPoolExecutor(THREADS)
    try:
        futures = [executor.submit(worker, t) for t in range(THREADS)]
        done, not_done = wait(futures, timeout=180)
        assert not not_done, f"{len(not_done)} of {THREADS} threads did not finish in 180 s: a deadlock or a stall"
        results = [f.result() for f in futures]
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        pipe.model.run = real_run
    elapsed = time.perf_counter() - t0
    problems = [p for _, ps in results for p in ps]
    assert not problems, f"{len(problems)} wrong outcomes, e.g.:\n" + "\n".join(problems[:10])
    totals = {k: sum(c[k] for c, _ in results) for k in ("ok", "sql", "model")}
    assert sum(totals.values()) == THREADS * CALLS
    assert totals["sql"] > 50 and totals["model"] > 50 and totals["ok"] > 2000, totals
    # no leaked cursor: every cursor handed out was closed, and DuckDB agrees
    assert book.opened > THREADS * CALLS and book.open == 0, (book.opened, book.closed)
    for real in book.reals:
        with pytest.raises(duckdb.ConnectionException):
            real.execute("SELECT 1")
    # the shared pipeline is unharmed: serial calls still give the references
    for i in (0, 17, 39):
        assert _same(pipe.predict(pool[i], seed=SEED, learn=False), ref_predict[i])
    print(f"\n{THREADS} threads x {CALLS} calls with faults: {elapsed:.1f} s; {totals}; {book.opened} cursors")
