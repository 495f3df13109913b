"""Sampling one aggregate feature query for one request: run increments, merge, estimate.

A ``CompiledQuery`` is built once per pipeline and query (analysis, contribution columns,
strategy, SQL); a ``QuerySampler`` holds one request's state: the fraction reached, the merged
moments and the quantile values, and turns them into estimates with standard errors and the
covariance of the query's features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping

import duckdb
import numpy as np
from sqlglot import exp

from ..engines.base import Compiled, Engine
from ..engines.duckdb import _first_line
from ..errors import OptionError, QueryError
from ..estimators import (Moments, covariance_from_jacobian, feature_covariance, quantile_estimate,
                          woodruff_quantile)
from ..estimators.strata import StrataMoments
from ..plan import FeatureQuery
from .base import SampleSource, quote
from .catalog import lookup, read_only, stratum_sizes
from .currency import is_current
from .layout import MomentLayout, term_gradient
from .exact import ExactSource
from .exact_plan import ExactPlan, exact_plan
from .prepared import CURRENT, PreparedSource, group_positions, offset_of
from .support import CLUSTER_FACTOR, MIN_SUPPORT, beyond_group, pinned_groups, pinned_params, tail_support
from .system import SystemSource
from .terms import AggregatePlan, analyze, term_index

MIN_CLUSTERS = 50      # sampled blocks below which a block-sampled interval is not trusted
MIN_QUANTILE_CLUSTERS = 100  # Woodruff's quantile interval needs more blocks (measured: 0.91 at ~58)
VALUE_CAP = 20_000     # quantile values kept per term (a nested sub-sample beyond that)
CENTER_ROWS = 10_000   # rows read once to center each aggregated expression
ROW_PATH_MAX = 25_000  # an increment expected to hold at most this many rows is read as rows
                       # (measured on 5 columns: rows 1.4-2.1 ms, sums 4.8-5.1 ms up to 6k rows;
                       # on 9 columns at 2.4e8 rows: rows 5.2 ms, sums 6.0 at 2.3e4 rows; sums 7.0, rows 8.9 at 5.8e4)


@dataclass(frozen=True)
class QueryResult:
    """Estimates of one query's features at one fraction."""

    query: str
    strategy: str
    fraction: float
    exact: bool                               # every feature computed exactly
    values: dict[str, float | None]           # feature -> estimate (None: NULL)
    stderr: dict[str, float]                  # 0.0 for features computed exactly
    cov: np.ndarray                           # covariance over the order of ``values``
    support: int                              # fewest sampled matching rows behind any term
    trusted: bool                             # support (and blocks) large enough for the intervals
    needed_fraction: float = 0.0              # estimated fraction at which every interval is trusted
    feature_needed: dict[str, float] = field(default_factory=dict)  # the same, per feature
    matching: float | None = None             # estimated rows matching the query (all, not sampled)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # nominal 95 % interval per
    # feature: value +/- 1.96 s.e. for moments, the order-statistic (or Woodruff) interval for quantiles
    reasons: dict[str, str] = field(default_factory=dict)  # feature -> why it is computed exactly


@dataclass(frozen=True)
class Increment:
    """One read of a sample: keys [lo, hi) (or a fresh sample at hi), and the quantile terms that
    collect values and at most how many."""

    lo: float
    hi: float
    growing: tuple[int, ...]
    cap: int


