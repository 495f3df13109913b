"""The profiler: its accounting adds up, its cost model recovers a known cost, its what-ifs give the
hand-solved answers, and ``approxql profile`` works (and fails) as a command."""
from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pytest

import approxql
from approxql.cli import main
from approxql.profiler import costmodel, layout, peak, stages, whatif
from approxql.sampling import catalog
from approxql.training import export_onnx

from conftest import make_pipeline


# -- (1) accounting -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_profile(world):
    pipe = make_pipeline(world, "linear")
    reqs = world["requests"].slice(0, 12).to_pylist()
    for i, r in enumerate(reqs[-3:]):                  # some learned state, which profiling must leave as it was
        pipe.predict(r, seed=100 + i)
    before = _state(pipe)
    prof = approxql.profile(pipe, reqs, slo_ms=1000.0, fractions=(0.05, 0.2, 0.5), sweep_requests=6,
                            layout_requests=3, repeats=2, warmup=2)
    return pipe, reqs, prof, before


def _state(pipe):
    return {q: (pipe.costs.sampling_fit(q), pipe.costs.typical_matching(q), pipe.costs.warm_fraction(q))
            for q in ("q1", "q2", "q3")}


def test_each_request_stages_add_up_to_its_latency(world_profile):
    pipe, reqs, _, _ = world_profile
    for i, r in enumerate(reqs):
        p = pipe.predict(r, seed=i, learn=False)
        total = sum(p.stages_ms.values())
        assert abs(total - p.latency_ms) <= 0.01 + 1e-3 * p.latency_ms, (p.stages_ms, p.latency_ms)
        assert sum(x["ms"] for x in p.reads) <= p.stages_ms["queries"] + 1e-9
        split = stages.split(p, lambda read: 0.2)
        assert sum(split.values()) == pytest.approx(total, rel=1e-9, abs=1e-9)
        assert split["lookups & merge"] >= -1e-9 and split["scan"] >= 0 and split["query overhead"] >= 0
        assert split["query overhead"] <= 0.2 * len(p.reads) + 1e-12


def test_profile_stage_shares_sum_to_one_and_means_to_the_mean_latency(world_profile):
    _, reqs, prof, _ = world_profile
    assert prof.n_requests == len(reqs) and not prof.failed
    assert sum(s.share for s in prof.stages) == pytest.approx(1.0, abs=1e-9)
    assert sum(s.mean_ms for s in prof.stages) == pytest.approx(prof.served.mean, rel=1e-3)
    assert all(s.mean_ms >= -1e-9 for s in prof.stages)
    names = [s.name for s in prof.stages]
    assert names[:3] == ["query overhead", "scan", "lookups & merge"] and "model" in names and "propagation" in names


def test_profile_measures_what_it_reports(world_profile):
    pipe, _, prof, before = world_profile
    assert _state(pipe) == before and before["q1"][1] is not None   # the learned state is as it was
    fitted = [q for q in prof.queries if q.fit is not None]
    assert {q.name for q in fitted} == {"q1", "q2", "q3"}       # all three are sampled from the prepared copy
    for q in fitted:
        assert q.fit.n == 2 * 6 * 3 and q.fit.overhead_ms > 0 and q.matching > 0   # each point twice
        assert q.peak_rows == 60 * 20_000 and 0 < q.utilization < 1.5
    assert [c.fraction for c in prof.sweep] == [0.05, 0.2, 0.5]
    assert prof.recommendation.exact_meets_slo is True          # 1 s: exact fits, and the report says so
    assert whatif.TURN_OFF in prof.recommendation.reason and whatif.TURN_OFF in prof.text()
    assert prof.peak_ms is not None and 0 < prof.peak_ms < prof.served.mean
    lay = {r.query: r for r in prof.layout}
    by = {q.name: q for q in prof.queries}      # q1's time window is not pruned: it reads its entity's rows
    assert by["q1"].scanned == 20_000 and by["q1"].matching < 20_000 and by["q2"].scanned == by["q2"].matching
    assert lay["q1"].sorted_by == ("entity", "ts") and lay["q2"].sorted_by == ("entity",)
    assert lay["q1"].prepared_ms > 0 and lay["q1"].sorted_ms > 0 and "3 profiled entities" in lay["q1"].note
    s = prof.scaleout
    assert s.exact_ms[0] == pytest.approx(prof.exact.median) and list(s.exact_ms) == sorted(s.exact_ms, reverse=True)
    json.dumps(prof.to_dict())


