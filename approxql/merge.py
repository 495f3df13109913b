"""One scan for aggregate queries that read the same rows: exact plans merge them.

``COUNT(*) ... WHERE ip = $ip AND day`` and ``COUNT(*) ... WHERE ip = $ip AND app = $app AND day``
read the same table and the second's rows are a subset of the first's: one statement computes both,
``COUNT(*)`` and ``COUNT(*) FILTER (WHERE app = $app)``, over the first's WHERE. The result is the
same for every aggregate (a FILTER keeps exactly the rows its condition is true for, as a WHERE
does), and the merged scan reads only the rows one of the queries reads anyway. Measured on the
fraud pipeline's three counts: 5.9 ms merged against 10.6 ms as three scans.

A query merges into a group only when one member's WHERE conjuncts are a subset of every other
member's: then the scan is that member's own. And only when no member adds a range to them
(``ts >= $ts - INTERVAL 30 DAY`` inside an entity-wide scan): on its own, that member's scan reads
just the row groups of its window, where merged, its FILTER is tested on every row of the wider
scan, and a batch can no longer compute the wider query once per entity. Measured on
``benchmarks/controller.py``'s pipeline (a 30-day window beside two entity-wide averages, 5e5
rows an entity): 31 exact requests/s apart against 20 merged, and an exact batch of 3,000
requests 460/s against 134. Queries with a DISTINCT aggregate merge only with
each other: DuckDB computes a statement that mixes DISTINCT and plain aggregates by materialising
every column the statement reads and scanning that again per DISTINCT aggregate. Measured on the
game logs (one session, 2e5 rows, AVG and STDDEV of three columns beside three distinct counts):
7.3 ms merged against 5.4 ms as two scans in one statement; three distinct counts merged took
2.4 ms against 2.9 ms apart. Queries with joins, subqueries, window functions,
functions sqlglot does not know (they may be aggregates), WITHIN GROUP or IGNORE NULLS aggregates,
or anything but SELECT ... FROM ... WHERE (USING SAMPLE, GROUP BY, ...) stay as they are.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from sqlglot import exp

from .plan import FeatureQuery, QueryKind
from .sqlparts import conjuncts

RANGES = (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between)   # what zone maps prune by, where the column is clustered
_PLAIN = {"expressions", "from_", "where"}   # a SELECT with anything else (a join, GROUP BY, USING SAMPLE, ...) stays apart


def merge_scans(queries: Sequence[FeatureQuery], dialect: str = "duckdb") -> list[FeatureQuery]:
    """``queries`` with aggregate queries that share a scan merged (in the place of the group's
    first member); everything else unchanged and in order."""
    groups: list[list[tuple[FeatureQuery, list[exp.Expression]]]] = []
    out: list[FeatureQuery | int] = []
    for q in queries:
        parts = _mergeable(q, dialect)
        if parts is None:
            out.append(q)
            continue
        key = _scan_key(q, dialect)
        for members in groups:
            if _scan_key(members[0][0], dialect) == key and _nested(members, parts, dialect):
                members.append((q, parts))
                break
        else:
            groups.append([(q, parts)])
            out.append(len(groups) - 1)
    return [groups[item][0][0] if isinstance(item, int) and len(groups[item]) == 1 else
            _merged(groups[item], dialect) if isinstance(item, int) else item for item in out]


def _mergeable(q: FeatureQuery, dialect: str) -> list[exp.Expression] | None:
    """The WHERE's conjuncts of a query that may share its scan, or None."""
    s = q.select
    if q.kind is not QueryKind.AGGREGATE or s.args.get("from_") is None or any(
            v for k, v in s.args.items() if k not in _PLAIN):
        return None
    if not isinstance(s.args["from_"].this, exp.Table):
        return None
    for item in s.expressions:   # WITHIN GROUP, IGNORE NULLS: a FILTER cannot wrap the inner call
        if any(item.find_all(exp.Anonymous, exp.Window, exp.Select, exp.Subquery, exp.WithinGroup,
                             exp.IgnoreNulls, exp.RespectNulls)):
            return None
    where = s.args.get("where")
    return conjuncts(where.this if where is not None else None)


def _scan_key(q: FeatureQuery, dialect: str) -> tuple[str, bool]:
    """What members of one group share: the FROM clause, and whether they have DISTINCT aggregates."""
    return _text(q.select.args["from_"], dialect), q.select.find(exp.Distinct) is not None


def _text(node: exp.Expression, dialect: str) -> str:
    return node.sql(dialect)


def _nested(members, parts, dialect: str) -> bool:
    """Whether the group with ``parts`` added still has a member whose conjuncts all others
    contain, and no member narrows that scan by a range (see the module's docstring)."""
    every = [p for _, p in members] + [parts]
    sets = [{_text(c, dialect) for c in p} for p in every]
    common = set.intersection(*sets)
    return any(s == common for s in sets) and not any(
        isinstance(c, RANGES) for p in every for c in p if _text(c, dialect) not in common)


def _merged(members, dialect: str) -> FeatureQuery:
    """One SELECT: each member's aggregates filtered by its conjuncts beyond the shared ones."""
    texts = [[_text(c, dialect) for c in p] for _, p in members]
    common = set.intersection(*(set(t) for t in texts))
    base = next(p for (_, p), t in zip(members, texts) if set(t) == common)
    items = []
    for (q, parts), t in zip(members, texts):
        extra = [c for c, ct in zip(parts, t) if ct not in common]
        items += [_filtered(item, extra) for item in q.select.expressions]
    first = members[0][0]
    select = first.select.copy()
    select.set("expressions", items)
    select.set("where", exp.Where(this=exp.and_(*[c.copy() for c in base])) if base else None)
    qs = [q for q, _ in members]
    return replace(first, name="_".join(q.name for q in qs), select=select,
                   features=tuple(f for q in qs for f in q.features),
                   params=tuple(dict.fromkeys(p for q in qs for p in q.params)))


def _filtered(item: exp.Expression, extra: list[exp.Expression]) -> exp.Expression:
    """``item`` with every aggregate of it restricted to rows where ``extra`` all hold."""
    item = item.copy()
    if not extra:
        return item
    for agg in list(item.find_all(exp.AggFunc)):
        cond = exp.and_(*[c.copy() for c in extra])
        if isinstance(agg.parent, exp.Filter):
            where = agg.parent.expression
            where.set("this", exp.and_(cond, exp.Paren(this=where.this)))
        else:
            agg.replace(exp.Filter(this=agg.copy(), expression=exp.Where(this=cond)))
    return item
