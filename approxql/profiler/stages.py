"""Stage accounting: where a request's latency went, with the queries stage split into per-statement
overhead, scanning, and "lookups & merge": the rest of that stage, i.e. the statement computing lookups
and request-only features, and the samplers merging and estimating between their statements.

A Prediction's stages add up to its latency; the split keeps that (overhead + scan + lookups & merge is the
queries stage), so the mean stages of many requests add up to their mean latency and the shares to 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..prediction import Prediction

STAGES = ("query overhead", "scan", "lookups & merge", "estimation", "propagation", "planning", "model", "other")


@dataclass(frozen=True)
class StageShare:
    name: str
    mean_ms: float
    share: float


def statements(pred: Prediction) -> list[dict]:
    """The statements a prediction ran; ``predict_exact`` records none: its queries stage is one."""
    if pred.reads:
        return list(pred.reads)
    ms = pred.stages_ms.get("queries", 0.0)
    return [{"query": "*", "fraction": (0.0, 1.0), "rows": None, "ms": ms, "exact": True}] if ms else []


def split(pred: Prediction, overhead_of: Callable[[dict], float]) -> dict[str, float]:
    """The prediction's stages, ``queries`` split: a statement's overhead is its query's fitted
    overhead (at most its own time), its scan the rest; ``lookups & merge`` is the queries stage outside them."""
    stages = dict(pred.stages_ms)
    queries = stages.pop("queries", 0.0)
    reads = statements(pred)
    read_ms = sum(r["ms"] for r in reads)
    overhead = sum(min(max(overhead_of(r), 0.0), r["ms"]) for r in reads)
    out = {"query overhead": overhead, "scan": read_ms - overhead, "lookups & merge": queries - read_ms}
    for k in STAGES[3:]:
        out[k] = stages.pop(k, 0.0)
    out.update(stages)   # a stage the controller may add later is kept, not lost
    return out


def shares(splits: Sequence[Mapping[str, float]]) -> list[StageShare]:
    """Mean ms and share of total of each stage over requests."""
    names = list(STAGES) + sorted({k for s in splits for k in s} - set(STAGES))
    means = {k: sum(s.get(k, 0.0) for s in splits) / len(splits) for k in names} if splits else {}
    total = sum(means.values()) or 1.0
    return [StageShare(k, means[k], means[k] / total) for k in names]


def rate(reads: Sequence[Mapping], query: str) -> float | None:
    """Rows per ms a query's statements achieved, all costs included (sum rows / sum ms)."""
    mine = [r for r in reads if r["query"] == query and r.get("rows") and r["ms"] > 0]
    if not mine:
        return None
    return sum(r["rows"] for r in mine) / sum(r["ms"] for r in mine)
