"""Strategy 1: a prepared sample order. Fraction p is a range of length p of the stored key on the
sample-ordered copy; raising p to p2 reads only the next range, and the partial sums merge.

Each request starts its ranges at its own offset u (key space is a circle: [u, u + p) mod 1). Any
such range is a uniform sample, and requests no longer share one: with one fixed range every
request on an entity would carry the same sampling error (measured: one unlucky entity sample
made 20 of 21 of its requests miss the bound).

Where a query pins every ``by`` column (one group per request) and each group's rows are one run
of row ids, a fraction is read by row id instead: the rows at positions [a, b) of the group's run
(rotated by the request's offset) are a simple random sample of b - a rows, since the run is in
key order, and DuckDB reads a row-id range without scanning the rest of the group's row groups
(measured: 2,000 rows of a 1e5-row segment 1.26 against 1.75 ms; of a 1e6-row flight 2.0 against
5.5). On a copy written as slices (``catalog.SLICE_ROWS``) a group's run is in one slice, which
the read scans. Both drivers, one request or a batch, read a request's same positions.

On a copy prepared with ``stratify`` a run of positions is a stratified sample instead (see
``catalog.stratified_order``): a read fetches each row's row id, whose position gives its
stratum, or, too large to fetch, sums each stratum apart (``strata_sql``)."""
from __future__ import annotations

from .base import SampleSource, SampleSQL, quote, rebind, value_condition
from .catalog import CATALOG, KEY, PreparedTable
from .currency import Verdict
from .layout import MomentLayout
from .terms import AggregatePlan

CURRENT = "__aq_current"   # the staleness check's column in a checked read of rows
ROW_BUCKET = 2048  # rows per bucket of a batched read by position
BUCKETS = 1024   # key buckets of a batched read: ~2 % waste at a 2 % fraction (measured 0.095 ms per
                 # request for 2,000 requests on 8M rows, against 1.6 ms joining on the key range itself)


