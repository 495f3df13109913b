"""Is the profiler right? For three suite pipelines: profile one set of requests with an SLO between
the pipeline's fixed-1 % latency and its exact latency (their midpoint, then their geometric mean),
take the recommended fraction, then serve a disjoint set of requests with one sample at that fraction
(``policy="fixed"``) and compare the median latency measured with the one the profiler predicted
(within 25 % passes). Each is done over several rounds, since a shared machine's load drifts.

    python benchmarks/profile_check.py [battery:10 fraud:3 tick:5] [--requests 100] [--rounds 3] [--threads N]

``name:scale``: databases at scale 1 that the suite cached in /tmp/approxql_bench are opened
read-only; others are generated (and prepared) once in --data, with models trained on their own
exact features the way the suite trains them, into --data as well (never into models/).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import approxql  # noqa: E402
from approxql.engines import DuckDBEngine  # noqa: E402
from approxql.training import feature_matrix, fit_and_export  # noqa: E402
from approxql.profiler.peak import warm  # noqa: E402
from benchmarks.suite.pipelines import available  # noqa: E402

CACHE = Path("/tmp/approxql_bench")
RESULTS = Path(__file__).resolve().parent / "results" / "profile_check.md"   # --out
WITHIN = 0.25
DEFAULT = ("battery:10", "fraud:3", "tick:5")


def database(bp, scale: float, data: Path) -> Path:
    """The suite's cached database at scale 1 (used read-only), else one generated here."""
    cached = CACHE / f"{bp.name}_s{scale:g}_seed0.duckdb"
    if scale == 1 and cached.is_file():
        return cached
    path = data / f"{bp.name}_s{scale:g}.duckdb"
    with duckdb.connect(str(path)) as con:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '__check_done'").fetchall()[0][0]:
            print(f"  generating {bp.name} at scale {scale:g} in {path} ...", flush=True)
            bp.generate(con, scale, 0)
            approxql.prepare(con, bp.table, by=list(bp.by), stratify=bp.stratify)
            con.execute("CREATE TABLE __check_done AS SELECT 1 AS done")
            con.execute("CHECKPOINT")
    return path


def pipeline_file(bp, scale: float, con, data: Path) -> Path:
    """A copy of the suite's pipeline file whose model is trained here for this scale (the suite's
    way: the first ``train`` requests, 80 % fit, delta half the held-out MAE)."""
    tag = f"{bp.name}_s{scale:g}"
    sql, model, meta = data / "sql" / f"{tag}.sql", data / "models" / f"{tag}.onnx", data / "models" / f"{tag}.json"
    text = bp.sql_path.read_text()
    text = re.sub(r"^-- model: .*$", f"-- model: ../models/{tag}.onnx", text, flags=re.M)
    if not model.is_file() or not meta.is_file():
        print(f"  training the {bp.name} model at scale {scale:g} ...", flush=True)
        sql.parent.mkdir(parents=True, exist_ok=True)
        sql.write_text(text)
        spec = approxql.read_pipeline_file(sql)
        table = con.sql(f"SELECT * FROM {bp.name}_requests LIMIT {bp.train}").to_arrow_table()
        X = feature_matrix(spec, DuckDBEngine(con), table.select([p.name for p in spec.params]))
        y = np.asarray(table.column("label").to_pylist())
        cut = int(0.8 * len(X))
        report = fit_and_export(spec, bp.make_model(), X[:cut], y[:cut], X[cut:], y[cut:])
        meta.write_text(json.dumps({"metric": report.metric, "score": report.model_score,
                                    "delta": report.model_score / 2 if bp.task == "regression" else None}))
    delta = json.loads(meta.read_text())["delta"]
    if delta is not None:
        text = re.sub(r"^-- delta: .*$", f"-- delta: {delta:.3g}", text, flags=re.M)
    sql.parent.mkdir(parents=True, exist_ok=True)
    sql.write_text(text)
    return sql