@dataclass(frozen=True)
class CompiledQuery:
    """Everything about sampling one aggregate query that does not depend on the request."""

    query: FeatureQuery
    plan: AggregatePlan
    layout: MomentLayout | None
    source: SampleSource | None
    exact: Compiled                     # the whole query, exactly
    exact_only: Compiled | None         # just the features that are always exact
    note: str | None = None             # why this query is not sampled, or fell back
    min_support: dict[int, int] = field(default_factory=dict)  # term -> sampled rows its interval needs
    group_support: Mapping[tuple, Mapping[int, tuple[int, float]]] = field(default_factory=dict)  # per group: term -> (need, rows)
    group_params: tuple[str, ...] = ()   # the request parameters that name its group, in key order
    sample_params: tuple[str, ...] = ()  # request parameters the sampling SQL reads (by key)
    groups: tuple = ()                   # moment features estimated together, with their columns
    exact_many: Compiled | None = None       # ``exact`` for a relation of requests (batches)
    exact_only_many: Compiled | None = None  # ``exact_only`` for a relation of requests
    exact_plan: ExactPlan | None = None      # ``exact`` on the prepared copy where its order finds the rows
    positions: Mapping[tuple, tuple[int, int, int]] | None = None  # per group: (first row id, rows, slice)
    position_params: tuple[str, ...] = ()  # request parameters a read by position reads (no group pins: fewer)

    @property
    def sampled(self) -> bool:
        return self.source is not None and not isinstance(self.source, ExactSource)

    def _group(self, params: Mapping[str, Any]) -> Mapping[int, tuple[int, float]] | None:
        return self._lookup(self.group_support, params)

    def _lookup(self, by_group: Mapping[tuple, Any] | None, params: Mapping[str, Any]):
        if not self.group_params or not by_group:
            return None
        key = tuple(params[k] for k in self.group_params)
        if any(v is None for v in key):   # col = NULL matches no row, not the group of NULLs
            return None
        try:
            return by_group.get(key)
        except TypeError:   # an unhashable value finds no group
            return None

    def read_params(self, by_position: bool) -> tuple[str, ...]:
        """The request parameters a read binds."""
        return self.position_params if by_position else self.sample_params

    def positions_for(self, params: Mapping[str, Any]) -> tuple[int, int, int] | None:
        """(first row id, rows, slice) of this request's group on the copy, to read it by position; None
        reads by key (no index, or a group the copy did not have when the pipeline was loaded)."""
        return self._lookup(self.positions, params)

    def support_for(self, params: Mapping[str, Any]) -> dict[int, int]:
        """Sampled rows each term needs for this request: its group's own need where the group
        was measured, else the largest over groups."""
        group = self._group(params)
        return self.min_support if group is None else {**self.min_support, **{t: n for t, (n, _) in group.items()}}

    def start_for(self, params: Mapping[str, Any]) -> float | None:
        """The fraction at which this request's group most likely (about 97.5 %) samples enough
        rows for every term's need, or None when its group was not measured. The sampled count is
        binomial: mean p * rows must exceed the need by two of its standard deviations."""
        group = self._group(params)
        if not group:
            return None
        return max(min(1.0, (n + 2 * math.sqrt(n) + 2) / rows) if rows > 0 else 1.0 for n, rows in group.values())

    def describe(self) -> str:
        """One line per query for explanations: strategy, and what is exact and why."""
        return self._description

    @cached_property
    def joint_groups(self) -> tuple[list[int], list[int], np.ndarray]:
        """For estimating every group in one pass: the features of all groups, the columns they
        read, and each feature's group number (fixed per query, so derived once)."""
        every = [i for g, _ in self.groups for i in g]
        cols = sorted({c for _, cs in self.groups for c in cs})
        return every, cols, np.repeat(np.arange(len(self.groups)), [len(g) for g, _ in self.groups])

    @cached_property
    def _description(self) -> str:   # every prediction's notes carry it: built once
        head = f"{self.query.name} (line {self.query.line}): "
        if not self.sampled:
            return head + f"computed exactly ({self.note})"
        text = head + f"sampled with {self.source.describe()}"
        for feature, why in self.plan.exact_reasons().items():
            text += f"; {feature} computed exactly: {why}"
        return text


STRATEGIES = ("auto", "prepared", "system", "exact")