class PreparedSource(SampleSource):
    name = "prepared"
    nested = True

    def __init__(self, prepared: PreparedTable, *, positions: bool = False, group_where: str | None = None,
                 frozen: bool = False):
        self.prepared = prepared
        self.verdict = Verdict(frozen)   # frozen: the source's database is open read-only here
        self.positions = positions   # some requests read by row id: the copy must be the one indexed
        # what a read by position filters, its group's pins dropped ("": nothing, two fewer columns
        # to scan on turbofan: 1.03 against 1.18 ms for 1,900 rows); None: the whole WHERE
        self.group_where = group_where
        self._sql: dict[tuple, str] = {}  # the text depends on which terms fetch values, how, and the ranges
        self._batch: dict[tuple, str] = {}

    def describe(self) -> str:
        return f"prepared sample order {self.prepared.copy} (by {', '.join(self.prepared.by)})"

    def increment_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float,
                      value_terms: list[int], value_cap: int, *, seed: int = 0,
                      group: tuple[int, int, int] | None = None) -> SampleSQL:
        """``group``: (first row id, rows, slice) of the request's group, to read it by position."""
        params, wraps = _one_or_two(ranges_of(lo, hi, seed, group))
        key = (tuple(value_terms), None if group is None else group[2], wraps)
        if key not in self._sql:
            self._sql[key] = self._build(plan, layout, value_terms, group, wraps)
        if value_terms:
            params["__cap"] = value_cap
            params["__u"] = offset_of(seed)
        return SampleSQL(self._sql[key], params, clustered=False)

    def _build(self, plan: AggregatePlan, layout: MomentLayout, value_terms: list[int],
               group: tuple[int, int, int] | None, wraps: bool) -> str:
        items, where = self._parts(plan, layout, value_terms, group is not None, wraps)
        return f"SELECT {', '.join(items)} FROM {self._table(group)} AS {quote(plan.alias)} WHERE {where}"

    def _table(self, group: tuple[int, int, int] | None) -> str:
        """What a read scans: by position its group's slice (row ids count from the slice's
        start), else the copy."""
        return quote(self.prepared.relation if group is None else self.prepared.table(group[2]))

    def rows_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float, *, seed: int = 0,
                 group: tuple[int, int, int] | None = None, checked: bool = False) -> SampleSQL:
        """The increment's rows themselves (its contribution columns): for a few thousand rows, far
        cheaper than the summing statement, whose dozens of aggregate expressions DuckDB spends
        milliseconds binding and optimizing (measured: 1.4 ms against 4.8 ms for 1,100 rows of ten
        AVG/STDDEV features). ``checked``: the staleness check rides along as a first column,
        ``CURRENT``, on every row: one statement instead of two, and the check sees the read's own
        snapshot (turbofan at 1e6 rows a request: 1.66 against 1.92 ms, paired x0.87)."""
        params, wraps = _one_or_two(ranges_of(lo, hi, seed, group))
        key = ("rows", None if group is None else group[2], wraps, checked)
        if key not in self._sql:
            _, where = self._parts(plan, layout, [], group is not None, wraps)
            items = layout.rows_sql()
            if checked:
                items = [f"({self.current_sql()}) AS {CURRENT}", *items]
            if group is not None and self.prepared.strata:   # a row's position gives its stratum
                items = [*items, f"{quote(plan.alias)}.rowid"]
            self._sql[key] = f"SELECT {', '.join(items)} FROM {self._table(group)} AS {quote(plan.alias)} WHERE {where}"
        return SampleSQL(self._sql[key], params, clustered=False)

    def strata_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float, *, seed: int,
                   group: tuple[int, int, int]) -> SampleSQL:
        """A stratified read too large to fetch as rows, summed stratum by stratum: one result row
        per stratum with matching rows, its number first (``catalog.stratified_order``: a
        position's stratum is the position modulo the strata), then the summing statement's columns."""
        params, wraps = _one_or_two(ranges_of(lo, hi, seed, group))
        key = ("strata", group[2], wraps)
        if key not in self._sql:
            items, where = self._parts(plan, layout, [], True, wraps)
            stratum = f"({quote(plan.alias)}.rowid - $__start) % {self.prepared.strata}"
            self._sql[key] = (f"SELECT {stratum} AS __aq_h, {', '.join(items)} FROM {self._table(group)} AS "
                              f"{quote(plan.alias)} WHERE {where} GROUP BY __aq_h")
        params["__start"] = group[0]
        return SampleSQL(self._sql[key], params, clustered=False)

    def current_sql(self) -> str:
        """True while the source has as many rows as when its copy was written (the staleness
        check). Reads of tables named for their prepare (a read by position, or any read of a
        copy of one slice) compare with the count of that prepare: a later prepare drops those
        tables and the read fails over to exact, so the source's count is all that is checked
        (the catalog lookup cost 0.6 of a bearing request's 3.7 ms, and x0.83 of one at 1e6
        rows, paired). Reads of a view over several slices compare with the catalog's count,
        written in the copy's own transaction, so a later prepare updates both at once."""
        if self.positions or self.prepared.relation_is_slice:
            return f"(SELECT count(*) FROM {quote(self.prepared.source)}) = {self.prepared.source_rows}"
        return (f"coalesce((SELECT count(*) FROM {quote(self.prepared.source)}) = (SELECT source_rows FROM "
                f"{CATALOG} WHERE source = {_literal(self.prepared.source)}), false)")   # no such copy: not current

    def batch_sql(self, plan: AggregatePlan, layout: MomentLayout, value_terms: list[int], relation: str,
                  *, slice: int | None = None) -> str:
        """The increment of many requests in one statement: each request's key ranges become the
        buckets ``floor(key * BUCKETS)`` they cover, so the join of requests and copy is an
        equality join that pairs each request only with the rows of its buckets; the exact range
        condition then keeps the very rows the one-request statement reads. One result row per
        request that has rows (``__aq_id`` first, then the one-request statement's columns).
        ``slice``: the requests read row-id ranges of that slice, bucketed by ``rowid // ROW_BUCKET``."""
        by_position = slice is not None
        key = (tuple(value_terms), relation, slice)
        if key not in self._batch:
            items, where = self._parts(plan, layout, value_terms, by_position, wraps=True)
            alias = quote(plan.alias)
            bucket = (f"({alias}.rowid // {ROW_BUCKET})" if by_position else
                      f"floor({alias}.{KEY} * {BUCKETS})::BIGINT")
            table = self._table(None if slice is None else (0, 0, slice))
            sql = (f"SELECT __rq.__aq_id, {', '.join(items)} FROM __rq JOIN {table} AS {alias} ON {bucket} = __rq.__aq_bucket "
                   f"WHERE {where} GROUP BY __rq.__aq_id" + (", __rq.__aq_cap" if value_terms else ""))
            # UNION, not UNION ALL: a read that wraps round its group (or the key circle) can
            # touch one bucket from both of its ranges, and a bucket listed twice joins its rows twice
            if by_position:
                buckets = " UNION ".join(
                    f"SELECT __aq_id, unnest(range(__aq_{r} // {ROW_BUCKET}, (__aq_{s} + {ROW_BUCKET - 1}) // "
                    f"{ROW_BUCKET})) AS __aq_bucket FROM {relation} WHERE __aq_{s} > __aq_{r}"
                    for r, s in (("r1", "s1"), ("r2", "s2")))
            else:
                buckets = (f"SELECT __aq_id, unnest(range(floor(__aq_a1 * {BUCKETS})::BIGINT, "
                           f"ceil(least(__aq_b1, 1.0) * {BUCKETS})::BIGINT)) AS __aq_bucket FROM {relation} "
                           f"UNION SELECT __aq_id, unnest(range(0, ceil(__aq_b2 * {BUCKETS})::BIGINT)) "
                           f"FROM {relation} WHERE __aq_b2 > 0")
            self._batch[key] = (f"WITH __rb AS ({buckets}), __rq AS (SELECT {relation}.*, __rb.__aq_bucket FROM "
                                f"{relation} JOIN __rb USING (__aq_id)) " + rebind(sql, "__rq"))
        return self._batch[key]

    def _parts(self, plan: AggregatePlan, layout: MomentLayout, value_terms: list[int],
               by_position: bool, wraps: bool) -> tuple[list[str], str]:
        """The items and the WHERE of a read; ``wraps``: of two ranges (a read that wraps round
        the group or the key circle), else of one (an OR of ranges cost 0.1 ms a read)."""
        items = layout.aggregates_sql()
        virtual = f"(CASE WHEN {KEY} >= $__u THEN {KEY} - $__u ELSE {KEY} - $__u + 1 END)"  # key - u, mod 1
        for t in value_terms:
            term = plan.terms[t]
            cond = value_condition(term)
            items.append(f"(list(({term.arg.sql('duckdb')})::DOUBLE ORDER BY {virtual}) FILTER (WHERE {cond}))[1:$__cap]")
            items.append(f"(list({virtual} ORDER BY {virtual}) FILTER (WHERE {cond}))[$__cap]")
        if by_position and self.group_where is not None:   # the group's run is its rows: no pins
            where = f"{self.group_where} AND " if self.group_where else ""
        else:
            where = f"({plan.where.sql('duckdb')}) AND " if plan.where is not None else ""
        if by_position:   # (no quantile terms here: their values are ordered by the key)
            rowid = f"{quote(plan.alias)}.rowid"
            return items, where + _ranges_sql(rowid, ("__r1", "__s1"), ("__r2", "__s2"), wraps)
        return items, where + _ranges_sql(KEY, ("__a1", "__b1"), ("__a2", "__b2"), wraps)