def median_latency(call, requests, warm: int = 5) -> float:
    for i, r in enumerate(requests[:warm]):
        call(r, 50_000 + i)
    return statistics.median(call(r, i).latency_ms for i, r in enumerate(requests))


SLO_RULES = {   # where between one 1 % sample (L1) and exact (LE) the latency target sits
    "midpoint": lambda one, ex: (one + ex) / 2,
    "geometric": lambda one, ex: (one * ex) ** 0.5,     # nearer the sample: the fraction is not capped as often
}


def check(short: str, scale: float, n: int, rounds: int, data: Path, threads: int | None) -> list[dict]:
    bp = available()[short]
    path = database(bp, scale, data)
    con = duckdb.connect(str(path), read_only=True)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    sql = pipeline_file(bp, scale, con, data)
    pipe = approxql.load_pipeline(sql, con=con, warm=True)
    params = [p.name for p in pipe.params]
    rows = con.sql(f"SELECT {', '.join(params)} FROM {bp.name}_requests").to_arrow_table().to_pylist()
    order = np.random.default_rng(0).permutation(len(rows))
    profile_set = [rows[i] for i in order[:n]]
    measure_set = [rows[i] for i in order[n:2 * n]]         # disjoint from the profiled requests
    delta = pipe.spec.delta

    def fixed(p):   # served as a server would: learning (which picks how small reads are read) on
        return lambda r, i: pipe.predict(r, seed=i, policy="fixed", initial_fraction=p, delta=delta)

    # one 1 % sample and exact on the profiled requests, interleaved, the data in memory as the
    # profiler has it (it reads every table once before timing)
    warm(pipe, profile_set[0])
    one, ex = [], []
    for i, r in enumerate(profile_set):
        one.append(fixed(0.01)(r, i).latency_ms)
        ex.append(pipe.predict_exact(r).latency_ms)
    one, ex = statistics.median(one), statistics.median(ex)
    out = []
    for rule, at in SLO_RULES.items():
        slo = round(at(one, ex), 2)
        print(f"  SLO {slo} ms ({rule} of {one:.2f} and {ex:.2f} ms)", flush=True)
        trials = []
        for k in range(rounds):      # a shared machine's load drifts: profile and measure, several times
            t0 = time.perf_counter()
            prof = approxql.profile(pipe, profile_set, slo_ms=slo, seed=1000 * k)
            took = time.perf_counter() - t0
            rec = prof.recommendation
            if rec.fraction is None:
                measured = None
            elif rec.fraction >= 1:
                measured = median_latency(lambda r, i: pipe.predict_exact(r), measure_set)
            else:
                measured = median_latency(fixed(rec.fraction), measure_set)
            err = None if measured is None or rec.predicted_ms is None else rec.predicted_ms / measured - 1
            trials.append({"fraction": rec.fraction, "predicted": rec.predicted_ms, "measured": measured,
                           "error": err, "profile_s": took, "report": prof.text()})
            print(f"    round {k + 1}: fraction {rec.fraction}, predicted {rec.predicted_ms}, measured {measured}",
                  flush=True)
        prof.save_png(out_dir() / f"profile_check_{bp.name}_{rule}.png")
        errors = [t["error"] for t in trials if t["error"] is not None]
        mid = sorted(trials, key=lambda t: (t["error"] is None, t["error"] or 0))[len(errors) // 2] if errors else trials[0]
        out.append({"pipeline": bp.name, "scale": scale, "rows": sum(q.matching for q in prof.queries), "fixed1": one,
                    "exact": ex, "rule": rule, "slo": slo,
                    **{k: mid[k] for k in ("fraction", "predicted", "measured", "error")},
                    "ok": mid["error"] is not None and abs(mid["error"]) <= WITHIN, "trials": trials})
    con.close()
    return out


def table(results: list[dict]) -> str:
    lines = ["| pipeline | scale | rows per request (median) | fixed 1 % ms | exact ms | SLO | recommended fraction | "
             "predicted ms | measured ms | error | within 25 % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        frac = "-" if r["fraction"] is None else ("exact" if r["fraction"] >= 1 else f"{r['fraction']:.3g}")
        lines.append(f"| {r['pipeline']} | {r['scale']:g} | {r['rows']:,.0f} | {r['fixed1']:.2f} | {r['exact']:.2f} | "
                     f"{r['slo']:.2f} ms ({r['rule']}) | {frac} | {_f(r['predicted'], '.2f')} | "
                     f"{_f(r['measured'], '.2f')} | {_f(r['error'], '+.1%')} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="*", default=list(DEFAULT), metavar="NAME:SCALE")
    ap.add_argument("--requests", type=int, default=100, help="requests profiled, and as many others measured")
    ap.add_argument("--rounds", type=int, default=3, help="profile-then-measure rounds per pipeline; the median counts")
    ap.add_argument("--data", default="/tmp/approxql_profile_check", help="folder for generated databases and models")
    ap.add_argument("--out", default=str(RESULTS), help="the Markdown report (plots beside it)")
    ap.add_argument("--label", default="", help="a line about the code measured, for the report")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's own choice)")
    args = ap.parse_args(argv)
    RESULTS = Path(args.out)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    results = []
    for item in args.pipelines:
        short, _, scale = item.partition(":")
        print(f"{short} (scale {scale or 1}):", flush=True)
        results += check(short, float(scale or 1), args.requests, args.rounds, data, args.threads)
    text = table(results)
    print(text)
    write(results, text, " ".join(args.pipelines), args)
    return 0 if all(r["ok"] for r in results) else 1


def out_dir() -> Path:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    return RESULTS.parent


def write(results, text: str, pipelines: str, args) -> None:
    import platform
    body = [
        "# Profiler reality check", "",
        f"`python benchmarks/profile_check.py {pipelines} --requests {args.requests} --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else "") + "`", "",
        f"Machine: {platform.machine()}, 2 cores shared with other jobs, DuckDB {duckdb.__version__}. {args.label}", "",
        "For each pipeline, one 1 % sample and exact are timed on "
        f"{args.requests} requests (interleaved, data in memory), and the SLO is put between the two medians: at "
        "their midpoint, then at their geometric mean (nearer the sample). For each SLO, "
        f"{args.rounds} times: `approxql.profile` replays those requests and recommends the largest fraction whose "
        "predicted latency L(p) = C + sum_q (a_q + p (m_q b_q + s_q c_q)) fits the SLO (at most 0.5, the largest "
        f"fraction it measures), and a disjoint set of {args.requests} requests is served with one sample at that "
        "fraction (`policy=\"fixed\"`, or exactly when the profiler says exact meets the SLO); `measured` is their "
        "median latency, `error` = predicted / measured - 1. The table shows the median round; every round is "
        "listed below.", "",
        text, "",
    ]
    for r in results:
        body += [f"## {r['pipeline']} (scale {r['scale']:g}), SLO {r['slo']:g} ms ({r['rule']})", "",
                 "| round | fraction | predicted ms | measured ms | error | profiling s |", "|---|---|---|---|---|---|"]
        for k, t in enumerate(r["trials"], 1):
            body.append(f"| {k} | {_f(t['fraction'], '.3g')} | {_f(t['predicted'], '.2f')} | {_f(t['measured'], '.2f')} | "
                        f"{_f(t['error'], '+.1%')} | {t['profile_s']:.1f} |")
        body += ["", f"![stages](profile_check_{r['pipeline']}_{r['rule']}.png)", "", "The last round's profile:", "",
                 "```", r["trials"][-1]["report"], "```", ""]
    RESULTS.write_text("\n".join(body))
    print(f"wrote {RESULTS}")


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


if __name__ == "__main__":
    sys.exit(main())