def compile_query(engine: Engine, con: duckdb.DuckDBPyConnection, query: FeatureQuery, *,
                  strategy: str = "auto") -> CompiledQuery:
    """Analyse ``query`` and choose its strategy; ``auto`` takes the prepared copy when there is
    one and TABLESAMPLE SYSTEM otherwise."""
    if strategy not in STRATEGIES:
        raise OptionError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    plan = analyze(query)
    exact = engine.compile_exact([query])
    exact_many = engine.compile_exact([query], batch=True)
    if strategy == "exact":
        return CompiledQuery(query, plan, None, ExactSource(), exact, None, note="strategy 'exact' was asked for",
                             exact_many=exact_many)
    with con.cursor() as cur:
        on_copy = exact_plan(engine, cur, [query], exact) if strategy in ("auto", "prepared") else None
    on_copy = on_copy if on_copy is not None and on_copy.on_copies is not None else None
    if not plan.approximable:
        reasons = plan.exact_reasons()
        return CompiledQuery(query, plan, None, None, exact, None, note="; ".join(sorted(set(reasons.values()))),
                             exact_many=exact_many, exact_plan=on_copy)
    with con.cursor() as cur:
        prepared = lookup(cur, plan.table) if strategy in ("auto", "prepared") else None
        if strategy == "prepared" and prepared is None:
            raise OptionError(f"strategy 'prepared' needs a prepared copy of {plan.table!r}: "
                              f"run approxql.prepare(con, {plan.table!r}, by=[...]) first")
        table = prepared.copy if prepared else plan.table
        centers = _centers(cur, plan, table)
        groups = pinned_groups(query, prepared)
        group_params = pinned_params(query, groups)
        # one group per request and no quantile (its values are taken in key order): read by position
        positions = (group_positions(cur, prepared, groups)
                     if groups and group_params and not any(t.is_quantile for t in plan.terms) else None)
        rest = (beyond_group(query, groups, group_params, _types(con, list(groups), plan, table),
                             lambda t: _type_name(cur, t)) if positions is not None else None)
        group_where = None if rest is None else " AND ".join(f"({t.sql('duckdb')})" for t in rest)
        source: SampleSource = (PreparedSource(prepared, positions=positions is not None, group_where=group_where,
                                               frozen=read_only(cur, prepared.source))
                                if prepared else SystemSource(plan.table))
        support = tail_support(cur, plan, table, centers, groups=groups)
    layout = MomentLayout.build(plan, centers)
    if prepared:
        layout = layout.with_native_types(_types(con, layout.row_arguments(), plan, table))
    exact_only = exact_only_many = None
    if any(not f.approximable for f in plan.features):
        sub = query.select.copy()
        keep = {f.name for f in plan.features if not f.approximable}
        sub.set("expressions", [e for e, name in zip(sub.expressions, query.features) if name in keep])
        only = _with_select(query, sub, tuple(n for n in query.features if n in keep))
        exact_only, exact_only_many = engine.compile_exact([only]), engine.compile_exact([only], batch=True)
    term_nodes = [*[t.arg for t in plan.terms], *[t.filter for t in plan.terms]]
    sample_params = _params_in([plan.where, *term_nodes], query.params)
    position_params = sample_params if rest is None else _params_in([*rest, *term_nodes], query.params)
    moment_features = [(i, f.terms) for i, f in enumerate(plan.features)
                       if f.approximable and not any(plan.terms[t].is_quantile for t in f.terms)]
    compiled = CompiledQuery(query, plan, layout, source, exact, exact_only, min_support=support.need,
                             group_support=support.by_group, group_params=group_params,
                             sample_params=sample_params, groups=tuple(layout.feature_groups(moment_features)),
                             exact_many=exact_many, exact_only_many=exact_only_many, exact_plan=on_copy,
                             positions=positions, position_params=position_params)
    why = _dry_run(con, compiled)
    if why:  # e.g. a view (no rowid to sample blocks by): sample nothing, rather than fail every request
        return CompiledQuery(query, plan, None, None, exact, None, note=f"sampling SQL cannot run here ({why})",
                             exact_many=exact_many)
    return compiled


def _dry_run(con, c: CompiledQuery) -> str | None:
    """Run each form of the sampling statement once with NULL parameters on a range that reads
    nothing (or next to nothing): it binds every name now, instead of failing on every request."""
    terms = [t for t, term in enumerate(c.plan.terms) if term.is_quantile]
    # one range, and on a copy two (wrapping round 1: seed 1 starts at 0.618); by position on
    # row ids no table has, so that no row's values can fail the check
    los = (0.0, 1.0 - offset_of(1) - 1e-9) if isinstance(c.source, PreparedSource) else (0.0,)
    stmts = [(c.source.increment_sql(c.plan, c.layout, lo, lo + 2e-9, terms, 1, seed=1), False) for lo in los]
    if c.positions:
        stmts += [(c.source.increment_sql(c.plan, c.layout, 0.0, hi, terms, 1, seed=1, group=(-8, 4, 0)), True)
                  for hi in (0.25, 0.75)]
        if c.source.prepared.strata:   # a stratified read's two forms, each with one range and two
            stmts += [(form(c.plan, c.layout, 0.0, hi, seed=1, group=(-8, 4, 0)), True)
                      for form in (c.source.rows_sql, c.source.strata_sql) for hi in (0.25, 0.75)]
    try:
        with con.cursor() as cur:
            for stmt, by_position in stmts:
                cur.execute(stmt.sql, {**{k: None for k in c.read_params(by_position)}, **stmt.extra_params}).fetchall()
    except duckdb.Error as e:
        return _first_line(e)
    return None


