"""approxql computes exactly on the prepared copy where the copy's order finds a query's rows, and on
the source when the copy is stale."""
from __future__ import annotations

import duckdb
import pytest

import approxql
from approxql.params import bind_request
from approxql.plan import QueryKind
from approxql.sampling.catalog import lookup
from approxql.sampling.exact_plan import finds_rows

HEADER = """\
-- name: plan
-- model: model.onnx
-- task: regression
-- params: k INTEGER, day TIMESTAMP, price DOUBLE
-- inputs: avg_amount, n_sales, price
-- delta: 1
-- fill: avg_amount=0
"""
BODY = """\
SELECT AVG(x) AS avg_amount FROM t WHERE k = $k AND day < $day;
SELECT COUNT(*) AS n_sales FROM t WHERE day >= $day;
SELECT $price AS price;
"""


@pytest.fixture()
def setup(tmp_path, write_pipeline):
    con = duckdb.connect(str(tmp_path / "plan.duckdb"))
    con.execute("""CREATE TABLE t AS SELECT (i % 50)::INTEGER AS k, TIMESTAMP '2024-01-01' + to_minutes(i) AS day,
                   (hash(i) % 1000) / 10.0 AS x FROM range(200000) r(i)""")
    approxql.prepare(con, "t", by=["k"])
    pipe = approxql.load_pipeline(write_pipeline(header=HEADER, body=BODY), con=con, warm=True)
    yield con, pipe
    con.close()


REQUESTS = [{"k": k, "day": f"2024-0{1 + k % 4}-1{k % 10} 06:00", "price": 2.0} for k in range(0, 60, 3)]  # k >= 50: none


def test_exact_reads_the_copy_where_its_order_finds_the_rows(setup):
    con, pipe = setup
    bound = [bind_request(list(pipe.params), r) for r in REQUESTS]
    for b in bound:
        served, note, _ = pipe.served_exact_raw(b)
        assert note == "" and served.keys() == pipe.exact_raw(b).keys()
        for name, value in pipe.exact_raw(b).items():
            assert served[name] == (pytest.approx(value, rel=1e-12) if value is not None else None), (b, name)
    plan = pipe._served
    sql = plan.on_copies.sql
    with con.cursor() as cur:
        prepared = lookup(cur, "t")
    assert prepared.slices == 1 and sql.count("t__approxql_sample") == 1 and prepared.table(0) in sql   # q1: the slice
    assert plan.current == f'((SELECT count(*) FROM "t") = {prepared.source_rows})'   # the count of that prepare
    assert "FROM t WHERE day >=" in sql.replace('"', "")   # q2 pins no k: the copy's order would not help
    q1, q2 = pipe.spec.aggregate_queries
    assert finds_rows(q1, prepared) and not finds_rows(q2, prepared)


def test_a_query_exact_at_fraction_one_reads_the_copy(setup):
    con, pipe = setup
    plans = pipe.sampling_plans()
    assert plans["q1"].exact_plan is not None and plans["q2"].exact_plan is None
    for r in REQUESTS[:6]:
        pred = pipe.predict(r, initial_fraction=1.0, learn=False)
        exact = pipe.predict_exact(r)
        assert pred.exact and pred.value == pytest.approx(exact.value, rel=1e-12)


def test_a_stale_copy_sends_exact_to_the_source(setup):
    con, pipe = setup
    con.execute("INSERT INTO t VALUES (3, TIMESTAMP '2023-12-31', 1e7)")   # after prepare: the copy misses it
    r = {"k": 3, "day": "2024-02-01", "price": 2.0}
    b = bind_request(list(pipe.params), r)
    served, note, _ = pipe.served_exact_raw(b)
    assert "stale" in note and "approxql prepare again" in note
    assert served["avg_amount"] == pytest.approx(pipe.exact_raw(b)["avg_amount"]) and served["avg_amount"] > 1000
    pred = pipe.predict(r, initial_fraction=1.0, learn=False)          # every query exact at once
    assert "stale" in pred.stop_reason and pred.value == pytest.approx(pipe.predict_exact(r).value)
    from approxql.sampling import QuerySampler
    sampler = QuerySampler(pipe.sampling_plans()["q1"], pipe.engine, b, seed=1)
    with con.cursor() as cur:
        sampler.advance(cur, 1.0)                                       # one query exact
    result = sampler.result()
    assert result.exact and result.values["avg_amount"] == pytest.approx(served["avg_amount"])
    assert "stale" in result.reasons["avg_amount"]