def test_a_failing_request_is_reported_not_fatal(world):
    pipe = make_pipeline(world, "linear")
    reqs = world["requests"].slice(0, 4).to_pylist()
    prof = approxql.profile(pipe, [*reqs[:2], {"entity": 1, "x": 0.0}, *reqs[2:]], fractions=(0.1, 0.5),
                            sweep_requests=2, layouts=False, repeats=1, warmup=0)
    assert prof.n_requests == 4 and len(prof.failed) == 1 and "request 2" in prof.failed[0] and "'ts'" in prof.failed[0]
    assert prof.layout == () and prof.recommendation.exact_meets_slo is None    # no SLO: the median final fraction
    with pytest.raises(approxql.OptionError, match="slo_ms must be a number > 0"):
        approxql.profile(pipe, reqs, slo_ms=0)
    with pytest.raises(approxql.OptionError, match="fractions must be"):
        approxql.profile(pipe, reqs, fractions=(0.5,))


def test_warm_rows_reads_each_requests_rows_on_the_table_and_its_copy(world):
    pipe = make_pipeline(world, "linear")
    reqs = world["requests"].slice(0, 3).to_pylist()
    engine, seen = pipe.engine, []
    real = engine.exact_features

    def spy(compiled, params, cur=None):
        got = real(compiled, params, cur)
        if cur is None:   # (without a cursor it calls itself again with its own)
            seen.append((compiled.sql, {k: params[k] for k in compiled.params}, got))
        return got

    engine.exact_features = spy
    try:
        peak.warm_rows(pipe, reqs)
    finally:
        del engine.exact_features
    assert len(seen) == 2 * len(pipe.spec.aggregate_queries) * len(reqs)   # each query and request, twice
    for (table_sql, bound, on_table), (copy_sql, copy_bound, on_copy) in zip(seen[0::2], seen[1::2]):
        assert "__approxql_sample" not in table_sql
        assert "__approxql_sample" in copy_sql and catalog.KEY in copy_sql    # the key a sample reads too
        assert copy_bound == bound and on_copy == pytest.approx(on_table)  # the same request's same rows


@pytest.mark.parametrize("by, expected", [
    (("pair",), "pair = $pair"),
    (("pair", "date_trunc('hour', ts)"), "pair = $pair AND DATE_TRUNC('HOUR', ts) >= DATE_TRUNC('HOUR', "
                                          "DATE_TRUNC('HOUR', $ts)) AND DATE_TRUNC('HOUR', ts) <= DATE_TRUNC('HOUR', $ts)"),
    (("pair", "ts"), "pair = $pair AND ts >= DATE_TRUNC('HOUR', $ts) AND ts <= $ts"),
    (("venue", "pair"), None),                      # the sort order starts with a column the query leaves open
])
def test_scan_range_of_a_prepared_sort_order(by, expected):
    import sqlglot
    where = sqlglot.parse_one("SELECT 1 FROM t WHERE pair = $pair AND ts >= date_trunc('hour', $ts) AND ts < $ts",
                              read="duckdb").args["where"].this
    got = layout.scan_filter(where, by)
    assert (None if got is None else got.sql("duckdb")) == expected


# -- (2) the cost model ----------------------------------------------------------------------------
def _synthetic(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.geomspace(1e3, 1e6, 12), 10)
    ms = 1.2 + 3e-6 * rows
    return rows, ms * (1 + noise * rng.standard_normal(len(rows)))


def test_cost_model_recovers_a_known_cost():
    rows, ms = _synthetic(0.03)
    f = costmodel.fit(zip(rows, ms))
    assert f.overhead_ms == pytest.approx(1.2, rel=0.03)
    assert f.per_row_ms == pytest.approx(3e-6, rel=0.03)
    assert f.n == 120 and f.r2 > 0.98 and f.rows_range == (1e3, 1e6)
    true = 1.2 + 3e-6 * rows
    expected = math.sqrt(np.mean((ms - true) ** 2)) / np.mean(ms)   # the noise itself, relative
    assert 0.8 * expected < f.rel_rmse < 1.2 * expected
    assert f.predict(5e5) == pytest.approx(2.7, rel=0.02)