class QuerySampler:
    """One request's sample of one query. ``advance(p)`` reads up to fraction p."""

    def __init__(self, compiled: CompiledQuery, engine: Engine, params: Mapping[str, Any], *, seed: int = 0):
        self.c, self.engine, self.seed = compiled, engine, seed
        self.params = {k: params[k] for k in compiled.query.params}
        self.fraction = 0.0
        self.moments: Moments | None = None
        self.values: dict[int, list[np.ndarray]] = {}
        self.clusters: dict[int, list[np.ndarray]] = {}
        self.value_fraction: dict[int, float] = {}
        self.exact_values: dict[str, Any] = {}
        self.note = compiled.note
        self.fell_back = False          # sampling was tried and had to give way to exact
        self.matching_hint = None       # matching rows seen by a sample that then fell back
        self._result = None
        self._value_terms = [t for t, term in enumerate(compiled.plan.terms) if term.is_quantile]
        self.min_support = compiled.support_for(self.params)
        self.group = compiled.positions_for(self.params)   # (first row id, rows, slice): read by position
        source = compiled.source
        # strata per group where reads by position are stratified samples (catalog.stratified_order)
        self.strata = source.prepared.strata if isinstance(source, PreparedSource) and self.group is not None else 0
        self.stratified: StrataMoments | None = None   # per-stratum moments read so far

    def reachable(self, p: float) -> float:
        """The fraction a read towards ``p`` reaches: by position, a whole number of the group's
        rows and at least one more than read (1.0 once that is all of them); else ``p``. A
        stratified group's first read takes three rows per stratum: any run of that many
        positions, one that wraps round the group too, holds two rows of every stratum at least,
        the fewest that show a stratum's spread (two per stratum would not: a run that wraps
        round a group of 100,003 rows left three strata one row each)."""
        if self.group is None or p >= 1.0 or p <= self.fraction:
            return p
        rows = self.group[1]
        cut = max(round(p * rows), round(self.fraction * rows) + 1, 3 * self.strata)
        return 1.0 if cut >= rows else cut / rows

    @property
    def done(self) -> bool:
        return self.fraction >= 1.0

    def next_fraction(self, wanted: float) -> float:
        if not self.c.sampled:
            return 1.0
        return self.c.source.next_fraction(self.fraction, wanted)

    def advance(self, cur: duckdb.DuckDBPyConnection, p: float, *, matching: float | None = None) -> None:
        """Read the sample up to fraction ``p`` (1.0 = compute the query exactly). ``matching``
        (the rows the query matches, as far as the caller knows) picks how: an increment of a
        few thousand rows is read as rows and summed here, a larger one summed by DuckDB."""
        p = self.reachable(p)
        if p <= self.fraction:
            return
        if p >= 1.0 or not self.c.sampled:
            if self.c.exact_plan is None:
                self.set_exact(self.engine.exact_features(self.c.exact, self.params, cur))
                return
            values, stale, _ = self.c.exact_plan.run(self.engine, self.params, cur)
            self.note = stale or self.note
            self.set_exact(values)
            return
        if self.known_stale():
            self.fall_back(self.stale_note())
            return
        if self.fraction == 0.0 and self.c.exact_only is not None:
            self.exact_values = self.engine.exact_features(self.c.exact_only, self.params, cur)
        inc = self.increment(p)
        bound = {k: self.params[k] for k in self.c.read_params(self.group is not None)}
        if self.strata:   # the positions it reads are known: every driver picks the same form
            rows = (inc.hi - inc.lo) * self.group[1] <= ROW_PATH_MAX
        else:
            rows = (isinstance(self.c.source, PreparedSource) and not inc.growing and matching is not None
                    and matching * (p - inc.lo) <= ROW_PATH_MAX)
        check = self.needs_check()
        if rows:   # a first read of rows checks the copy in the same statement
            stmt = self.c.source.rows_sql(self.c.plan, self.c.layout, inc.lo, inc.hi, seed=self.seed,
                                          group=self.group, checked=check)
        elif self.strata:   # a stratified read's sums per stratum
            stmt = self.c.source.strata_sql(self.c.plan, self.c.layout, inc.lo, inc.hi, seed=self.seed,
                                            group=self.group)
        else:
            stmt = self.c.source.increment_sql(self.c.plan, self.c.layout, inc.lo, p, list(inc.growing), inc.cap,
                                               seed=self.seed, group=self.group)

        folded = check and rows   # the check rides in the read: a column of its own statement

        def read():
            """The read's result, and the check's answer when it rode along (None: no row to tell)."""
            res = cur.execute(stmt.sql, {**bound, **stmt.extra_params})
            if not rows:
                return (res.fetchall() if self.strata else res.fetchall()[0]), None
            got = res.fetchnumpy()
            flags = got.pop(CURRENT) if folded else ()
            return got, (bool(flags[0]) if len(flags) else None)

        # The check sees no later state than the read: it rides in the read's own statement, or it
        # runs first on the same cursor (also when the folded read found no row to tell: a check
        # after a read could pass a copy rebuilt since).
        try:
            got, current = read() if folded else (None, None)
            if current is None:
                current = not check or is_current(cur, self.c.source.current_sql())
                got = read()[0] if current else None
        except duckdb.Error as e:
            if not (isinstance(e, duckdb.CatalogException) and (self.reads_slice() or folded)):
                raise QueryError(f"sampling query {self.c.query.name} failed: {_first_line(e)}") from e
            got, current = None, False   # its slice, the catalog or the source is gone: not current
        if check:
            self.c.source.verdict.remember(current)
        if not current:
            self.fall_back(self.stale_note())
        elif self.strata:
            self._take_strata(inc, got, stmt.extra_params, summed=not rows)
        elif rows:
            moments = self.c.layout.moments_from_rows(list(got.values()))
            self._take(inc, moments, matching_seen=moments.n)
        else:
            self.absorb(inc, got, clustered=stmt.clustered)

    def reads_slice(self) -> bool:
        """Whether reads go to a slice table of the copy (by position, or a copy's only slice),
        which a later prepare drops."""
        source = self.c.source
        return isinstance(source, PreparedSource) and (self.group is not None or source.prepared.relation_is_slice)

    def needs_check(self) -> bool:
        """Whether the next read must check that the copy is current: a prepared copy's first read,
        unless the answer is settled (a later read of a copy prepared again since finds its slice
        gone and fails over; on a view over several slices a read by key goes on with the new
        copy's keys: a request that spans a prepare is not checked again)."""
        source = self.c.source
        return isinstance(source, PreparedSource) and self.fraction == 0.0 and source.verdict.settled is None

    def known_stale(self) -> bool:
        """A first read of a copy known stale for good (``currency.Verdict``)."""
        source = self.c.source
        return isinstance(source, PreparedSource) and self.fraction == 0.0 and source.verdict.settled is False

    def increment(self, p: float) -> "Increment":
        """What the next read covers: keys [lo, p) (nested) or a fresh sample at p, and which
        quantile terms still collect values, up to how many."""
        source = self.c.source
        lo = self.fraction if source.nested else 0.0
        if source.nested:  # a term whose values were cut at the cap stops growing: no gaps
            room = {t: VALUE_CAP - sum(len(v) for v in self.values.get(t, [])) for t in self._value_terms
                    if self.value_fraction.get(t, 0.0) == self.fraction}
            growing = [t for t, r in room.items() if r > 0]
            cap = min((room[t] for t in growing), default=VALUE_CAP)
        else:
            growing, cap = list(self._value_terms), VALUE_CAP
        return Increment(lo, p, tuple(growing), cap)

    def absorb(self, inc: "Increment", row, *, clustered: bool) -> None:
        """Merge the result row of an increment (as the strategy's SQL returns it)."""
        p = inc.hi
        span = p - inc.lo   # the increment covers this much of the key space (all of p when not nested)
        if clustered:
            self.matching_hint = float(row[1] or 0) / span   # column 0 summed over blocks: matching rows
        elif row[0]:
            self.matching_hint = float(row[0]) / span
        if clustered:  # matching rows in too few blocks: no sample of blocks can mean anything
            projected = int(row[0] or 0) * 0.5 / p
            if projected < MIN_CLUSTERS:
                self.fall_back(f"its matching rows lie in about {int(row[0] or 0) / p:.0f} blocks of 2048 rows, "
                               f"too few for block sampling; computed exactly (prepare the table to sample it)")
                return
        width = self.c.layout.result_width(clustered=clustered)
        self._take(inc, self.c.layout.moments(row, clustered=clustered))
        rest = row[width:]
        for i, t in enumerate(inc.growing):
            values, extra = rest[2 * i], rest[2 * i + 1]
            arr = np.asarray(values or [], dtype=np.float64)
            if clustered:
                self.values[t] = [arr]
                self.clusters[t] = [np.repeat(np.arange(len(extra or [])), np.asarray(extra or [], dtype=np.int64))]
                self.value_fraction[t] = p
            else:
                self.values.setdefault(t, []).append(arr)
                # the cap-th key: where the kept values stop being the whole increment
                self.value_fraction[t] = p if extra is None else float(extra)

    def _take(self, inc: "Increment", moments: Moments, *, matching_seen: int | None = None) -> None:
        """Merge an increment's moments (nested sources add up; others replace) and move to its fraction."""
        if matching_seen:
            self.matching_hint = matching_seen / (inc.hi - inc.lo)
        nested = self.c.source.nested
        self.moments = moments if (self.moments is None or not nested) else self.moments.merge(moments)
        self.fraction = inc.hi

    def _take_strata(self, inc: "Increment", got, ranges: Mapping[str, int], *, summed: bool) -> None:
        """Merge a stratified read (its rows, whose row ids give their strata, or its sums per
        stratum) of the row-id ``ranges`` its statement was bound to, and move to its fraction."""
        h, layout = self.strata, self.c.layout
        start, rows, _ = self.group
        read = [(ranges[a] - start, ranges[b] - start) for a, b in (("__r1", "__s1"), ("__r2", "__s2")) if a in ranges]
        if summed:
            per = {int(row[0]): layout.moments(row[1:]) for row in got}
            part = StrataMoments.from_strata(per, read, h, len(layout.columns))
        else:
            fetched = list(got.values())
            rowid = np.asarray(fetched.pop(), dtype=np.int64)
            part = StrataMoments.from_rows(layout.contribution_rows(fetched), rowid - start, read, h)
        self.stratified = part if self.stratified is None else self.stratified.merge(part)
        self.moments = self.stratified.moments(stratum_sizes(rows, h), inc.hi)
        if part.r.sum():
            self.matching_hint = float(part.r.sum()) / (inc.hi - inc.lo)
        self.fraction = inc.hi

    def set_exact(self, values: Mapping[str, Any]) -> None:
        """The query's features computed exactly (here or in a batch with other requests)."""
        self.exact_values = dict(values)
        self.fraction = 1.0

    def stale_note(self) -> str:
        if self.c.positions or self.c.source.prepared.relation_is_slice:
            return (f"the prepared copy of {self.c.source.prepared.source} is stale (the source's row count "
                    f"changed since it was prepared, the catalog no longer lists it, or it was prepared again "
                    f"after this pipeline was loaded, which reads the tables of that prepare); computed "
                    f"exactly — run approxql prepare again if the source changed, then load the pipeline again")
        return (f"the prepared copy of {self.c.source.prepared.source} is stale (the source's row count "
                f"changed since it was prepared, or the catalog no longer lists it); computed exactly — run "
                f"approxql prepare again")

    def fall_back(self, why: str, *, compute: bool = True) -> None:
        """Give way to exact; ``compute=False`` when the caller computes it (batched with others)."""
        self.note, self.fell_back = why, True
        if compute:
            self.set_exact(self.engine.exact_features(self.c.exact, self.params))

    def result(self) -> QueryResult:
        """Estimates at the fraction reached (computed once per fraction)."""
        if self._result is None or self._result[0] != self.fraction:
            self._result = (self.fraction, self._estimate())
        return self._result[1]

    def _estimate(self) -> QueryResult:
        names = self.c.query.features
        m = len(names)
        if self.fraction >= 1.0:
            reasons = {n: self.note or "computed exactly" for n in names} if self.note else {}
            values = {n: _num(self.exact_values.get(n)) for n in names}
            return QueryResult(self.c.query.name, "exact", 1.0, True, values, {n: 0.0 for n in names},
                               np.zeros((m, m)), 0, True, needed_fraction=1.0,
                               feature_needed={n: 0.0 for n in names}, reasons=reasons,
                               intervals={n: (v, v) for n, v in values.items() if v is not None})
        plan, p = self.c.plan, self.fraction
        values: dict[str, float | None] = {}
        stderr: dict[str, float] = {}
        intervals: dict[str, tuple[float, float]] = {}
        cov = np.zeros((m, m))
        moment_idx = {i for group, _ in self.c.groups for i in group}
        clustered = not self.c.source.nested
        for group, vals, vcov in self._estimate_groups():
            cov[np.ix_(group, group)] = vcov
            for a, i in enumerate(group):
                values[names[i]] = _num(vals[a])
        supports = {t: self._term_support(t) for t in range(len(plan.terms))}
        support = min(supports.values(), default=0)
        for i, f in enumerate(plan.features):
            if f.approximable and i not in moment_idx:
                t = f.terms[0]
                term = plan.terms[t]
                vals_t = np.concatenate(self.values.get(t, [np.empty(0)]))
                method = "disc" if term.func == "quantile_disc" else "cont"
                if clustered:
                    est = woodruff_quantile(vals_t, np.concatenate(self.clusters.get(t, [np.empty(0, np.int64)])),
                                            term.q, p=self.value_fraction.get(t, p), method=method)
                else:
                    est = quantile_estimate(vals_t, term.q, p=self.value_fraction.get(t, p), method=method)
                values[f.name] = _num(est.value)
                cov[i, i] = est.stderr ** 2
                ci = est.interval()
                intervals[f.name] = (ci.low, ci.high)
            elif not f.approximable:
                values[f.name] = _num(self.exact_values.get(f.name))
        for i, n in enumerate(names):
            stderr[n] = math.sqrt(cov[i, i]) if cov[i, i] > 0 else (0.0 if np.isfinite(cov[i, i]) else math.nan)
            if n not in intervals and values[n] is not None:
                half = 1.959964 * stderr[n]
                intervals[n] = (values[n] - half, values[n] + half)
        factor = CLUSTER_FACTOR if clustered else 1.0
        term_needed = {t: (p * factor * self.min_support.get(t, MIN_SUPPORT) / have if have else 1.0)
                       for t, have in supports.items()}
        blocks = self.moments.n if self.moments is not None else 0
        feature_needed = {}
        for i, f in enumerate(plan.features):
            floor = 0.0
            if clustered:
                least = MIN_QUANTILE_CLUSTERS if any(plan.terms[t].is_quantile for t in f.terms) else MIN_CLUSTERS
                floor = p * least / blocks if blocks else 1.0
            need = max([floor] + [term_needed[t] for t in f.terms]) if f.approximable else 0.0
            if not np.isfinite(cov[i, i]):
                need = 1.0
            feature_needed[f.name] = min(need, 1.0)
        needed = max(feature_needed.values(), default=0.0)
        trusted = needed <= p
        return QueryResult(plan.query.name, self.c.source.name, p, False, {n: values[n] for n in names}, stderr,
                           np.nan_to_num(cov, nan=0.0), support, trusted, needed_fraction=min(needed, 1.0),
                           feature_needed=feature_needed, reasons=plan.exact_reasons(), intervals=intervals,
                           matching=float(self.moments.total[0]) / p if self.moments is not None and self.moments.n else None)

    def _estimate_groups(self) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """(feature indexes, values, covariance) of each group of moment features. Groups of bare
        terms (``AVG(x)``, ``STDDEV(y)``) are computed in one pass, their covariance between groups
        set to 0 as when apart: per group, numpy's fixed cost dominated (0.5 ms a round for eight
        AVGs on the vibration segments, each its own group)."""
        groups = self.c.groups
        if len(groups) > 1:
            every, cols, label = self.c.joint_groups
            mom, p = self.moments, self.fraction
            sub = Moments(mom.n, mom.mean[cols], mom.comoment[np.ix_(cols, cols)])
            closed = (_bare_term_jacobian(self.c.plan, self.c.layout, every, cols, mom.total / p)
                      if np.isfinite(sub.comoment).all() and np.isfinite(sub.mean).all() else None)
            if closed is not None:   # (a non-finite moment stays inside its own group: see below)
                vals, cov = covariance_from_jacobian(*closed, sub, p)
                cov[label[:, None] != label[None, :]] = 0.0
                return [(every, vals, cov)]
        return [(group, *self._estimate_group(group, cols)) for group, cols in groups]

    def _estimate_group(self, group: list[int], cols: list[int]):
        """Delta-method values and covariance of features that share contribution columns,
        computed on just those columns (other columns do not move these features)."""
        plan, layout, p = self.c.plan, self.c.layout, self.fraction
        mom = self.moments
        sub = Moments(mom.n, mom.mean[cols], mom.comoment[np.ix_(cols, cols)])
        base = mom.total / p
        terms = sorted({t for i in group for t in plan.features[i].terms})
        formulas = [plan.features[i].compiled for i in group]

        closed = _bare_term_jacobian(plan, layout, group, cols, base)
        if closed is not None:
            return covariance_from_jacobian(*closed, sub, p)

        def g(t_sub):
            totals = base.copy()
            totals[cols] = t_sub
            tv = layout.term_values(totals, terms)
            return np.array([f(tv, self.params) for f in formulas])

        return feature_covariance(g, sub, p)

    def _term_support(self, t: int) -> int:
        slot = self.c.layout.slots[t]
        if slot is None:
            return sum(len(v) for v in self.values.get(t, []))
        if self.moments is None or self.moments.n == 0:
            return 0
        if self.stratified is not None:   # (its moments' total is an estimate, not a count)
            return int(round(self.stratified.n @ self.stratified.mean[:, slot.nn]))
        return int(round(self.moments.total[slot.nn]))


