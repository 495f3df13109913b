"""Whether prepared copies are current: one statement that sees no later state than the read of
the copy it vouches for.

Before a sample read (``is_current`` on the request's cursor, then the read): those reads take
about a millisecond, and on 2 shared cores a worker thread's hand-off and two statements at once
cost more than the overlap saved (turbofan, 1e6 rows a request, paired in the pipeline: the check
first x0.955-0.965 of the latency with it beside the read). Beside an exact statement on the copy
(``read_while_checking``), which takes several: there the check hides behind it (tick at scale 1,
exact at once on the copy, paired against exact on the source: x0.84 beside, x0.98-1.00 first).
Inside a first read of rows (``PreparedSource.rows_sql(checked=True)``) the check is a column of
the read's own statement, which sees one snapshot: one statement floor instead of two (turbofan at
1e6 rows a request: 1.66 against 1.92 ms, paired x0.87). A read that finds no rows has no column
to tell: the check then runs on its own and the read again. Inside a summing statement, with the
catalog lookup, the count cost more (turbofan at scale 12: a 0.1 % read 6.2 ms with the check
inside, 4.0 beside it, 3.7 without), so summing reads keep the check first.

``check_current`` returns once the check's statement is starting, so it too sees no later state
than the read: the read is then of a copy that was current at a moment between the two. (A check
started after the read could pass for a copy that a concurrent prepare rebuilt after the read had
seen the old one.)"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

import duckdb

from ..engines.base import Engine

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool has no threads there (a submit would wait forever)."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


class Verdict:
    """A currency check's answer, kept for good where the sources cannot change: while this
    process holds their database open read-only, no one can write them (DuckDB allows one writer
    or many readers), so the first check holds for as long as the pipeline is loaded (bearing at
    3.2e8 rows: a first read of 2,000 rows by position took 3.2-3.9 ms with the check inside, the
    reads after it 1.9-2.0). ``settled`` stays None, check every time, where they can change."""

    def __init__(self, frozen: bool):
        self.frozen = frozen
        self.settled: bool | None = None

    def remember(self, current: bool) -> None:
        if self.frozen:
            self.settled = current


def is_current(cur, condition: str) -> bool:
    """``SELECT condition`` on ``cur``: whether the copies are current. A catalog (or source)
    that is gone makes them not current; any other error is raised."""
    try:
        return bool(cur.execute(f"SELECT {condition}").fetchall()[0][0])
    except duckdb.CatalogException:
        return False


def check_current(engine: Engine, condition: str) -> Future:
    """A future of ``SELECT condition`` (true while the copies are current), run on a worker's own
    cursor; returns once that statement is starting. The caller must wait for it on every path
    (``read_while_checking`` does): it must not be left running on the caller's connection."""
    global _pool
    starting = threading.Event()

    def run() -> bool:
        with engine.cursor() as cur:
            starting.set()
            return is_current(cur, condition)

    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="approxql-check")
        future = _pool.submit(run)
    starting.wait(timeout=1.0)   # a worker is busy with another request's check at worst for its length
    return future


def read_while_checking(engine: Engine, condition: str, read: Callable[[], T]) -> tuple[T, bool]:
    """``read()``'s result, and whether the copies were current: the check starts first, runs on
    a worker beside the read, and is awaited on every path, a failed read included."""
    current = check_current(engine, condition)
    try:
        return read(), current.result()
    finally:
        wait([current])   # never leave the check running on the caller's connection