def test_cost_model_fit_error_reflects_the_noise():
    exact = costmodel.fit(zip(*_synthetic(0.0)))
    small, large = (costmodel.fit(zip(*_synthetic(n))) for n in (0.02, 0.2))
    assert exact.rel_rmse < 1e-9 and exact.r2 == pytest.approx(1.0)
    assert exact.overhead_ms == pytest.approx(1.2, rel=1e-9) and exact.per_row_ms == pytest.approx(3e-6, rel=1e-9)
    assert small.rel_rmse < large.rel_rmse and large.rel_rmse > 0.1 and large.r2 < small.r2
    one_size = costmodel.fit([(1000, 2.0), (1000, 2.2)])
    assert math.isnan(one_size.r2) and one_size.per_row_ms == 0 and one_size.overhead_ms == pytest.approx(2.1)
    assert costmodel.fit([]) is None
    through = costmodel.fit(zip(*_synthetic(0.02)), overhead_ms=1.2)   # the intercept measured apart
    assert through.overhead_ms == 1.2 and through.per_row_ms == pytest.approx(3e-6, rel=0.02)


def test_two_term_cost_model_separates_matching_and_scanned_rows():
    # a statement reading k rows of its entity to keep n of them: 1.2 ms + n x 3e-6 + k x 5e-7
    rng = np.random.default_rng(1)
    k = np.repeat(np.geomspace(1e4, 1e7, 10), 12)
    n = k * rng.uniform(0.01, 0.5, len(k))
    ms = (1.2 + 3e-6 * n + 5e-7 * k) * (1 + 0.02 * rng.standard_normal(len(k)))
    f = costmodel.fit_scan(zip(n, k, ms))
    assert f.overhead_ms == pytest.approx(1.2, rel=0.05) and f.per_row_ms == pytest.approx(3e-6, rel=0.05)
    assert f.per_scanned_ms == pytest.approx(5e-7, rel=0.05) and f.rel_rmse < 0.03
    one = costmodel.fit(zip(n, ms))                   # rows alone cannot explain it
    assert one.rel_rmse > 3 * f.rel_rmse
    same = costmodel.fit_scan(zip(n, n, ms))          # scan range = matching rows: one term, no split
    assert same.per_scanned_ms == 0 and same == costmodel.fit(zip(n, ms))


# -- (3) what-if logic on constructed cases -----------------------------------------------------------
# L(p) = C + sum_q (a_q + p m_q b_q) = 2 + (1 + p * 1e5 * 1e-5) + (0.5 + p * 5e4 * 2e-5) = 3.5 + 2p
QUERIES = {"q1": whatif.QueryCost(1.0, 1e-5, 1e5), "q2": whatif.QueryCost(0.5, 2e-5, 5e4)}
FINALS = [0.1, 0.3, 0.5, 0.7, 1.0]


def test_scan_range_rows_enter_the_latency_at_p():
    # 1 + p (1e4 x 1e-4 + 1e6 x 2e-6) = 1 + 3p over C = 2; SLO 6.5 -> p* = (6.5 - 3) / 3
    q = {"q": whatif.QueryCost(1.0, 1e-4, 1e4, 2e-6, 1e6)}
    assert whatif.predicted_latency(0.5, 2.0, q) == pytest.approx(4.5)
    assert whatif.largest_fraction(6.5, 2.0, q) == pytest.approx(3.5 / 3)


def test_largest_fraction_with_a_small_read_statement():
    # m = 1e5 rows; reads of <= 1e4 rows (p <= 0.1) use a statement of 0.2 ms + 4e-5 ms/row (4 ms per unit
    # of p), larger ones 1 ms + 1e-5 ms/row (1 ms per unit): L = 2 + 0.2 + 4p below 0.1, 2 + 1 + p above
    q = {"q": whatif.QueryCost(1.0, 1e-5, 1e5, small=(0.2, 4e-5, 0.0), small_rows=1e4)}
    assert q["q"].breakpoint == pytest.approx(0.1)
    assert whatif.predicted_latency(0.05, 2.0, q) == pytest.approx(2.4)
    assert whatif.predicted_latency(0.5, 2.0, q) == pytest.approx(3.5)
    assert whatif.largest_fraction(3.4, 2.0, q, cap=0.5) == pytest.approx(0.4)    # on the upper line
    assert whatif.largest_fraction(2.4, 2.0, q, cap=0.5) == pytest.approx(0.05)   # only the small line fits
    assert whatif.largest_fraction(2.9, 2.0, q, cap=0.5) == pytest.approx(0.1)    # the break itself
    assert whatif.largest_fraction(2.1, 2.0, q, cap=0.5) is None


