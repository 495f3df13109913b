"""approxql's own exact statements: on the prepared copy where its order finds the query's rows.

The copy holds the source's rows sorted by entity (then time bucket, then key). Where a query pins
the copy's first ``by`` column to one value, its rows are one run of the copy that zone maps find,
while on the source they may be spread over the whole table: exact on the copy reads less (measured
on the fraud pipeline's counts per IP: 2.0 ms against 5.9 on the source). It is the same rows, so
the same result, as long as the copy is current; a check beside the statement, on a second
cursor, finds that out (see ``currency``) and, when the copy is stale, the source is read instead.
"Current" means the same row count, as everywhere in approxql: an UPDATE, or a DELETE and INSERT
that keep the count, is not seen (prepare again after one; README, "Approximate predictions").

Which read is faster is measured, not assumed: on small tables the source is already a few
zone-map-pruned blocks (measured on flights, with the check inside the statement: 6.4 ms on
the copy against 5.7 on the source). Both reads of the same request are timed, on its first runs
and once in a while after, and the faster by the median ratio serves. Paired, because timings of
different requests differ more than the reads do: on student the race of unpaired times settled
on the copy, whose check (1.1 ms) made it about 8 % slower than the source.

``predict_exact`` stays on the source: it is the reference the guarantee is measured against.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import duckdb
from sqlglot import exp

from ..engines.base import Compiled, Engine
from ..errors import QueryError
from ..plan import FeatureQuery, QueryKind
from ..sqlparts import equality_columns, on_table, single_table
from .base import quote
from .catalog import KEY, PreparedTable, lookup, read_only
from .currency import Verdict, read_while_checking
from .prepared import PreparedSource

TRIALS = 4       # requests whose two reads are both timed before the faster serves
RETRY = 100      # then one request in this many times both again (it pays for the slower read)
MEMORY = 8       # recent ratios kept
EDGE = 0.05      # the copies serve only when this much faster than the sources: each copy read
                 # also runs the currency check on a second core, and near a tie the race flapped
                 # (trips: copies about half the runs, each with 0.13 ms more outside the statement)
BOTH, COPIES, SOURCES = "both", "copies", "sources"


class Race:
    """Two reads of the same rows; which is faster, by the median over recent requests of the
    copies' time over the sources' on the same request (the copies by a clear ``EDGE``: a tie
    goes to the sources)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ratios: deque = deque(maxlen=MEMORY)
        self._runs = 0
        self._timed = 0                            # requests that timed both
        self._copies_faster: bool | None = None   # None until TRIALS requests timed both

    def next(self) -> str:
        """``BOTH`` (time both reads on this request), ``COPIES`` or ``SOURCES``."""
        with self._lock:
            self._runs += 1
            if self._copies_faster is None or self._runs % RETRY == 0:
                return BOTH
            return COPIES if self._copies_faster else SOURCES

    def copies_first(self) -> bool:
        """Which read goes first when both are timed: each in turn."""
        with self._lock:
            return self._timed % 2 == 0

    def record(self, copies_ms: float, sources_ms: float) -> None:
        with self._lock:
            self._timed += 1
            self._ratios.append(copies_ms / max(sources_ms, 1e-9))
            if len(self._ratios) >= TRIALS:
                self._copies_faster = statistics.median(self._ratios) <= 1 - EDGE


