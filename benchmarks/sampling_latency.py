"""Latency of exact, 1 % and 10 % sampling for each strategy, on a table where ~10^7 rows match a request.

    python benchmarks/sampling_latency.py [--rows N] [--repeat R] [--db PATH] [--out DIR]

Generates ``trips`` (zone, ts, fare, distance) deterministically in DuckDB, in time order with the
zones interleaved (as trips arrive), then a prepared sample order by zone and a copy sorted by
(zone, ts) — the best layout for exact queries, where DuckDB skips row groups by zone maps. Every
case runs once untimed, then R times round-robin; ratios come from this one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
from tqdm import tqdm

from approxql.engines import DuckDBEngine
from approxql.pipeline_file import parse_pipeline
from approxql.sampling import QuerySampler, compile_query, prepare
from approxql.sampling.catalog import lookup

ZONES = 4
CHUNK = 2_000_000
SPAN_US = 366 * 86_400 * 10**6  # the year 2024
HEADER = ("-- name: bench\n-- model: m.onnx\n-- task: regression\n"
          "-- params: zone INTEGER, ts TIMESTAMP\n-- inputs: avg_fare\n")
SHAPES = {  # shape -> WHERE clause; the first is the headline (a whole zone, rows/ZONES matching rows)
    "whole zone": "zone = $zone",
    "zone, 7-day window": "zone = $zone AND ts >= $ts - INTERVAL 7 DAY AND ts < $ts",
}
PARAMS = {"zone": 1, "ts": datetime(2024, 7, 1)}
FRACTIONS = (0.01, 0.1, 1.0)
# hash(i * 5 + k), not hash(i, k): DuckDB's hash(i, k) is hash(i) mixed with a constant, so columns built
# from it are correlated with each other and with the prepared sample key hash(rowid, seed)
UNIFORM = "((hash(i * 5 + {k}) >> 11) * (1.0 / 9007199254740992))"


def table_rows(con, table: str) -> int | None:
    """Row count of ``table``, or None when it does not exist."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0]:
        return None
    return con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]


