"""Whether prepared copies are current: one statement on the request's own cursor, just before the
read of a copy, so it sees no later state than the read.

It used to run on a worker thread beside the read. On 2 shared cores that cost more than running
it first: paired in the pipeline (turbofan, 1e6 rows a request) the check first was x0.96 and
x0.955 of the request's latency against beside, and x0.95 twice the day before. Inside the read's
own statement, the count cost more again (turbofan at scale 12: a 0.1 % read 6.2 ms with the check
inside, 4.0 beside). Running it first also skips the read of a copy that is stale."""
from __future__ import annotations

import duckdb


def is_current(cur, condition: str) -> bool:
    """``SELECT condition`` on ``cur``: whether the copies are current. A catalog (or source)
    that is gone makes them not current; any other error is raised."""
    try:
        return bool(cur.execute(f"SELECT {condition}").fetchall()[0][0])
    except duckdb.CatalogException:
        return False