@dataclass(frozen=True)
class ExactPlan:
    """An exact statement on copies, the condition that they are current, and the one on the sources."""

    on_copies: Compiled | None      # None: no query reads a copy
    on_sources: Compiled
    current: str = ""               # SQL condition: every copy read is current
    copies: tuple[str, ...] = ()    # source tables read through their copies
    race: Race = field(default_factory=Race, compare=False)
    verdict: Verdict = field(default_factory=lambda: Verdict(False), compare=False)

    def run(self, engine: Engine, params: Mapping[str, Any], cur=None) -> tuple[dict[str, Any], str, float]:
        """The features, a note when a stale copy sent the statement to the sources, and the ms
        of the read that only timed the race (0 but on its trials): what learns whole requests'
        latency leaves it out (the first trials made exact at once look twice as dear on tick,
        which then sampled at x1.09-1.16 of exact instead of computing exactly)."""
        if self.on_copies is None:
            return engine.exact_features(self.on_sources, params, cur), "", 0.0
        if cur is None:
            with engine.cursor() as own:
                return self.run(engine, params, own)
        pick = self.race.next()
        if pick == SOURCES:
            return engine.exact_features(self.on_sources, params, cur), "", 0.0
        if pick == COPIES:
            return *self._read_copies(engine, params, cur), 0.0
        ms = {}   # both, in turn first: the first read warms what they share (the source's metadata)
        for read in ((COPIES, SOURCES) if self.race.copies_first() else (SOURCES, COPIES)):
            t0 = time.perf_counter()
            if read == COPIES:
                values, note = self._read_copies(engine, params, cur)
                if note:   # stale: the sources were read instead, and nothing is learned
                    return values, note, 0.0
            else:
                values = engine.exact_features(self.on_sources, params, cur)
            ms[read] = (time.perf_counter() - t0) * 1e3
        self.race.record(ms[COPIES], ms[SOURCES])
        return values, "", max(ms.values())

    def _read_copies(self, engine: Engine, params: Mapping[str, Any], cur) -> tuple[dict[str, Any], str]:
        fresh = self.verdict.settled
        try:
            if fresh:
                values = engine.exact_features(self.on_copies, params, cur)
            elif fresh is None:
                values, fresh = read_while_checking(engine, self.current,   # beside it, on a second core
                                                    lambda: engine.exact_features(self.on_copies, params, cur))
        except QueryError as e:
            if not isinstance(e.__cause__, duckdb.CatalogException):
                raise
            values, fresh = None, False   # a slice it read is gone: that copy was prepared again
        self.verdict.remember(fresh)
        if fresh:
            return values, ""
        note = (f"the prepared copy of {', '.join(self.copies)} is stale (the source's row count changed since "
                f"it was prepared, it was prepared again, or the catalog no longer lists it); computed exactly "
                f"on the source — run approxql prepare again, or load the pipeline again")
        return engine.exact_features(self.on_sources, params, cur), note


def finds_rows(query: FeatureQuery, prepared: PreparedTable) -> bool:
    """Whether the copy's order makes the query's rows one run: its WHERE pins the first ``by`` column."""
    first = prepared.by[0] if prepared.by else "("
    return (query.kind is QueryKind.AGGREGATE and single_table(query) and "(" not in first
            and first.strip('"').lower() in equality_columns(query))


def reads_whole_rows(query: FeatureQuery) -> bool:
    """Whether the query refers to whole rows (``t``, ``t.*``, ``*`` outside COUNT(*)), which on the
    copy would include its key column."""
    alias = query.select.args["from_"].this.alias_or_name.lower()
    for node in query.select.walk():
        if isinstance(node, exp.Column) and not node.table and node.name.lower() == alias:
            return True
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return True
    return False


def exact_plan(engine: Engine, cur, queries: Sequence[FeatureQuery], on_sources: Compiled) -> ExactPlan:
    """The plan for ``queries`` (already merged where they share scans) computed exactly."""
    rewritten, copies = [], {}
    for q in queries:
        prepared = lookup(cur, q.tables[0]) if single_table(q) else None
        if prepared is not None and finds_rows(q, prepared):
            copy = quote(prepared.relation)
            if reads_whole_rows(q):   # COUNT(DISTINCT t), list(t): the row must not carry the key column
                copy = f"(SELECT * EXCLUDE ({KEY}) FROM {copy})"   # (costs planning time, so only then)
            rewritten.append(on_table(q, copy))
            copies[prepared.source] = prepared
        else:
            rewritten.append(q)
    if not copies:
        return ExactPlan(None, on_sources)
    current = " AND ".join(f"({PreparedSource(p).current_sql()})" for p in copies.values())
    frozen = all(read_only(cur, source) for source in copies)
    return ExactPlan(engine.compile_exact(rewritten), on_sources, current, tuple(copies), verdict=Verdict(frozen))