def test_largest_fraction_matches_the_hand_solved_value():
    assert whatif.predicted_latency(0.25, 2.0, QUERIES) == pytest.approx(4.0)
    assert whatif.largest_fraction(4.5, 2.0, QUERIES) == pytest.approx(0.5)     # (4.5 - 3.5) / 2
    assert whatif.largest_fraction(3.5, 2.0, QUERIES) is None                   # the fixed costs alone
    assert whatif.largest_fraction(100.0, 2.0, QUERIES) == pytest.approx(48.25)      # past 1: any fraction fits
    capped = whatif.recommend(slo_ms=100.0, exact_ms=200.0, fixed_ms=2.0, queries=QUERIES, final_fractions=FINALS,
                              cap=0.5)
    assert capped.fraction == 0.5 and capped.predicted_ms == pytest.approx(4.5) and "up to 0.5" in capped.reason
    rec = whatif.recommend(slo_ms=4.5, exact_ms=10.0, fixed_ms=2.0, queries=QUERIES, final_fractions=FINALS)
    assert rec.fraction == pytest.approx(0.5) and rec.predicted_ms == pytest.approx(4.5)
    assert rec.share_within == pytest.approx(3 / 5) and rec.exact_meets_slo is False
    none = whatif.recommend(slo_ms=3.0, exact_ms=10.0, fixed_ms=2.0, queries=QUERIES, final_fractions=FINALS)
    assert none.fraction is None and "no fraction fits" in none.reason and "3.50 ms" in none.reason


def test_exact_meeting_the_slo_turns_approximation_off():
    rec = whatif.recommend(slo_ms=12.0, exact_ms=10.0, fixed_ms=2.0, queries=QUERIES, final_fractions=FINALS)
    assert rec.fraction == 1.0 and rec.exact_meets_slo is True and rec.predicted_ms == 10.0
    assert "turn approximation off for this pipeline" in rec.reason
    assert whatif.exact_meets_slo(10.0, 10.0) and not whatif.exact_meets_slo(10.01, 10.0)


def test_share_within_and_the_no_slo_recommendation():
    assert whatif.share_within(FINALS, 0.3) == pytest.approx(0.4)
    assert whatif.share_within(FINALS, 0.05) == 0.0 and whatif.share_within(FINALS, 1.0) == 1.0
    assert whatif.share_within([], 0.5) is None
    rec = whatif.recommend(slo_ms=None, exact_ms=10.0, fixed_ms=2.0, queries=QUERIES, final_fractions=FINALS)
    assert rec.fraction == 0.5 and rec.share_within == pytest.approx(0.6) and "median of final" in rec.reason
    assert rec.predicted_ms == pytest.approx(4.5)


def test_peak_rate_latency_formula():
    # 10 ms; statements of 4 ms (1e5 rows, peak 1e5 rows/ms -> 1 ms) and 2 ms (2e4 rows, peak 1e4 -> 2 ms)
    assert whatif.peak_latency(10.0, [(4.0, 1e5, 1e5), (2.0, 2e4, 1e4)]) == pytest.approx(7.0)
    assert whatif.peak_latency(10.0, []) == 10.0


def test_scale_out_model_on_hand_numbers():
    # 10 Gbps = 1.25e6 bytes per ms; 4 nodes x 1250 B = 0.004 ms, plus a 0.1 ms hop
    assert whatif.gather_ms(4, 1250, 10, 0.1) == pytest.approx(0.104)
    assert whatif.scale_out(4, 2.0, 8.0, 1250, 10, 0.1) == pytest.approx(2.0 + 2.0 + 0.104)
    assert whatif.scale_out(1, 2.0, 8.0, 1250, 10, 0.1) == pytest.approx(10.0)    # one node: no gather
    assert whatif.gather_ms(8, 1.25e6, 1, 0.0) == pytest.approx(80.0)             # 8 x 1.25 MB at 1 Gbps


# -- (4) the command ----------------------------------------------------------------------------------
PIPE = """-- name: {name}
-- model: model.onnx
-- task: regression
-- params: entity INTEGER, ts TIMESTAMP, x DOUBLE
-- inputs: avg_a, n_a, x
-- delta: 2
SELECT AVG(a) AS avg_a, COUNT(*) AS n_a FROM events WHERE entity = $entity AND ts < $ts;
SELECT $x AS x;
"""


