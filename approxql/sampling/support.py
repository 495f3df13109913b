"""How many sampled rows an interval needs before it can be trusted.

The normal interval of an estimator is good once the estimator itself is nearly symmetric.
Cochran's rule for a sample mean, n > 25 G1^2 (G1 the population skewness), says exactly that:
the skewness of the estimator, G1 / sqrt(n), is below 0.2. The same rule is applied to the
variable each aggregate linearises to: x itself for SUM (uncentered), x - mean for AVG, and
(x - mean)^2 for VAR and STDDEV. The skewness is measured once on the whole table, never on the
sample: a sample that missed the tail also underestimates its skewness, so a sample-based rule
would trust exactly the samples that are wrong.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import duckdb
import numpy as np
from sqlglot import exp

from ..plan import FeatureQuery
from ..sqlparts import column_side, conjuncts, equality_columns, equality_pins
from .base import quote
from .catalog import PreparedTable
from .terms import AggregatePlan, Term

MIN_SUPPORT = 30
COCHRAN = 25.0
# Block samples estimate the standard error from the blocks, far fewer than the rows: the
# studentised estimate is more skewed than the plain one. Measured: lognormal(1.5) AVG covered
# 0.948 with rows but 0.912 with 2048-row blocks at the same 25 G^2 rows; blocks need twice as many.
CLUSTER_FACTOR = 2.0
MAX_POWER = 6
UNMEASURED = 2 ** 62   # support no sample reaches
_PARAM_NODES = (exp.Placeholder, exp.Parameter)


class TailSupport(NamedTuple):
    """Sampled rows each moment term needs: ``need`` for any request, and ``by_group``, per
    group of a grouped copy (its key values in ``by`` order), {term: (need, rows)} for the terms
    measured there: the group's own need and how many of its rows the term reads."""
    need: dict[int, int]
    by_group: dict[tuple, dict[int, tuple[int, float]]]


def tail_support(cur: duckdb.DuckDBPyConnection, plan: AggregatePlan, table: str,
                 centers: dict[str, float], groups: Sequence[str] = ()) -> TailSupport:
    """Minimum sampled rows per moment term, from power sums of its argument over ``table``
    (one set of sums per distinct argument and filter). Terms whose argument reads a request
    parameter get the plain minimum.

    ``groups``: columns the query pins to one value each, when the table is a copy ordered by
    exactly those. A request then samples inside one group, so the skewness that matters is the
    one within a group: a request whose group is known takes that group's need, any other the
    largest over all groups. Measured over the whole table, the skewness also counts the spread
    between groups (on the game logs, cumulative elapsed time whose scale differs by session:
    2,263 rows for its STDDEV over the table, at most 288 inside any session). Groups differ
    too: on the vibration segments, the tachometer's mean needs 372 rows in the median segment
    and 1,259 in the most skewed one."""
    need = {t: MIN_SUPPORT for t, term in enumerate(plan.terms) if not term.is_quantile}
    by_group: dict[tuple, dict[int, tuple[int, float]]] = {}
    variables: dict[tuple, list[int]] = {}     # (argument, condition) -> terms reading it
    # a SUM inside a ratio (or any formula of several terms) linearises to a centred variable
    in_formula = {t for f in plan.features if len(f.terms) > 1 for t in f.terms}
    for t, term in enumerate(plan.terms):
        if term.is_quantile or term.func in ("count", "count_star") or term.arg is None:
            continue
        if any(term.arg.find_all(*_PARAM_NODES)) or (term.filter is not None and any(term.filter.find_all(*_PARAM_NODES))):
            continue
        variables.setdefault((term.arg.sql("duckdb"), _condition(term).sql("duckdb")), []).append(t)
    if not variables:
        return TailSupport(need, by_group)
    tops = [MAX_POWER if any(plan.terms[t].func.startswith(("var", "stddev")) for t in terms) else 3
            for terms in variables.values()]
    try:
        keys, sums = _power_sums(cur, list(variables), tops, table, plan.alias, centers, groups)
    except duckdb.Error:
        return TailSupport(need, by_group)
    for ((arg, _), terms), top, (n, center, power) in zip(variables.items(), tops, sums):
        keep = n > 0
        if not keep.any():
            continue
        raw = np.vstack([np.ones(keep.sum())] + [power[k][keep] / n[keep] for k in range(top)]
                        + [np.full(keep.sum(), math.nan)] * (MAX_POWER - top))
        kept_keys = [key for key, k in zip(keys, keep) if k]   # none without groups
        for t in terms:
            func = "avg" if plan.terms[t].func == "sum" and t in in_formula else plan.terms[t].func
            with np.errstate(all="ignore"):
                g = _skewness(func, raw, center[keep])
                # values too large for their power sums (about 1e51 and up): the tail cannot be
                # measured, so no sample is trusted and the term is computed exactly
                each = np.where(np.isfinite(g), np.maximum(MIN_SUPPORT, np.ceil(COCHRAN * g * g)), UNMEASURED)
            need[t] = int(np.max(each))
            for key, got, rows in zip(kept_keys, each, n[keep]):
                by_group.setdefault(key, {})[t] = (int(got), float(rows))
    return TailSupport(need, by_group)


