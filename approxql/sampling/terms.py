"""Which parts of an aggregate feature query can be estimated from a sample, and how.

An aggregate query ``SELECT f(aggregates) AS feature, ... FROM table WHERE ...`` is split into
*terms* (one aggregate call each) and per-feature *formulas* over those terms. Moment terms
(COUNT, SUM, AVG, VAR, STDDEV) are smooth functions of totals of per-row contribution columns;
quantile terms need sampled values. Anything else (MIN, MAX, COUNT(DISTINCT), joins, ...) is
computed exactly, and the plan says why. This module is pure analysis: no engine, no SQL run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from sqlglot import exp

from ..plan import FeatureQuery

MOMENT_FUNCS = ("count_star", "count", "sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop")
QUANTILE_FUNCS = ("quantile_cont", "quantile_disc")

_SIMPLE = {exp.Sum: "sum", exp.Avg: "avg", exp.VariancePop: "var_pop", exp.Variance: "var_samp",
           exp.StddevPop: "stddev_pop", exp.StddevSamp: "stddev_samp", exp.Stddev: "stddev_samp"}
_EXACT_ONLY = {exp.Min: "MIN", exp.Max: "MAX", exp.ArgMax: "ARG_MAX", exp.ArgMin: "ARG_MIN"}


@dataclass(frozen=True)
class Term:
    """One aggregate call: ``func(arg) FILTER (WHERE filter)``; ``q`` for quantiles."""

    func: str
    arg: exp.Expression | None
    filter: exp.Expression | None
    q: float | None = None

    @property
    def is_quantile(self) -> bool:
        return self.func in QUANTILE_FUNCS

    def key(self) -> tuple:
        return (self.func, _sql(self.arg), _sql(self.filter), self.q)


@dataclass(frozen=True)
class FeatureFormula:
    """How one feature is computed from term values; ``reason`` is set when it must be exact."""

    name: str
    expression: exp.Expression        # the select item with aggregates replaced by term references
    terms: tuple[int, ...]            # indexes into AggregatePlan.terms
    reason: str | None = None

    @property
    def approximable(self) -> bool:
        return self.reason is None

    @property
    def compiled(self) -> Callable[[np.ndarray, Mapping[str, Any]], float]:
        fn = self.__dict__.get("_fn")
        if fn is None:
            fn = _compile(self.expression)
            object.__setattr__(self, "_fn", fn)
        return fn


@dataclass(frozen=True)
class AggregatePlan:
    """An aggregate feature query taken apart for sampling."""

    query: FeatureQuery
    table: str | None                 # the one base table it reads, when approximable
    where: exp.Expression | None      # its WHERE condition (with $params cast), or None
    terms: tuple[Term, ...]
    features: tuple[FeatureFormula, ...]
    reason: str | None = None         # set when no feature of the query can be sampled
    alias: str | None = None          # the name the query refers to its table by (alias, or name)

    @property
    def approximable(self) -> bool:
        return self.reason is None and any(f.approximable for f in self.features)

    def exact_reasons(self) -> dict[str, str]:
        """feature -> why it is computed exactly."""
        return {f.name: (self.reason or f.reason) for f in self.features if self.reason or f.reason}


_TERM = "__term"


def _term_ref(i: int) -> exp.Var:
    """Stands for term ``i`` inside a feature formula (printable, so errors can show the formula)."""
    return exp.Var(this=f"{_TERM}{i}")


def term_index(node: exp.Expression) -> int | None:
    """The term a formula node stands for, or None when it is not a bare term reference."""
    if isinstance(node, exp.Var) and node.name.startswith(_TERM):
        return int(node.name[len(_TERM):])
    return None


def analyze(query: FeatureQuery) -> AggregatePlan:
    """Split an aggregate FeatureQuery into terms and formulas, or say why it must be exact."""
    select = query.select
    reason = _query_level_reason(select)
    if reason:
        return AggregatePlan(query, None, None, (), tuple(
            FeatureFormula(name, item, (), reason) for name, item in zip(query.features, select.expressions)), reason)
    table = select.args["from_"].this
    where = select.args.get("where")
    terms: list[Term] = []
    index: dict[tuple, int] = {}
    features = []
    for name, item in zip(query.features, select.expressions):
        body = item.this if isinstance(item, exp.Alias) else item
        body = body.copy()
        used: list[int] = []
        why = None
        for agg in list(body.find_all(exp.AggFunc)):
            if agg.find_ancestor(exp.AggFunc) is not None:
                why = f"nested aggregate {agg.sql('duckdb')}"
                break
            term, why = _term_of(agg)
            if term is None:
                break
            i = index.setdefault(term.key(), len(terms))
            if i == len(terms):
                terms.append(term)
            used.append(i)
            target = agg.parent if isinstance(agg.parent, exp.Filter) else agg
            if target is body:
                body = _term_ref(i)
            else:
                target.replace(_term_ref(i))
        if why is None:
            why = _formula_reason(body)
        if why is None and any(terms[i].is_quantile for i in used) and term_index(body) is None:
            why = "a quantile combined with other terms or arithmetic is not estimated; use a bare MEDIAN or QUANTILE"
        features.append(FeatureFormula(name, body, tuple(dict.fromkeys(used)), why))
    return AggregatePlan(query, table.name, where.this if where else None, tuple(terms), tuple(features),
                         alias=table.alias_or_name)


def _query_level_reason(select: exp.Select) -> str | None:
    if select.args.get("with_") or select.args.get("with"):
        return "the query uses WITH (common table expressions)"
    if select.args.get("joins"):
        return "the query joins tables; only single-table aggregates are sampled"
    source = select.args.get("from_")
    if source is None or not isinstance(source.this, exp.Table) or isinstance(source.this.this, exp.Func):
        return "the query does not read one base table"
    if source.this.args.get("sample"):
        return "the query already samples its table"
    if source.this.db or source.this.catalog:
        return "the query reads a schema-qualified table; only tables of the default schema are sampled"
    for arg in ("having", "qualify", "limit", "offset", "order", "distinct"):
        if select.args.get(arg):
            return f"the query uses {arg.upper()}"
    if any(select.find_all(exp.Subquery)) or any(s is not select for s in select.find_all(exp.Select)):
        return "the query contains a subquery"
    if any(select.find_all(exp.Window)):
        return "the query uses a window function"
    return None


def _term_of(agg: exp.AggFunc) -> tuple[Term | None, str | None]:
    """The Term for an aggregate node, or (None, reason)."""
    node, filt = agg, None
    parent = agg.parent
    if isinstance(parent, exp.Filter):  # COUNT(*) FILTER (WHERE ...) parses as Filter(this=agg)
        filt = parent.expression.this
    if isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Distinct):
            return None, "COUNT(DISTINCT ...) has no honest sampling interval"
        if arg is None or isinstance(arg, exp.Star):
            return Term("count_star", None, filt), None
        return Term("count", arg, filt), None
    for cls, func in _SIMPLE.items():
        if type(node) is cls:
            if isinstance(node.this, exp.Distinct):
                return None, f"{func.upper()}(DISTINCT ...) has no honest sampling interval"
            return Term(func, node.this, filt), None
    if isinstance(node, exp.Median):
        return Term("quantile_cont", node.this, filt, 0.5), None
    if isinstance(node, (exp.PercentileCont, exp.PercentileDisc, exp.Quantile)):
        q = node.args.get("expression") or node.args.get("quantile")
        if not isinstance(q, exp.Literal) or q.is_string:
            return None, "quantile with a non-constant or list argument"
        value = float(q.this)
        if not 0.0 <= value <= 1.0:
            return None, f"quantile {value} outside [0, 1]"
        func = "quantile_disc" if isinstance(node, exp.PercentileDisc) else "quantile_cont"
        return Term(func, node.this, filt, value), None
    for cls, label in _EXACT_ONLY.items():
        if isinstance(node, cls):
            return None, f"{label} has no honest sampling interval"
    return None, f"aggregate {node.sql('duckdb')} is not one approxql estimates"


_NUMERIC_CASTS = {exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT, exp.DataType.Type.DECIMAL}
_SMOOTH_FUNCS = {"ABS": abs, "SQRT": math.sqrt, "LN": math.log, "EXP": math.exp, "LOG10": math.log10,
                 "LOG2": math.log2}


def _formula_reason(body: exp.Expression) -> str | None:
    for node in body.walk():
        if term_index(node) is not None:
            continue
        if isinstance(node, exp.Cast):  # a request parameter's cast, or a cast to floating point
            if not isinstance(node.this, exp.Placeholder) and node.to.this not in _NUMERIC_CASTS:
                return f"the cast {node.sql('duckdb')} is not to a floating-point type"
            continue
        if isinstance(node, (exp.Literal, exp.Paren, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
                             exp.Placeholder, exp.DataType, exp.Pow, exp.Coalesce, exp.Nullif,
                             exp.Null)):
            continue
        if isinstance(node, exp.Anonymous) and node.name.upper() in _SMOOTH_FUNCS:
            continue
        if isinstance(node, (exp.Abs, exp.Sqrt, exp.Ln, exp.Exp, exp.Log)):
            continue
        if isinstance(node, exp.Column):
            return f"the select item reads column {node.sql('duckdb')} outside an aggregate"
        return f"the expression {node.sql('duckdb')} around the aggregates is not a smooth arithmetic one"
    return None


_UNARY = {exp.Abs: abs, exp.Sqrt: math.sqrt, exp.Ln: math.log, exp.Exp: math.exp, exp.Log: math.log10}
_BINARY = {exp.Add: lambda a, b: a + b, exp.Sub: lambda a, b: a - b, exp.Mul: lambda a, b: a * b,
           exp.Div: lambda a, b: a / b if b != 0 else math.nan,  # DuckDB: x / 0 is NULL
           exp.Pow: lambda a, b: _safe(math.pow, a, b)}


def _compile(node: exp.Expression) -> Callable[[np.ndarray, Mapping[str, Any]], float]:
    """Turn a formula into a closure f(term_values, params); SQL NULL is nan and propagates."""
    i = term_index(node)
    if i is not None:
        return lambda t, p: float(t[i])
    if isinstance(node, exp.Literal):
        value = float(node.this)
        return lambda t, p: value
    if isinstance(node, exp.Null):
        return lambda t, p: math.nan
    if isinstance(node, (exp.Paren, exp.Cast)):
        return _compile(node.this)
    if isinstance(node, exp.Placeholder):
        name = node.name
        return lambda t, p: float(p[name])
    if isinstance(node, exp.Neg):
        inner = _compile(node.this)
        return lambda t, p: -inner(t, p)
    if isinstance(node, exp.Coalesce):
        parts = [_compile(c) for c in [node.this, *node.expressions]]

        def coalesce(t, p):
            for part in parts:
                v = part(t, p)
                if not math.isnan(v):
                    return v
            return math.nan
        return coalesce
    if isinstance(node, exp.Nullif):
        a, b = _compile(node.this), _compile(node.expression)
        return lambda t, p: math.nan if a(t, p) == b(t, p) else a(t, p)
    if isinstance(node, exp.Log) and node.expression is not None:  # LOG(base, x)
        base, x = _compile(node.this), _compile(node.expression)
        return lambda t, p: _safe(math.log, x(t, p)) / _safe(math.log, base(t, p))
    if type(node) in _UNARY or isinstance(node, exp.Anonymous):
        fn = _UNARY.get(type(node)) or _SMOOTH_FUNCS[node.name.upper()]
        inner = _compile(node.this if type(node) in _UNARY else node.expressions[0])
        return lambda t, p: _safe(fn, inner(t, p))
    if type(node) in _BINARY:
        op, a, b = _BINARY[type(node)], _compile(node.this), _compile(node.expression)
        return lambda t, p: op(a(t, p), b(t, p))
    raise TypeError(f"cannot evaluate {node.sql('duckdb')}")  # unreachable after _formula_reason


def _safe(fn: Callable, *args: float) -> float:
    if any(math.isnan(a) for a in args):
        return math.nan
    try:
        return float(fn(*args))
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan


def _sql(node: exp.Expression | None) -> str | None:
    return None if node is None else node.sql("duckdb")


