"""A tiny-scale run of the whole benchmark suite: every pipeline, every system, the report and plots."""
from __future__ import annotations

import pytest

from benchmarks.suite.main import main
from benchmarks.suite.pipelines import NAMES, available
from benchmarks.suite.run import SYSTEMS, order_for


def test_every_pipeline_is_available():
    assert list(available()) == [n for n in NAMES if n in available()]
    assert {"trips", "flights"} <= set(available())


def test_every_system_runs_in_every_position_equally_often():
    orders = [order_for(i) for i in range(3 * len(SYSTEMS))]
    assert all(sorted(o) == sorted(SYSTEMS) for o in orders)
    for position in range(len(SYSTEMS)):
        seen = [o[position] for o in orders]
        assert all(seen.count(s) == 3 for s in SYSTEMS)


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