def pinned_groups(query: FeatureQuery, prepared: PreparedTable | None) -> tuple[str, ...]:
    """The copy's ``by`` columns, quoted, when the query pins every one (``col = $param``): each
    request then samples inside one group. Empty when there is no copy, or a ``by`` entry is an
    expression (a time bucket a window spans) or a column the query leaves free."""
    if prepared is None or not prepared.by or any("(" in b for b in prepared.by):
        return ()
    names = [b.strip('"') for b in prepared.by]
    pinned = equality_columns(query)
    return tuple(quote(n) for n in names) if all(n.lower() in pinned for n in names) else ()


def pinned_params(query: FeatureQuery, groups: Sequence[str]) -> tuple[str, ...]:
    """The request parameter each of ``groups`` (quoted column names) is pinned to, in order:
    what finds a request's group. Empty when one is pinned to anything but a bare parameter."""
    found = {}
    for column, value in equality_pins(query).items():
        value = value.this if isinstance(value, exp.Cast) else value
        if isinstance(value, exp.Placeholder):
            found[column] = value.name
    names = [g.strip('"').lower() for g in groups]
    return tuple(found[n] for n in names) if groups and all(n in found for n in names) else ()


def beyond_group(query: FeatureQuery, groups: Sequence[str], params: Sequence[str], types: Mapping[str, str],
                 canonical: Callable[[exp.DataType], str]) -> list[exp.Expression] | None:
    """What a read of a group's run by position must still filter: the query's WHERE without the
    ``col = $param`` of each column of ``groups`` (quoted names) to the parameter its group is
    looked up by (``params``, from ``pinned_params``; ``types``: the columns' DuckDB types), since
    the run holds exactly the rows of that group: the WHERE's other conjuncts, or None when no pin
    can be dropped. A pin stays when the parameter's declared type (``canonical``
    names it as DuckDB does) is not the column's (a narrower DECIMAL rounds in DuckDB's CAST, not
    in the lookup), and on floating columns, where Python's equality and DuckDB's part ways (-0.0,
    NaN). Dropping battery's two pins took a 26,000-row read from 2.0 to 1.55 ms."""
    where = query.select.args.get("where")
    lookup = {g.strip('"').lower(): (g, p) for g, p in zip(groups, params)}
    dropped, rest = set(), []
    for term in conjuncts(where.this if where is not None else None):
        side = column_side(term.this, term.expression) if isinstance(term, exp.EQ) else None
        if side is not None and _droppable(side, lookup, dropped, types, canonical):
            dropped.add(side[0].lower())
        else:
            rest.append(term)
    return rest if dropped else None


def _droppable(side: tuple[str, exp.Expression], lookup: Mapping[str, tuple[str, str]], dropped: set,
               types: Mapping[str, str], canonical: Callable[[exp.DataType], str]) -> bool:
    column, value = side[0].lower(), side[1]
    declared = value.to if isinstance(value, exp.Cast) else None
    value = value.this if isinstance(value, exp.Cast) else value
    if (not isinstance(value, exp.Placeholder) or column not in lookup or column in dropped
            or value.name != lookup[column][1]):
        return False
    kind = types.get(lookup[column][0])
    if kind is None or any(t in kind.upper() for t in ("FLOAT", "DOUBLE", "REAL")):
        return False
    return declared is not None and canonical(declared) == kind