def _ranges_sql(column: str, first: tuple[str, str], second: tuple[str, str], wraps: bool) -> str:
    one = f"({column} >= ${first[0]} AND {column} < ${first[1]})"
    return f"({one} OR ({column} >= ${second[0]} AND {column} < ${second[1]}))" if wraps else one


def _one_or_two(ranges: dict) -> tuple[dict, bool]:
    """A read's ranges (``ranges_of``) and whether it needs both: an empty second one is dropped."""
    second = ("__r2", "__s2") if "__r2" in ranges else ("__a2", "__b2")
    if ranges[second[1]] > ranges[second[0]]:
        return ranges, True
    return {k: v for k, v in ranges.items() if k not in second}, False


def offset_of(seed: int) -> float:
    """A request's starting point on the key circle, spread by a multiplicative hash of its seed."""
    return ((seed * 0x9E3779B97F4A7C15) % 2**64) / 2**64


def key_ranges(lo: float, hi: float, u: float) -> dict[str, float]:
    """The key ranges of the rotated interval [u + lo, u + hi) mod 1, as (at most) two ranges."""
    if hi <= lo:
        return {"__a1": 0.0, "__b1": 0.0, "__a2": 0.0, "__b2": 0.0}
    if hi - lo >= 1.0:
        return {"__a1": 0.0, "__b1": 2.0, "__a2": 0.0, "__b2": 0.0}
    a, b = (u + lo) % 1.0, (u + hi) % 1.0
    if a < b or b == 0.0:
        return {"__a1": a, "__b1": b if b > 0 else 2.0, "__a2": 0.0, "__b2": 0.0}
    return {"__a1": a, "__b1": 2.0, "__a2": 0.0, "__b2": b}


