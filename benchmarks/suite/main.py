"""``python -m benchmarks`` / ``approxql bench``: run the suite and write the report."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from tqdm import tqdm

from .pipelines import NAMES, available
from .report import write
from .run import run_pipeline

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="approxql bench", description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="*", metavar="PIPELINE", help=f"any of {', '.join(NAMES)} (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="data size factor (rows per request grow with it)")
    ap.add_argument("--requests", type=int, default=200, help="requests served per pipeline and system")
    ap.add_argument("--oracle", type=int, default=40, help="requests searched offline for the oracle floor")
    ap.add_argument("--data", default="/tmp/approxql_bench", help="folder of the generated databases (reused)")
    ap.add_argument("--out", default=None, help="report folder (default benchmarks/results/<date>)")
    ap.add_argument("--retrain", action="store_true", help="train the models again")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    known = available()
    chosen = args.pipelines or list(known)
    unknown = [p for p in chosen if p not in known]
    if unknown:
        ap.error(f"unknown pipeline(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if args.scale <= 0 or args.requests < 1:
        ap.error("--scale must be > 0 and --requests >= 1")
    runs = []
    with tqdm(total=len(chosen) * args.requests, desc="benchmark", unit="req") as bar:
        for name in chosen:
            bar.set_postfix_str(name)
            runs.append(run_pipeline(known[name], scale=args.scale, requests=args.requests, data_dir=Path(args.data),
                                     seed=args.seed, retrain=args.retrain, oracle=args.oracle, progress=bar))
    out = Path(args.out) if args.out else RESULTS / str(dt.date.today())
    path = write(runs, out, "approxql bench " + " ".join(argv))
    print(path.read_text().split("## ", 2)[1].split("\n", 1)[1])   # the summary table
    print(f"wrote {path} and plots in {out}")
    return 0