def _power_sums(cur, variables: list[tuple[str, str]], tops: list[int], table: str, alias: str | None,
                centers: dict[str, float], groups: Sequence[str]) -> tuple[list[tuple], list[tuple[np.ndarray, ...]]]:
    """The groups' key values (none without ``groups``), and per variable: (rows, center,
    [sum of y^k for k = 1..top]) as arrays with one entry per group (one entry for the whole
    table without ``groups``), y = x - center. Without groups the
    center is the rough one given. Within groups it is each group's own mean, from one more pass
    and a join (on 2.4e8 rows 59 s against 18 s): around one shared center the sixth powers
    cancel away (measured: a battery cycle's temperature, 16 of its standard deviations from the
    shared center, came out needing 87 rows instead of 30, and the largest need 129 instead of 87)."""
    source = f"{quote(table)} AS {quote(alias or table)}"
    centred = []
    for i, (arg, cond) in enumerate(variables):
        value = f"TRY_CAST(({arg}) AS DOUBLE)"
        center = f"__aq_m.__aq_c{i}" if groups else repr(centers.get(arg, 0.0))
        centred.append((value, cond, center))
    items = []
    for (value, cond, center), top in zip(centred, tops):
        y = f"({value} - {center})"
        items.append(f"COUNT(*) FILTER (WHERE {cond})::DOUBLE")
        items.append(f"ANY_VALUE({center})::DOUBLE" if groups else f"{center}::DOUBLE")
        items += [f"COALESCE(SUM({' * '.join([y] * k)}) FILTER (WHERE {cond}), 0)::DOUBLE" for k in range(1, top + 1)]
    names = [f"__aq_{i}" for i in range(len(items))]
    select = ", ".join(f"{item} AS {name}" for item, name in zip(items, names))
    if groups:
        keys = ", ".join(groups)
        means = ", ".join(f"COALESCE(AVG({value}) FILTER (WHERE {cond}), 0) AS __aq_c{i}"
                          for i, (value, cond, _) in enumerate(centred))
        key_names = [f"__aq_k{i}" for i in range(len(groups))]
        sql = (f"SELECT {', '.join(f'{g} AS {k}' for g, k in zip(groups, key_names))}, {select} FROM {source} "
               f"JOIN (SELECT {keys}, {means} FROM {source} GROUP BY {keys}) AS __aq_m USING ({keys}) GROUP BY {keys}")
    else:
        key_names, sql = [], f"SELECT {select} FROM {source}"
    table_out = cur.sql(sql).to_arrow_table()
    cols = {name: table_out.column(name).to_numpy(zero_copy_only=False) for name in names}
    group_keys = list(zip(*(table_out.column(k).to_pylist() for k in key_names))) if key_names else []
    out, at = [], 0
    for top in tops:
        n, center, *power = (np.asarray(cols[name], dtype=float) for name in names[at:at + top + 2])
        out.append((n, center, power))
        at += top + 2
    return group_keys, out


def _skewness(func: str, raw: np.ndarray, shift):
    """Skewness of the variable the aggregate linearises to, from raw moments of y = x - shift
    (arrays: one column per group)."""
    central = _central(raw)
    m2 = central[2]
    if func == "sum":                    # HT total: uncentered x = y + shift
        x_raw = _shift_raw(raw, shift)
        g = np.where(x_raw[2] <= 0, 0.0, x_raw[3] / np.abs(x_raw[2]) ** 1.5)
    elif func == "avg":
        g = central[3] / np.abs(m2) ** 1.5
    else:
        var_u = central[4] - m2 ** 2       # u = (x - mean)^2
        g = np.where(var_u <= 0, 0.0, (central[6] - 3 * central[4] * m2 + 2 * m2 ** 3) / np.abs(var_u) ** 1.5)
    return np.where(m2 <= 0, 0.0, g)     # a constant column: no sampling error at all (NaN stays NaN)


def _central(raw: np.ndarray) -> np.ndarray:
    """Central moments E[(y - E y)^k] from raw moments E[y^k] (nan where a power was not summed)."""
    return _shift_raw(raw, -raw[1])


def _shift_raw(raw: np.ndarray, shift) -> np.ndarray:
    """Raw moments of y + shift from raw moments of y."""
    return np.array([sum(math.comb(k, j) * raw[j] * shift ** (k - j) for j in range(k + 1)) for k in range(len(raw))])


def _condition(term: Term) -> exp.Expression | None:
    parts = []
    if term.arg is not None and term.func != "count_star":
        parts.append(exp.Not(this=exp.Is(this=term.arg.copy(), expression=exp.Null())))
    if term.filter is not None:
        parts.append(exp.paren(term.filter.copy()))
    if not parts:
        return None
    return exp.and_(*parts) if len(parts) > 1 else parts[0]