def _bare_term_jacobian(plan, layout: MomentLayout, group: list[int], cols: list[int], totals: np.ndarray):
    """(values, Jacobian on ``cols``, derivative along the totals) of features that are each one
    bare moment term (``AVG(x)``, ``COUNT(*)``, ``STDDEV(x)``), in closed form; None when any is
    an expression of terms or not smooth here (then finite differences)."""
    where = {c: j for j, c in enumerate(cols)}
    values, along = np.empty(len(group)), np.empty(len(group))
    J = np.zeros((len(group), len(cols)))
    for a, i in enumerate(group):
        t = term_index(plan.features[i].expression)
        slot = None if t is None else layout.slots[t]
        got = None if slot is None else term_gradient(layout.funcs[t], slot, totals)
        if got is None:
            return None
        values[a], grad, along[a] = got
        for c, d in grad.items():
            if c in where:
                J[a, where[c]] = d
            elif d != 0.0:
                return None   # a column outside the group (cannot happen for a bare term's own columns)
    return values, J, along


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _with_select(query: FeatureQuery, select, features) -> FeatureQuery:
    return replace(query, select=select, features=features, params=_params_in([select], query.params))


def _params_in(nodes, declared) -> tuple[str, ...]:
    """The declared parameters that occur in ``nodes`` (DuckDB refuses unused bound parameters)."""
    used = {p.name for n in nodes if n is not None for p in n.find_all(exp.Placeholder)}
    return tuple(p for p in declared if p in used)


