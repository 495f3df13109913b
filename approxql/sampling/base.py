"""The sampling-strategy interface: how one aggregate query reads a fraction of its matching rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from sqlglot.dialects.duckdb import DuckDB
from sqlglot.tokens import TokenType

from ..engines.duckdb import quote  # noqa: F401  (re-exported for the strategies)
from .layout import MomentLayout
from .terms import AggregatePlan, Term


@dataclass(frozen=True)
class SampleSQL:
    """One statement returning the moment sums of a sample increment (and its quantile values)."""

    sql: str
    extra_params: dict          # bound beside the request's parameters
    clustered: bool             # rows of the result describe blocks, not rows


class SampleSource(ABC):
    """A way to draw a uniform sample of a query's matching rows at fraction p.

    ``nested`` sources (a prepared sample order) let fraction p2 > p1 read only the increment
    [p1, p2); others draw a fresh sample at every fraction.
    """

    name: str
    nested: bool

    @abstractmethod
    def increment_sql(self, plan: AggregatePlan, layout: MomentLayout, lo: float, hi: float,
                      value_terms: list[int], value_cap: int, *, seed: int = 0,
                      group: tuple[int, int] | None = None) -> SampleSQL:
        """SQL for the rows with sample key in [lo, hi) (nested) or a fresh sample at ``hi``
        (drawn with ``seed`` where the strategy draws at query time); ``group`` (first row id,
        rows) reads positions [lo, hi) of the request's group instead (prepared copies only)."""

    def next_fraction(self, current: float, wanted: float) -> float:
        """The fraction to move to when ``wanted`` is asked for (non-nested sources grow geometrically)."""
        return min(1.0, max(wanted, current))

    def describe(self) -> str:
        return self.name


def value_condition(term: Term) -> str:
    parts = [f"({term.arg.sql('duckdb')}) IS NOT NULL"]
    if term.filter is not None:
        parts.append(f"({term.filter.sql('duckdb')})")
    return " AND ".join(parts)


def rebind(sql: str, relation: str) -> str:
    """Turn every ``$name`` placeholder of ``sql`` into the column ``relation.batch_column(name)``
    (a request parameter or a per-request value such as a key range), so a statement written for
    one request reads each request's values from a joined relation. The tokenizer finds the
    placeholders, so a ``$`` inside a string literal stays as it is."""
    tokens = DuckDB().tokenize(sql)
    out, pos = [], 0
    for a, b in zip(tokens, tokens[1:]):
        if a.token_type is TokenType.PARAMETER and b.start == a.end + 1:
            out.append(sql[pos:a.start])
            out.append(f'{relation}."{batch_column(b.text)}"')
            pos = b.end + 1
    return "".join(out) + sql[pos:]


def batch_column(name: str) -> str:
    """The batch relation's column for a placeholder: ``__aq_p_<name>`` for a request parameter,
    ``__aq_<x>`` for approxql's own ``$__x`` (so neither can collide with the other)."""
    return f"__aq_{name[2:]}" if name.startswith("__") else f"__aq_p_{name}"