def ranges_of(lo: float, hi: float, seed: int, group: tuple[int, int, int] | None) -> dict:
    """The request's read of [lo, hi): key ranges, or with ``group`` row-id ranges."""
    if group is None:
        return key_ranges(lo, hi, offset_of(seed))
    return position_ranges(lo, hi, offset_of(seed), group[0], group[1])


def position_ranges(lo: float, hi: float, u: float, start: int, rows: int) -> dict[str, int]:
    """The row-id ranges [__r1, __s1) and [__r2, __s2) of a group's positions [lo, hi) * rows,
    counted from position floor(u * rows) around the group's run of row ids [start, start + rows).
    ``lo`` and ``hi`` are whole positions over ``rows`` (``QuerySampler.reachable`` makes them so)."""
    a_cut, b_cut = round(lo * rows), round(hi * rows)
    if b_cut <= a_cut:
        return {"__r1": 0, "__s1": 0, "__r2": 0, "__s2": 0}
    if b_cut - a_cut >= rows:
        return {"__r1": start, "__s1": start + rows, "__r2": 0, "__s2": 0}
    off = int(u * rows)
    a, b = (off + a_cut) % rows, (off + b_cut) % rows
    if a < b:
        return {"__r1": start + a, "__s1": start + b, "__r2": 0, "__s2": 0}
    return {"__r1": start + a, "__s1": start + rows, "__r2": start, "__s2": start + b}


def group_positions(cur, prepared: PreparedTable, groups: tuple[str, ...]) -> dict[tuple, tuple[int, int, int]] | None:
    """Per group (its key values in ``groups`` order): (first row id, rows, slice) on the copy,
    or None unless every group is one run of row ids of one slice. ``prepare`` writes the copy in
    its sort order, so this holds unless insertion order was not preserved; then requests read by key.
    None too for a copy that is one table (an older prepare's): nothing would tell a read by
    position that a later prepare had rewritten it."""
    if not prepared.slices:
        return None
    cols = [r[0].lower() for r in cur.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ?",
                                              [prepared.copy]).fetchall()]   # a view's too: its slices' columns
    if "rowid" in cols:    # a column named rowid hides the row id
        return None
    keys = [f"__aq_k{i}" for i in range(len(groups))]
    positions: dict[tuple, tuple[int, int, int]] = {}
    for i in range(prepared.slices):
        table = prepared.table(i)
        got = cur.sql(f"SELECT {', '.join(f'{g} AS {k}' for g, k in zip(groups, keys))}, min(rowid) AS __aq_first, "
                      f"max(rowid) AS __aq_last, count(*) AS __aq_rows FROM {quote(table)} GROUP BY ALL").to_arrow_table()
        first, last, rows = (got.column(c).to_pylist() for c in ("__aq_first", "__aq_last", "__aq_rows"))
        if any(b - a + 1 != n for a, b, n in zip(first, last, rows)):
            return None
        for key, a, n in zip(zip(*(got.column(k).to_pylist() for k in keys)), first, rows):
            if key in positions:   # a group in two slices
                return None
            positions[key] = (a, n, i)
    return positions


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
