"""A tiny-scale run of the whole benchmark suite: every pipeline, every system, the report and plots."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.suite.main import main
from benchmarks.suite.pipelines import NAMES, available
from benchmarks.suite.run import SYSTEMS, order_for


def test_every_pipeline_is_available():
    assert list(available()) == [n for n in NAMES if n in available()]
    assert {"trips", "flights"} <= set(available())


def test_systems_run_in_a_balanced_order():
    n = len(SYSTEMS)
    orders = [order_for(i) for i in range(2 * n)]
    assert all(sorted(o) == sorted(SYSTEMS) for o in orders)
    for position in range(n):                        # each system in each position twice
        seen = [o[position] for o in orders]
        assert all(seen.count(s) == 2 for s in SYSTEMS)
    after = [(o[k], o[k + 1]) for o in orders for k in range(n - 1)]
    for a in SYSTEMS:                                # and right after each other system twice
        for b in SYSTEMS:
            if a != b:
                assert after.count((a, b)) == 2, (a, b)


def test_tiny_run_writes_report_and_plots(tmp_path, capsys):
    names = list(available())
    assert main([*names, "--scale", "0.01", "--requests", "6", "--oracle", "2", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    for bp in available().values():
        assert f"## {bp.name} (" in report
    for s in SYSTEMS:
        assert f"| {s} |" in report
    for png in ("latency.png", "speedup.png", "guarantee.png", "stages.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["nonsense", "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["trips", "--scale", "0", "--data", str(tmp_path)])


def test_paired_ratio_sees_through_drift():
    """A machine that slows down through the run (both systems alike) leaves the paired ratio
    at the true 1.05; its bootstrap interval is fixed by the seed and holds it."""
    from benchmarks.suite.report import paired_ratio
    rng = np.random.default_rng(3)
    drift = np.linspace(3.0, 9.0, 200) * rng.lognormal(0, 0.05, 200)
    exact = drift * rng.lognormal(0, 0.02, 200)
    approx = 1.05 * drift * rng.lognormal(0, 0.02, 200)
    mid, low, high = paired_ratio(approx, exact)
    assert low <= 1.05 <= high and high - low < 0.02 and abs(mid - 1.05) < 0.01
    assert paired_ratio(approx, exact) == (mid, low, high)            # the same numbers every run
    assert paired_ratio(exact, exact) == (1.0, 1.0, 1.0)


def test_a_win_over_biathlon_is_judged_per_request_and_on_average():
    """Faster on most requests, slower on the 15 % served exactly, and with Biathlon's tail of
    many-round requests: approxql wins, though its median latency is higher. Faster on most
    requests but dearer on average: no win. A tie, whose interval straddles 1: no win."""
    from benchmarks.suite.report import beats, paired_ratio
    rng = np.random.default_rng(5)
    drift = np.linspace(3.0, 9.0, 200) * rng.lognormal(0, 0.05, 200)
    biathlon = drift * rng.lognormal(0, 0.02, 200)
    approx = 0.93 * drift * rng.lognormal(0, 0.02, 200)
    slow = rng.random(200) < 0.4
    approx[slow] = 1.2 * biathlon[slow]
    tail = ~slow & (rng.random(200) < 0.1)
    biathlon_tailed = np.where(tail, 5 * biathlon, biathlon)
    stats = lambda x: {"mean": float(np.mean(x)), "median": float(np.median(x))}  # noqa: E731
    assert np.median(approx) > np.median(biathlon_tailed)
    ok, text = beats(stats(approx), stats(biathlon_tailed), paired_ratio(approx, biathlon_tailed), "faster")
    assert ok and "interval below 1" in text
    assert np.mean(approx) > np.mean(biathlon) and paired_ratio(approx, biathlon)[2] < 1   # the mean alone fails it
    ok, text = beats(stats(approx), stats(biathlon), paired_ratio(approx, biathlon), "faster")
    assert not ok and "interval below 1" in text and ">=" in text
    tie = drift * rng.lognormal(0, 0.02, 200)
    low, _, high = (lambda p: (p[1], p[0], p[2]))(paired_ratio(tie, biathlon))
    assert low < 1 < high                                                           # the interval alone fails it
    ok, text = beats(stats(tie), stats(biathlon), paired_ratio(tie, biathlon), "faster")
    assert not ok and "not below 1" in text