@pytest.fixture(scope="module")
def small_db(tmp_path_factory, linear_model):
    root = tmp_path_factory.mktemp("profile_cli")
    path = root / "small.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("""CREATE TABLE events AS SELECT i % 4 AS entity,
                       TIMESTAMP '2024-01-01' + to_seconds((hash(i * 3 + 1) % 2592000)::BIGINT) AS ts,
                       50 + 20 * ((hash(i * 3 + 2) % 10000) / 10000.0 - 0.5) AS a FROM range(200000) t(i)""")
        approxql.prepare(con, "events", by=["entity"])
        con.execute("""CREATE TABLE prof_requests AS SELECT (i % 4)::INTEGER AS entity,
                       TIMESTAMP '2024-01-20' + to_hours(i) AS ts, (i % 7)::DOUBLE AS x FROM range(30) t(i)""")
    export_onnx(linear_model, 3, root / "model.onnx", "regression")
    for name in ("prof", "other"):
        (root / f"{name}.sql").write_text(PIPE.format(name=name))
    return root


def test_cli_profile_json_and_png(small_db, capsys):
    png = small_db / "stages.png"
    args = ["profile", str(small_db / "prof.sql"), "--db", str(small_db / "small.duckdb"), "-n", "6", "--json",
            "--slo", "0.5", "--png", str(png), "--nodes", "1,2,4"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"pipeline", "served", "exact", "stages", "queries", "exact_fit", "sweep", "recommendation", "peak_ms",
            "layout", "scaleout", "formulas"} <= set(out)
    assert out["pipeline"] == "prof" and out["n_requests"] == 6 and out["slo_ms"] == 0.5
    assert sum(s["share"] for s in out["stages"]) == pytest.approx(1.0)
    q = out["queries"][0]
    assert q["name"] == "q1" and q["sampled"] and {"overhead_ms", "per_row_ms", "rel_rmse", "r2", "n"} <= set(q["fit"])
    assert {"fraction", "predicted_ms", "share_within", "exact_meets_slo", "reason"} <= set(out["recommendation"])
    assert out["scaleout"]["nodes"] == [1, 2, 4] and len(out["scaleout"]["exact_ms"]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_profile_text_from_a_requests_file(small_db, capsys):
    reqs = small_db / "reqs.jsonl"
    reqs.write_text("\n".join(json.dumps({"entity": i % 4, "ts": f"2024-01-2{i} 00:00", "x": 1.0}) for i in range(5)))
    assert main(["profile", str(small_db / "other.sql"), "--db", str(small_db / "small.duckdb"),
                 "--requests", str(reqs)]) == 0
    text = capsys.readouterr().out
    assert "approxql profile: other — 5 requests" in text
    for part in ("stages of the served requests", "what-if", "L(p) = C + sum_q (a_q + p (m_q b_q + s_q c_q))",
                 "recommended fraction", "data layout", "a MODEL, not a measurement"):
        assert part in text


@pytest.mark.parametrize("extra, message", [
    (["--slo", "-3"], "--slo must be a number > 0"),
    (["--slo", "fast"], "--slo must be a number > 0"),
    (["--nodes", "1,two"], "--nodes must be comma-separated"),
    (["--bandwidth-gbps", "0"], "--bandwidth-gbps must be a number > 0"),
    (["-n", "0"], "-n must be >= 1"),
    (["--requests", "missing.jsonl"], "requests file missing.jsonl not found"),
])
def test_cli_profile_bad_arguments(small_db, capsys, extra, message):
    assert main(["profile", str(small_db / "prof.sql"), "--db", str(small_db / "small.duckdb"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("approxql: error: ") and message in err


def test_cli_profile_without_requests_or_with_wrong_columns(small_db, tmp_path, capsys):
    db = str(small_db / "small.duckdb")
    assert main(["profile", str(small_db / "other.sql"), "--db", db]) == 2
    assert "no table 'other_requests'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("entity,x\n1,2.0\n")
    assert main(["profile", str(small_db / "prof.sql"), "--db", db, "--requests", str(bad)]) == 2
    assert "lacks the pipeline's parameter(s) ts" in capsys.readouterr().err
    assert main(["profile", str(small_db / "prof.sql"), "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "database file" in capsys.readouterr().err