def test_a_copy_prepared_again_after_load_sends_exact_to_the_source(setup, write_pipeline):
    """The plan reads the copy's one slice, named for its prepare: a later prepare drops it, and
    the read gives way to the source with a note, until the pipeline is loaded again."""
    con, pipe = setup
    r = {"k": 3, "day": "2024-02-01", "price": 2.0}
    b = bind_request(list(pipe.params), r)
    assert pipe.served_exact_raw(b)[1] == ""                 # the plan is made on first use
    approxql.prepare(con, "t", by=["k"], seed=9)
    served, note, _ = pipe.served_exact_raw(b)
    assert "prepared again" in note and "load the pipeline again" in note
    assert served["avg_amount"] == pytest.approx(pipe.exact_raw(b)["avg_amount"], rel=1e-12)
    pred = pipe.predict(r, initial_fraction=1.0, learn=False)
    assert pred.exact and "prepared again" in pred.stop_reason and pred.value == pytest.approx(pipe.predict_exact(r).value)
    fresh = approxql.load_pipeline(write_pipeline(header=HEADER, body=BODY), con=con, warm=True)
    served, note, _ = fresh.served_exact_raw(b)
    assert note == "" and lookup(con.cursor(), "t").table(0) in fresh._served.on_copies.sql


def test_only_a_pinned_leading_entity_reads_the_copy(setup):
    con, pipe = setup
    from approxql.pipeline_file import parse_pipeline
    with con.cursor() as cur:
        prepared = lookup(cur, "t")
    spec = parse_pipeline(HEADER.replace("avg_amount, n_sales, price", "a, b, c, d").replace("avg_amount=0", "a=0") + """\
SELECT AVG(x) AS a FROM t WHERE k = $k;
SELECT AVG(x) AS b FROM t WHERE k > $k;
SELECT AVG(x) AS c FROM t AS u JOIN t AS v USING (k) WHERE u.k = $k;
SELECT x AS d FROM t WHERE k = $k AND day = $day;
""")
    a, b, c, d = spec.queries
    assert finds_rows(a, prepared) and not finds_rows(b, prepared) and not finds_rows(c, prepared)
    assert d.kind is QueryKind.LOOKUP and not finds_rows(d, prepared)
    bucketed = prepared.__class__(**{**prepared.__dict__, "by": ("date_trunc('hour', day)", "k")})
    assert not finds_rows(a, bucketed)


def test_the_faster_read_serves_once_both_were_timed_on_the_same_requests():
    from approxql.sampling.exact_plan import BOTH, COPIES, RETRY, SOURCES, TRIALS, Race
    race = Race()
    for i in range(TRIALS):             # both reads of each of the first requests, in turn first
        assert race.next() == BOTH and race.copies_first() == (i % 2 == 0)
        race.record(6.4, 5.7)            # the copy with its currency check: slower here
    picks = [race.next() for _ in range(2 * RETRY)]
    assert picks.count(BOTH) == 2 and picks.count(SOURCES) == 2 * RETRY - 2 and COPIES not in picks
    for _ in range(8):
        race.record(1.0, 5.7)            # the copy became faster: it takes over
    picks = [race.next() for _ in range(RETRY)]
    assert picks.count(COPIES) == RETRY - 1 and picks.count(BOTH) == 1


def test_a_near_tie_goes_to_the_source():
    """The copy's read also runs its currency check: it serves only when clearly faster."""
    from approxql.sampling.exact_plan import COPIES, EDGE, RETRY, SOURCES, TRIALS, Race
    for ratio, pick in ((1 - EDGE / 2, SOURCES), (1 - 2 * EDGE, COPIES)):
        race = Race()
        for _ in range(TRIALS):
            race.next()
            race.record(5.0 * ratio, 5.0)
        assert [race.next() for _ in range(RETRY - TRIALS - 1)].count(pick) == RETRY - TRIALS - 1


def test_the_race_decides_by_ratios_on_the_same_request_not_by_times_of_different_requests():
    """Requests whose reads take 1 to 9 ms: the copy is 10 % faster on each, and that decides,
    whatever sizes the requests that were timed happened to have."""
    from approxql.sampling.exact_plan import COPIES, TRIALS, Race
    race = Race()
    for size in [9.0, 1.0, 9.0, 1.0, 9.0, 1.0][:TRIALS]:
        race.next()
        race.record(0.9 * size, size)
    assert race.next() == COPIES