def _types(con, args: list[str], plan: AggregatePlan, table: str) -> dict[str, str]:
    """DuckDB's type name of each argument; none at all when they cannot be described together
    (an argument that reads a request parameter): then every argument keeps its CAST."""
    if not args:
        return {}
    items = ", ".join(f"({a}) AS __aq_{i}" for i, a in enumerate(args))
    try:
        with con.cursor() as cur:
            rows = cur.execute(f"DESCRIBE SELECT {items} FROM {quote(table)} AS {quote(plan.alias or table)}").fetchall()
    except duckdb.Error:
        return {}
    return {a: str(row[1]) for a, row in zip(args, rows)}


def _type_name(cur, declared: exp.DataType) -> str:
    """DuckDB's name of a declared type (``INT`` is ``INTEGER``, ``DECIMAL`` is ``DECIMAL(18,3)``)."""
    return str(cur.execute(f"DESCRIBE SELECT CAST(NULL AS {declared.sql('duckdb')})").fetchall()[0][1])


def _centers(cur, plan: AggregatePlan, table: str) -> dict[str, float]:
    """A rough center of each aggregated expression, from the first rows of the table."""
    args = list(dict.fromkeys(t.arg.sql("duckdb") for t in plan.terms
                              if t.arg is not None and not t.is_quantile and t.func not in ("count", "count_star")
                              and not any(t.arg.find_all(exp.Placeholder))))  # needs a request: centre 0
    if not args:
        return {}
    items = ", ".join(f"avg(TRY_CAST(({a}) AS DOUBLE))" for a in args)
    try:
        row = cur.execute(f"SELECT {items} FROM (SELECT * FROM {quote(table)} LIMIT {CENTER_ROWS})").fetchall()[0]
    except duckdb.Error:
        return {}
    return {a: float(v) for a, v in zip(args, row) if v is not None and math.isfinite(v)}