def generate(con, rows: int) -> None:
    """Write ``trips`` in chunks: a value is a hash of the row number, so every run writes the same table."""
    for t in ("trips", "trips_sorted", "trips__approxql_sample"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute("CREATE TABLE trips (zone INTEGER, ts TIMESTAMP, fare DOUBLE, distance DOUBLE)")
    u = [UNIFORM.format(k=k) for k in range(4)]
    for lo in tqdm(range(0, rows, CHUNK), desc="generate", unit="chunk"):
        con.execute(f"""INSERT INTO trips SELECT (hash(i * 5) % {ZONES})::INTEGER,
            TIMESTAMP '2024-01-01' + to_microseconds((i * {SPAN_US / rows!r})::BIGINT),
            round(2.5 + 40 * {u[1]} * {u[2]} + 8 * {u[3]}, 2), round(0.3 + 12 * {u[1]}, 2)
            FROM range({lo}, {min(rows, lo + CHUNK)}) AS t(i) ORDER BY i""")


def setup(con, rows: int) -> dict[str, float]:
    """Generate, prepare and sort unless the database already holds them at this size; seconds per step."""
    took: dict[str, float] = {}
    steps = [("generate", lambda: table_rows(con, "trips") == rows, lambda: generate(con, rows)),
             ("prepare", lambda: (p := lookup(con.cursor(), "trips")) is not None and p.source_rows == rows
              and p.by == ("zone",), lambda: prepare(con, "trips", by=["zone"])),
             ("sorted copy", lambda: table_rows(con, "trips_sorted") == rows,
              lambda: con.execute("CREATE OR REPLACE TABLE trips_sorted AS SELECT * FROM trips ORDER BY zone, ts"))]
    bar = tqdm(steps, desc="setup", unit="step")
    for name, ready, run in bar:
        bar.set_postfix_str(name)
        if ready():
            took[name] = 0.0  # reused from an earlier run
            continue
        t0 = time.perf_counter()
        run()
        con.execute("CHECKPOINT")
        took[name] = time.perf_counter() - t0
    return took


def query(where: str, table: str):
    """The benchmark's feature query over ``table``."""
    sql = f"SELECT AVG(fare) AS avg_fare, COUNT(*) AS n FROM {table} WHERE {where};"
    return parse_pipeline(HEADER + sql).queries[0]


def cases(con, engine, where: str) -> list[dict]:
    """Everything timed for one query shape: the plain exact SQL on each layout, then each strategy."""
    out = []
    for label, table in (("source", "trips"), ("sorted", "trips_sorted"), ("copy", "trips__approxql_sample")):
        compiled = engine.compile_exact([query(where, table)])
        out.append(dict(strategy="exact SQL", reads=table, fraction=1.0, key=label,
                        run=lambda c=compiled: (engine.exact_features(c, PARAMS), None)))
    q = query(where, "trips")
    for strategy in ("prepared", "system", "exact"):
        compiled = compile_query(engine, con, q, strategy=strategy)  # one-time work, not timed
        for p in FRACTIONS if strategy != "exact" else (1.0,):
            sampled = p < 1.0 and strategy == "prepared"
            out.append(dict(strategy=strategy, fraction=p, key=None,
                            reads="trips__approxql_sample" if sampled else "trips",
                            run=lambda c=compiled, p=p: (None, sample(con, engine, c, p))))
    return out


def sample(con, engine, compiled, p: float):
    """One request: a fresh sampler, one advance to ``p``, the estimates."""
    sampler = QuerySampler(compiled, engine, PARAMS)
    with con.cursor() as cur:
        sampler.advance(cur, p)
    return sampler.result()


def measure(con, engine, where: str, repeat: int, desc: str) -> list[dict]:
    """Warm up every case once, then time them round-robin ``repeat`` times."""
    todo = cases(con, engine, where)
    for case in todo:
        case["exact_row"], case["result"] = case["run"]()
        case["ms"] = []
    for _ in tqdm(range(repeat), desc=desc, unit="rep"):
        for case in todo:
            t0 = time.perf_counter()
            case["run"]()
            case["ms"].append(1000 * (time.perf_counter() - t0))
    truth = todo[0]["exact_row"]["avg_fare"]
    medians = {c["key"]: statistics.median(c["ms"]) for c in todo if c["key"]}
    for c in todo:
        c["median"], c["p95"] = statistics.median(c["ms"]), float(np.percentile(c["ms"], 95))
        c["vs_source"], c["vs_sorted"] = medians["source"] / c["median"], medians["sorted"] / c["median"]
        c["vs_copy"] = medians["copy"] / c["median"]
        r = c["result"]
        est = (c["exact_row"] or {}).get("avg_fare") if r is None else r.values["avg_fare"]
        c["err"] = abs(est - truth) / abs(truth) if est is not None and truth else float("nan")
        c["support"] = r.support if r is not None and not r.exact else None
        c["rse"] = r.stderr["avg_fare"] / abs(est) if r is not None and not r.exact and est else 0.0
        c["trusted"] = "" if r is None or c["fraction"] == 1.0 else (
            "fell back to exact" if r.exact else "yes" if r.trusted else "no")
        c["matching"] = (c["exact_row"] or {}).get("n")
    return todo


def table(rows: list[dict]) -> list[str]:
    """The results of one shape as markdown table lines."""
    head = ["strategy", "reads", "fraction", "median ms", "p95 ms", "x vs exact source",
            "x vs exact sorted", "support", "rel. stderr AVG", "rel. error AVG", "trusted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        cells = [c["strategy"], c["reads"], f"{100 * c['fraction']:g} %", f"{c['median']:.1f}", f"{c['p95']:.1f}",
                 f"{c['vs_source']:.1f}", f"{c['vs_sorted']:.1f}", "" if c["support"] is None else f"{c['support']:,}",
                 f"{c['rse']:.2%}", f"{c['err']:.2%}", c["trusted"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Parse options, build the tables, measure every shape, print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40_000_000, help=f"rows in trips ({ZONES} zones)")
    ap.add_argument("--repeat", type=int, default=15, help="timed repetitions per case")
    ap.add_argument("--db", default=None, help="DuckDB file (default /tmp/approxql_sampling_<rows>.duckdb)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of the markdown report")
    args = ap.parse_args()
    db = args.db or f"/tmp/approxql_sampling_{args.rows}.duckdb"
    con = duckdb.connect(db)
    engine = DuckDBEngine(con)
    took = setup(con, args.rows)
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    facts = (f"nproc {os.cpu_count()}, DuckDB {duckdb.__version__} "
             f"(threads {threads}), "
             f"Python {platform.python_version()}, {platform.machine()}; {args.rows:,} rows in {ZONES} zones, "
             f"request zone={PARAMS['zone']} ts={PARAMS['ts']:%Y-%m-%d}, {args.repeat} timed repetitions, db {db}")
    report = ["# Sampling latency", "", facts, ""]
    verdict = ""
    t0 = time.perf_counter()
    for i, (shape, where) in enumerate(SHAPES.items()):
        rows = measure(con, engine, where, args.repeat, shape)
        matching = rows[0]["matching"]
        report += [f"## {shape}: `WHERE {where}` ({matching:,} matching rows)", "", *table(rows), ""]
        p1 = next(c for c in rows if c["strategy"] == "prepared" and c["fraction"] == 0.01)
        line = (f"prepared 1 % speedup: {p1['vs_source']:.1f}x over exact on the same table (source `trips`); "
                f"{p1['vs_copy']:.1f}x over exact on the prepared copy, {p1['vs_sorted']:.1f}x over the sorted copy")
        if i == 0:
            verdict = f"**{'PASS' if p1['vs_source'] >= 10 else 'FAIL'}** (needs >= 10x): {line}"
            report += [verdict, ""]
        else:
            report += [line, ""]
    took["measure"] = time.perf_counter() - t0
    report += ["Seconds: " + ", ".join(f"{k} {v:.1f}" + (" (reused)" if v == 0 else "") for k, v in took.items()),
               "", "`x vs exact source` / `sorted`: speedup over the exact SQL on `trips` / on the copy sorted by "
               "(zone, ts), the best layout for exact queries. "
               "`support`: sampled matching rows. 100 % of every strategy is the exact query on the source."]
    print("\n".join(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampling_latency.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"\nwritten to {out / 'sampling_latency.md'}")


if __name__ == "__main__":
    main()