def test_served_exact_equals_exact_whichever_read_serves(setup):
    con, pipe = setup
    bound = [bind_request(list(pipe.params), r) for r in REQUESTS]
    for _ in range(3):
        for b in bound:                  # enough runs for both reads to be timed and chosen
            served, note, _ = pipe.served_exact_raw(b)
            assert note == ""
            for name, value in pipe.exact_raw(b).items():
                assert served[name] == (pytest.approx(value, rel=1e-12) if value is not None else None)
    from approxql.sampling.exact_plan import TRIALS
    assert len(pipe._served.race._ratios) >= TRIALS


def test_a_whole_row_reference_sees_the_source_row_on_the_copy(tmp_path, write_pipeline):
    """Review: the copy's rows carry the key column; COUNT(DISTINCT t) counted 10 rows on the copy
    where the source has 2 distinct rows."""
    con = duckdb.connect(str(tmp_path / "rows.duckdb"))
    con.execute("CREATE TABLE t AS SELECT (i % 2)::INTEGER AS k, (i % 4 // 2)::DOUBLE AS x FROM range(40) r(i)")
    approxql.prepare(con, "t", by=["k"])
    body = "SELECT COUNT(DISTINCT t) AS d, COUNT(*) AS n FROM t WHERE k = $k;\nSELECT $price AS price;\n"
    header = HEADER.replace("avg_amount, n_sales, price", "d, n, price").replace("-- fill: avg_amount=0\n", "")
    pipe = approxql.load_pipeline(write_pipeline(header=header, body=body), con=con, warm=True)
    b = bind_request(list(pipe.params), {"k": 1, "day": "2024-01-01", "price": 1.0})
    assert pipe.exact_raw(b)["d"] == 2
    for _ in range(8):                   # both reads, whichever the race picks
        served, note, _ = pipe.served_exact_raw(b)
        assert served["d"] == 2 and served["n"] == 20 and note == ""
    assert "__approxql_sample" in pipe._served.on_copies.sql
    con.close()


def test_only_the_race_trials_report_a_read_that_timed_the_race(setup):
    """The first requests read both ways, and say how long the read that only timed the race took,
    so whole-request learning can leave it out; once decided, a request reads one way and says 0."""
    from approxql.sampling.exact_plan import RETRY, TRIALS
    con, pipe = setup
    b = bind_request(list(pipe.params), REQUESTS[1])
    timed = [pipe.served_exact_raw(b)[2] for _ in range(TRIALS + 5)]
    assert all(ms > 0 for ms in timed[:TRIALS]) and timed[TRIALS:] == [0.0] * 5
    assert len(pipe._served.race._ratios) == TRIALS < RETRY


@pytest.mark.parametrize("stale", [False, True])
def test_on_a_read_only_database_the_first_check_settles_the_copies(tmp_path, write_pipeline, monkeypatch, stale):
    """No one can write a database this process opened read-only: after the first check, exact
    reads the copy unchecked (current) or goes straight to the source (stale), with the same values."""
    import approxql.sampling.exact_plan as exact_plan
    path = str(tmp_path / "frozen.duckdb")
    con = duckdb.connect(path)
    con.execute("""CREATE TABLE t AS SELECT (i % 50)::INTEGER AS k, TIMESTAMP '2024-01-01' + to_minutes(i) AS day,
                   (hash(i) % 1000) / 10.0 AS x FROM range(200000) r(i)""")
    approxql.prepare(con, "t", by=["k"])
    if stale:
        con.execute("INSERT INTO t VALUES (3, TIMESTAMP '2023-12-31', 1e7)")
    con.close()
    checks = []
    real = exact_plan.read_while_checking
    monkeypatch.setattr(exact_plan, "read_while_checking", lambda *a: checks.append(1) or real(*a))
    for read_only in (True, False):
        con = duckdb.connect(path, read_only=read_only)
        pipe = approxql.load_pipeline(write_pipeline(header=HEADER, body=BODY), con=con, warm=True)
        checks.clear()
        for r in REQUESTS[:6]:
            b = bind_request(list(pipe.params), r)
            served, note, _ = pipe.served_exact_raw(b)
            assert ("stale" in note) == stale
            for name, value in pipe.exact_raw(b).items():
                assert served[name] == (pytest.approx(value, rel=1e-12) if value is not None else None), (r, name)
        # opened for writing, every read of the copy checks: at least the race's trials, which read both
        assert len(checks) == 1 if read_only else len(checks) >= exact_plan.TRIALS, (read_only, checks)
        assert pipe._served.verdict.settled is ((not stale) if read_only else None)
        con.close()
